import os
import shutil

import pytest
import torch

import augment
import data
import torchvision_data
from conftest import N_TEST, N_TRAIN, images_for


@pytest.mark.parametrize("name,shape", [("mnist", (1, 28, 28)), ("fashion-mnist", (1, 28, 28)),
                                        ("fashionmnist", (1, 28, 28)), ("cifar10", (3, 32, 32))])
def test_load_reads_the_real_file_formats(tiny_data, name, shape):
    splits = data.load(name, tiny_data, "cpu", download=False)
    (x, y), (xt, yt) = splits["train"], splits["test"]
    assert x.dtype == torch.uint8 and x.shape == (N_TRAIN, *shape) and xt.shape == (N_TEST, *shape)
    assert y.tolist() == [i % 10 for i in range(N_TRAIN)] or name == "cifar10"
    assert yt.tolist() == [i % 10 for i in range(N_TEST)]
    if name == "cifar10":  # train: 5 batches of N_TRAIN/5, written with seeds 10..14
        first = torch.from_numpy(images_for(N_TRAIN // 5, shape, 10))
        assert torch.equal(x[:N_TRAIN // 5], first)  # pickle rows -> NCHW, channels intact
    else:
        assert torch.equal(x, torch.from_numpy(images_for(N_TRAIN, shape, 1)))


def test_missing_files_offline_give_one_line_naming_the_files(tmp_path, monkeypatch):
    import torchvision.datasets.mnist as mnist

    def offline(*args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(mnist, "download_and_extract_archive", offline)
    with pytest.raises(data.DataError) as err:
        data.load("mnist", str(tmp_path), "cpu", download=True)
    message = str(err.value)
    assert "\n" not in message
    assert "train-images-idx3" in message and os.path.join(str(tmp_path), "MNIST", "raw") in message


def test_unknown_dataset_is_refused():
    with pytest.raises(ValueError, match="mnist, fashion-mnist, cifar10, celeba, dsprites, npz:PATH or folder:PATH"):
        data.canonical_name("svhn")


def test_shuffled_batches_cover_every_image_once():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    labels = torch.arange(10)
    seen = [y for _, _, y in data.batches(images, labels, 3, shuffle=True)]
    assert [len(y) for y in seen] == [3, 3, 3, 1]
    assert sorted(torch.cat(seen).tolist()) == list(range(10))


def test_scaling_follows_the_output():
    images = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1)
    x01, _, _ = next(data.batches(images, torch.zeros(2), 2, output="sigmoid"))
    x11, _, _ = next(data.batches(images, torch.zeros(2), 2, output="tanh"))
    assert x01.flatten().tolist() == [0.0, 1.0] and x11.flatten().tolist() == [-1.0, 1.0]


def test_hflip_flips_some_images_and_keeps_the_rest():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out = augment.random_hflip(x)
    same = (out == x).flatten(1).all(1)
    flipped = (out == x.flip(3)).flatten(1).all(1)
    assert (same | flipped).all() and same.any() and flipped.any()


def test_crop_is_a_window_of_the_zero_padded_image():
    torch.manual_seed(0)
    x = torch.randint(1, 256, (32, 3, 8, 8), dtype=torch.uint8)
    out = augment.random_crop(x, padding=4)
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(32):
        windows = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(out[i], w) for w in windows)
    assert not torch.equal(out, x)  # 32 images all left in place has probability 81^-32
    assert torch.equal(augment.random_crop(x, padding=0), x)


def test_flip_and_crop_take_the_same_draws_and_give_the_same_images_as_their_definitions():
    """The fast versions (one index_select, one gather) against the plain ones written with
    torch.where and four index tensors: equal images from the same random draws, so runs
    and resumes from before the change continue the same."""
    x = torch.randint(0, 256, (16, 3, 10, 12), dtype=torch.uint8)
    torch.manual_seed(1)
    flip = torch.rand(16) < 0.5
    dy, dx = torch.randint(0, 9, (16, 1)), torch.randint(0, 9, (16, 1))
    flipped = torch.where(flip[:, None, None, None], x.flip(3), x)
    rows = (dy + torch.arange(10))[:, None, :, None]
    cols = (dx + torch.arange(12))[:, None, None, :]
    expected = torch.nn.functional.pad(flipped, (4,) * 4)[
        torch.arange(16)[:, None, None, None], torch.arange(3)[None, :, None, None], rows, cols]
    torch.manual_seed(1)
    assert torch.equal(augment.random_crop(augment.random_hflip(x)), expected)
    after = torch.get_rng_state()  # and they drew exactly as much from the generator
    torch.manual_seed(1)
    torch.rand(16), torch.randint(0, 9, (16, 1)), torch.randint(0, 9, (16, 1))
    assert torch.equal(after, torch.get_rng_state())


@pytest.mark.parametrize("spec", ["gaussian:0.5", "saltpepper:0.2", "mask:0.3"])
def test_noise_corrupts_the_input_only_and_is_fixed_on_the_test_split(spec):
    torch.manual_seed(0)
    images = torch.randint(0, 256, (50, 1, 28, 28), dtype=torch.uint8)
    noise = data.parse_noise(spec)
    runs = [list(data.batches(images, torch.zeros(50), 20, noise=noise, noise_seed=0))
            for _ in range(2)]
    for (x, t, _), (x2, _, _) in zip(*runs):
        assert torch.equal(x, x2)  # same corruption on every pass
        assert not torch.equal(x, t)
        assert x.min() >= 0 and x.max() <= 1
    clean = torch.cat([t for _, t, _ in runs[0]])
    assert torch.equal(clean, images.float() / 255)  # the target stays clean
    noisy = torch.cat([x for x, _, _ in runs[0]])
    changed = (noisy != clean).float().mean().item()
    kind, level = noise
    if kind == "mask":
        assert (noisy[noisy != clean] == 0).all() and abs(changed - 0.3) < 0.05
    if kind == "saltpepper":
        hit = noisy != clean
        assert ((noisy[hit] == 0) | (noisy[hit] == 1)).all() and changed < 0.2


@pytest.mark.parametrize("spec", ["gaussian:abc", "gaussian", "blur:0.5", "mask:1.5",
                                  "gaussian:-1", "saltpepper:nan"])
def test_bad_noise_specs_are_refused(spec):
    with pytest.raises(ValueError, match="noise"):
        data.parse_noise(spec)


def test_official_archives_load_offline(tmp_path, monkeypatch):
    """The README's offline recipe: copy the official .gz archives, torchvision checks their
    md5, extracts them and downloads nothing (skipped where ../shared/data is absent)."""
    src = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "MNIST")
    if not os.path.isfile(os.path.join(src, "raw", "t10k-images-idx3-ubyte.gz")):
        pytest.skip("../shared/data/MNIST not present")
    shutil.copytree(src, tmp_path / "MNIST")
    import urllib.request

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    images, labels = torchvision_data.load_split("mnist", str(tmp_path), train=False, download=True)
    assert images.shape == (10000, 1, 28, 28) and images.dtype == torch.uint8
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the official test labels
