"""Your own images: npz arrays and folders of image files, resized and converted, with a decode cache."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import data
import images
import train
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
