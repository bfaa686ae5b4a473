"""CelebA in its real layout: its partition, crop and size, its validation split, offline messages, best weights."""
import os

import numpy as np
import torch
from PIL import Image

import data
import train
from conftest import one_line
from test_own_data import SMALL


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


def test_celeba_best_weights_are_evaluated(tmp_path):
    import evaluate
    root, out = str(tmp_path / "data"), str(tmp_path / "run")
    write_celeba(root)
    assert train.main(["--dataset", "celeba", "--data-root", root, "--image-size", "16",
                       "--out", out, *SMALL]) == 0
    assert evaluate.main([out, "--weights", "best", "--no-figures", "--iw-samples", "0"]) == 0
