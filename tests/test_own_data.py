"""Your own images: npz arrays and folders of image files, resized and converted, with a
decode cache; and the conv networks at any supported size."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import data
import images
import nets
import train
import vae
import vaegan
from conftest import one_line

SMALL = ["--batch-size", "8", "--latent-dim", "4", "--log-interval", "1000", "--epochs", "1"]


def pixels(n, h, w, c=None, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w) + ((c,) if c else ()), dtype=np.uint8)


def write_folder(root, layout, sizes=((20, 24),), mode="RGB"):
    """Images as PNG and JPEG files. layout: "classes" (root/<class>/), "flat", or "splits"
    (root/train/<class>/ and root/test/<class>/). Returns {file: pixels} of the PNGs."""
    rng, exact = np.random.default_rng(1), {}
    folders = {"classes": ["cat", "dog"], "flat": [""],
               "splits": ["train/cat", "train/dog", "test/cat", "test/dog"]}[layout]
    for folder in folders:
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        for i in range(6 if "test" not in folder else 2):
            h, w = sizes[i % len(sizes)]
            a = rng.integers(0, 256, (h, w, 3) if mode == "RGB" else (h, w), dtype=np.uint8)
            name = os.path.join(root, folder, f"{i}.{'png' if i % 2 else 'jpg'}")
            Image.fromarray(a, mode).save(name)
            exact[name] = a
    return exact


@pytest.mark.parametrize("layout", ["test arrays", "held out", "two files"])
@pytest.mark.parametrize("channels", [None, 3])
def test_npz_loads_in_each_layout(tmp_path, layout, channels):
    x, y = pixels(30, 8, 8, channels), np.arange(30) % 3
    xt, yt = pixels(5, 8, 8, channels, seed=1), np.arange(5) % 3
    path = str(tmp_path / "a.npz")
    if layout == "test arrays":
        np.savez(path, x=x, y=y, x_test=xt, y_test=yt)
    elif layout == "held out":
        np.savez(path, x=x, y=y)
    else:
        np.savez(path, x=x, y=y)
        np.savez(str(tmp_path / "b.npz"), x=xt, y=yt)
        path += "," + str(tmp_path / "b.npz")
    shape, classes = data.describe(f"npz:{path}")
    assert shape == (channels or 1, 8, 8) and classes == ["0", "1", "2"]
    splits = data.load(f"npz:{path}")
    (a, la), (b, lb) = splits["train"], splits["test"]
    chw = lambda v: torch.from_numpy(v).reshape(*v.shape[:3], -1).permute(0, 3, 1, 2)  # noqa: E731
    if layout == "held out":  # a fixed 20%: 6 test images, the rest training, none lost
        assert len(b) == 6 and len(a) == 24
        both = torch.cat([a, b]).flatten(1)
        assert sorted(map(tuple, both.tolist())) == sorted(map(tuple, chw(x).flatten(1).tolist()))
    else:
        assert torch.equal(a, chw(x)) and torch.equal(b, chw(xt))
        assert la.tolist() == y.tolist() and lb.tolist() == yt.tolist()


@pytest.mark.parametrize("arrays,words", [
    ({"images": pixels(4, 8, 8)}, ["has no array 'x'", "images"]),
    ({"x": pixels(4, 8, 8).astype(np.float32)}, ["x is float32", "uint8"]),
    ({"x": pixels(4, 8, 8, 4)}, ["C 1 or 3"]),
    ({"x": pixels(4, 8, 8), "y": np.arange(3)}, ["y is int64 of shape (3,)", "one integer label"]),
])
def test_a_bad_npz_is_refused_in_one_line_before_any_work(tmp_path, capsys, arrays, words):
    path = str(tmp_path / "bad.npz")
    np.savez(path, **arrays)
    out = str(tmp_path / "run")
    assert train.main(["--dataset", f"npz:{path}", "--out", out, *SMALL]) == 2
    one_line(capsys.readouterr().err, *words)
    assert not os.path.exists(out)


def test_a_folder_of_class_subfolders_gives_labels_names_and_one_size(tmp_path):
    root = str(tmp_path / "pics")
    exact = write_folder(root, "classes", sizes=((20, 24), (30, 16)))
    assert data.describe(f"folder:{root}", 16) == ((3, 16, 16), ["cat", "dog"])
    splits = data.load(f"folder:{root}", size=16)
    (x, y), (xt, yt) = splits["train"], splits["test"]
    assert x.shape[1:] == (3, 16, 16) and len(x) + len(xt) == 12
    assert sorted(y.tolist() + yt.tolist()) == [0] * 6 + [1] * 6
    png = next(f for f in exact if f.endswith("1.png"))  # 30x16 -> 16 wide, centre 16 rows
    want = data.fit(torch.from_numpy(exact[png]).permute(2, 0, 1)[None], 16)[0]
    assert any(torch.equal(img, want) for img in torch.cat([x, xt]))


def test_a_folder_with_train_and_test_and_a_flat_grey_folder(tmp_path):
    root = str(tmp_path / "split")
    write_folder(root, "splits")
    splits = data.load(f"folder:{root}")
    assert len(splits["train"][0]) == 12 and len(splits["test"][0]) == 4
    assert splits["test"][1].tolist() == [0, 0, 1, 1]
    flat = str(tmp_path / "flat")
    write_folder(flat, "flat", mode="L")
    assert data.describe(f"folder:{flat}") == ((1, 20, 24), None)
    assert data.load(f"folder:{flat}", channels=3)["train"][0].shape[1:] == (3, 20, 24)


@pytest.mark.parametrize("damage,words", [
    ("sizes", ["pass --image-size"]), ("corrupt", ["3.png cannot be decoded"]),
    ("empty", ["holds no images"]), ("missing", ["not found"]),
])
def test_a_bad_folder_is_refused_in_one_line(tmp_path, capsys, damage, words):
    root = str(tmp_path / "pics")
    write_folder(root, "flat", sizes=((20, 24), (24, 20)) if damage == "sizes" else ((20, 24),))
    if damage == "corrupt":
        open(os.path.join(root, "3.png"), "wb").write(b"\x89PNG not really")
    if damage == "empty":
        for name in os.listdir(root):
            os.remove(os.path.join(root, name))
    if damage == "missing":
        root += "-nowhere"
    out = str(tmp_path / "run")
    assert train.main(["--dataset", f"folder:{root}", "--out", out, *SMALL]) == 2
    one_line(capsys.readouterr().err, *words)
    assert not os.path.exists(out)


def test_the_decode_cache_is_reused_and_rebuilt_when_a_file_changes(tmp_path, monkeypatch):
    root = str(tmp_path / "pics")
    exact = write_folder(root, "classes")
    first = data.load(f"folder:{root}")
    calls = []
    real = images.decode
    monkeypatch.setattr(images, "decode", lambda *a: (calls.append(a[0]), real(*a))[1])
    again = data.load(f"folder:{root}")
    assert calls == [] and all(torch.equal(first[s][0], again[s][0]) for s in first)
    png = next(iter(f for f in exact if f.endswith(".png")))
    Image.fromarray(255 - exact[png]).save(png)  # same name and size, new content and time
    os.utime(png, ns=(1, 1))
    changed = data.load(f"folder:{root}")
    assert len(calls) == 12
    assert not all(torch.equal(first[s][0], changed[s][0]) for s in first)
    assert data.load(f"folder:{root}", size=16)["train"][0].shape[-1] == 16  # options: own cache


@pytest.mark.parametrize("cls", [vae.VAE, vaegan.VAEGAN])
@pytest.mark.parametrize("side", [16, 64, 128])
def test_conv_networks_take_any_side_of_4_times_a_power_of_two(cls, side):
    model = cls((3, side, side), arch="conv", latent_dim=4)
    x = torch.rand(2, 3, side, side)
    assert model.reconstruct(x).shape == x.shape
    assert model.generate(torch.zeros(2, 4)).shape == x.shape
    assert len(nets.conv_kernels((3, side, side))) == {16: 2, 64: 4, 128: 5}[side]


def test_conv_refuses_a_side_it_cannot_halve_to_4_and_names_the_flag(tmp_path, capsys):
    assert train.main(["--arch", "conv", "--image-size", "48", "--out", str(tmp_path / "r"),
                       "--data-root", str(tmp_path / "none"), *SMALL]) == 2
    one_line(capsys.readouterr().err, "4 * 2^k", "--image-size", "--arch mlp")


@pytest.mark.parametrize("model", ["vae", "vaegan"])
def test_a_conv_model_trains_on_a_64_pixel_folder_end_to_end(tmp_path, capsys, model):
    root, out = str(tmp_path / "pics"), str(tmp_path / "run")
    write_folder(root, "classes", sizes=((70, 80), (64, 64)))
    assert train.main(["--model", model, "--dataset", f"folder:{root}", "--image-size", "64",
                       "--arch", "conv", "--out", out, *SMALL]) == 0
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["image_shape"] == [3, 64, 64] and cfg["classes"] == ["cat", "dog"]
    assert Image.open(os.path.join(out, "training_samples.png")).size[0] > 64 * 8


@pytest.mark.parametrize("classes,legend", [(["T-shirt/top", "Trouser", "Bag"], True),
                                            ([str(k) for k in range(40)], False), (None, False)])
def test_latent_plots_name_the_classes_a_dataset_has(tmp_path, monkeypatch, classes, legend):
    import figures
    drawn = {}
    monkeypatch.setattr(figures, "save", lambda fig, path: drawn.update(fig=fig))
    k = len(classes) if classes else 1
    figures.latent_scatter(torch.randn(120, 3), torch.arange(120) % k, "x.png", "codes", classes)
    ax = drawn["fig"].axes[0]
    names = [t.get_text() for t in ax.get_legend().get_texts()] if ax.get_legend() else []
    assert names == (classes if legend else [])
    assert len(drawn["fig"].axes) == (2 if classes and not legend else 1)  # a colour bar for 40


def write_celeba(root, parts=(0, 0, 0, 0, 0, 0, 1, 1, 2, 2)):
    """CelebA's real layout: celeba/img_align_celeba/NNNNNN.jpg (178 wide, 218 high) and
    celeba/list_eval_partition.txt; returns the images' pixels by file name."""
    folder = os.path.join(root, "celeba", "img_align_celeba")
    os.makedirs(folder)
    rng, exact = np.random.default_rng(3), {}
    with open(os.path.join(root, "celeba", "list_eval_partition.txt"), "w") as f:
        for i, part in enumerate(parts, 1):
            name = f"{i:06d}.jpg"
            exact[name] = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
            Image.fromarray(exact[name]).save(os.path.join(folder, name))
            f.write(f"{name} {part}\n")
    return exact


def test_celeba_reads_its_real_layout_with_its_own_partition_crop_and_size(tmp_path):
    root = str(tmp_path / "data")
    write_celeba(root)
    assert data.describe("celeba") == ((3, 64, 64), None)
    splits = data.load("celeba", root, download=False)
    assert {k: len(v[0]) for k, v in splits.items()} == {"train": 6, "val": 2, "test": 2}
    assert splits["train"][0].shape[1:] == (3, 64, 64)
    jpeg = torch.from_numpy(np.array(Image.open(os.path.join(
        root, "celeba", "img_align_celeba", "000009.jpg")).convert("RGB"))).permute(2, 0, 1)
    want = data.fit(jpeg[:, 35:183, 15:163][None], 64)[0]  # the centre 148 x 148, then 64
    assert torch.equal(splits["test"][0][0], want)


def test_celeba_trains_with_its_validation_split_and_refuses_another(tmp_path, capsys):
    root, out = str(tmp_path / "data"), str(tmp_path / "run")
    write_celeba(root)
    args = ["--dataset", "celeba", "--data-root", root, "--arch", "conv", "--image-size", "32",
            *SMALL]
    assert train.main([*args, "--val-split", "2", "--out", out]) == 2
    one_line(capsys.readouterr().err, "celeba has its own validation split")
    assert train.main([*args, "--out", out]) == 0
    assert "====> Validation loss" in capsys.readouterr().out
    assert os.path.isfile(os.path.join(out, "best.pt"))


def test_celeba_missing_offline_says_which_files_to_place_where(tmp_path, capsys, monkeypatch):
    import torchvision

    def offline(*a, **k):
        raise RuntimeError("Error downloading img_align_celeba.zip")
    monkeypatch.setattr(torchvision.datasets, "CelebA", offline)
    out = str(tmp_path / "run")
    assert train.main(["--dataset", "celeba", "--data-root", str(tmp_path), "--out", out, *SMALL]) == 2
    one_line(capsys.readouterr().err, os.path.join(str(tmp_path), "celeba"), "img_align_celeba/",
             "list_eval_partition.txt", "could not be downloaded")
    assert not os.path.exists(out)


def test_skip_bad_images_leaves_out_and_counts_what_does_not_decode(tmp_path, capsys):
    root = str(tmp_path / "pics")
    write_folder(root, "classes")
    open(os.path.join(root, "dog", "3.png"), "wb").write(b"not an image")
    with pytest.raises(data.DataError, match="3.png cannot be decoded.*--skip-bad-images"):
        data.load(f"folder:{root}")
    splits = data.load(f"folder:{root}", skip_bad=True)
    assert sum(len(x) for x, _ in splits.values()) == 11
    labels = torch.cat([y for _, y in splits.values()]).tolist()
    assert sorted(labels) == [0] * 6 + [1] * 5  # the dog's label went with its image
    assert "Skipped 1 image(s)" in capsys.readouterr().out


def test_a_large_cache_is_read_through_a_memory_map(tmp_path, monkeypatch):
    root = str(tmp_path / "pics")
    write_folder(root, "classes")
    first = data.load(f"folder:{root}")
    modes, real = [], np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: (modes.append(k.get("mmap_mode")), real(*a, **k))[1])
    data.load(f"folder:{root}")
    assert set(modes) == {None}  # small: loaded whole
    modes.clear()
    monkeypatch.setattr(os, "sysconf", lambda name: 1 if name == "SC_PAGE_SIZE" else 1000)
    mapped = data.load(f"folder:{root}")  # "1000 bytes of memory"
    assert "r" in modes and all(torch.equal(first[s][0], mapped[s][0]) for s in first)
    x, y = mapped["train"]
    batch = next(data.batches(x, y, 4, shuffle=True))  # training reads it like any tensor
    assert batch[0].shape == (4, 3, 20, 24)


def test_a_validation_split_as_large_as_the_training_split_is_refused(tiny_data, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert train.main(["--data-root", tiny_data, "--val-split", "60", "--out", out, *SMALL]) == 2
    one_line(capsys.readouterr().err, "--val-split 60", "60 training images")
    assert not os.path.exists(out)


def labels_by_png(splits, exact, size=None):
    """{png file: the label loaded with its pixels} for the lossless files of write_folder."""
    images = torch.cat([x for x, _ in splits.values()])
    labels = torch.cat([y for _, y in splits.values()])
    found = {}
    for name, a in exact.items():
        if name.endswith(".png"):
            want = data.fit(torch.from_numpy(a).permute(2, 0, 1)[None], size)[0]
            hits = [i for i in range(len(images)) if torch.equal(images[i], want)]
            assert len(hits) == 1, name
            found[name] = labels[hits[0]].item()
    return found


@pytest.mark.parametrize("skip", [False, True])
def test_each_image_keeps_its_own_folders_label(tmp_path, skip):
    root = str(tmp_path / "pics")
    exact = write_folder(root, "classes")
    if skip:
        bad = os.path.join(root, "cat", "0.jpg")  # the first file: every later label shifts if misaligned
        open(bad, "wb").write(b"broken")
        del exact[bad]
    found = labels_by_png(data.load(f"folder:{root}", skip_bad=skip), exact)
    assert found and all(label == ("dog" in name) for name, label in found.items())


def test_old_runs_without_the_new_keys_still_resume_and_evaluate(tiny_data, tmp_path):
    import evaluate
    out = str(tmp_path / "run")
    assert train.main(["--data-root", tiny_data, "--out", out, *SMALL]) == 0
    new = ["classes", "val_split", "skip_bad_images", "image_size", "channels", "data",
           "kl_warmup", "kl_cycle", "free_bits", "capacity", "capacity_epochs"]
    path = os.path.join(out, "config.json")
    cfg = json.load(open(path))
    json.dump({k: v for k, v in cfg.items() if k not in new}, open(path, "w"))
    ckpt = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    ckpt["config"] = {k: v for k, v in ckpt["config"].items() if k not in new}
    torch.save(ckpt, os.path.join(out, "checkpoint.pt"))
    assert train.main(["--resume", out, "--epochs", "2"]) == 0
    assert evaluate.main([out, "--no-figures", "--iw-samples", "0"]) == 0
    import sweep  # the same run planned again is this one, not a run with other settings
    assert sweep.differences(out, ["--data-root", tiny_data, "--out", out, *SMALL[:-1], "2"]) == []


def test_celeba_best_weights_are_evaluated(tmp_path):
    import evaluate
    root, out = str(tmp_path / "data"), str(tmp_path / "run")
    write_celeba(root)
    assert train.main(["--dataset", "celeba", "--data-root", root, "--image-size", "16",
                       "--out", out, *SMALL]) == 0
    assert evaluate.main([out, "--weights", "best", "--no-figures", "--iw-samples", "0"]) == 0


def test_sixteen_bit_grey_keeps_its_high_bits_and_one_colour_file_makes_a_colour_folder(tmp_path):
    root = str(tmp_path / "pics")
    os.makedirs(root)
    deep = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)  # up to 63,000 of 65,535
    Image.fromarray(deep).save(os.path.join(root, "a.png"))
    for i in range(3):
        Image.fromarray(pixels(1, 8, 8, seed=i)[0], "L").save(os.path.join(root, f"b{i}.png"))
    assert data.describe(f"folder:{root}")[0] == (1, 8, 8)
    x = images.decode(os.path.join(root, "a.png"), 1, None)
    assert torch.equal(x[0], torch.from_numpy((deep >> 8).astype(np.uint8)))
    Image.fromarray(pixels(1, 8, 8, 3)[0]).save(os.path.join(root, "c.png"))
    assert data.describe(f"folder:{root}")[0] == (3, 8, 8)
    os.symlink(os.path.join(root, "gone.png"), os.path.join(root, "d.png"))  # a broken link
    assert sum(len(x) for x, _ in data.load(f"folder:{root}").values()) == 5


@pytest.mark.parametrize("y,words", [(np.array([0, -1, 2, 1]), ["from -1 to 2"]),
                                     (np.array([0, 1, 2, 10**6]), ["to 1000000", "unique"])])
def test_npz_labels_must_be_class_numbers(tmp_path, capsys, y, words):
    path = str(tmp_path / "a.npz")
    np.savez(path, x=pixels(4, 8, 8), y=y)
    assert train.main(["--dataset", f"npz:{path}", "--out", str(tmp_path / "r"), *SMALL]) == 2
    one_line(capsys.readouterr().err, *words)


def test_a_damaged_npz_payload_is_one_line(tmp_path, capsys):
    path = str(tmp_path / "a.npz")
    np.savez_compressed(path, x=pixels(200, 8, 8), y=np.arange(200) % 3)
    raw = bytearray(open(path, "rb").read())
    raw[300:340] = b"\0" * 40  # inside x's compressed bytes; the headers stay whole
    open(path, "wb").write(bytes(raw))
    code = train.main(["--dataset", f"npz:{path}", "--out", str(tmp_path / "r"), *SMALL])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    one_line(err, "a.npz")


def test_28_and_32_pixel_conv_networks_are_those_of_before():
    """The parameter counts of the conv networks before any size was allowed (2026-11-21)."""
    import ae
    counts = {(cls.__name__, shape): sum(p.numel() for p in cls(shape, arch="conv").parameters())
              for cls in (vae.VAE, vaegan.VAEGAN, ae.AE) for shape in ((1, 28, 28), (3, 32, 32))}
    assert counts == {("VAE", (1, 28, 28)): 339945, ("VAE", (3, 32, 32)): 456683,
                      ("VAEGAN", (1, 28, 28)): 1546346, ("VAEGAN", (3, 32, 32)): 2240620,
                      ("AE", (1, 28, 28)): 298965, ("AE", (3, 32, 32)): 415703}
