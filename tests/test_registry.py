"""Adding a dataset is one loader and one registry line (README, "Adding a dataset"): a loader
registered in data.DATASETS is trained on and evaluated with no other edit."""
import json
import os

import torch

import data
import evaluate
import train


def stripes(path, root, download, size, channels, skip_bad, read):
    """A made-up labelled dataset: 12x12 grey images, horizontal (class 0) or vertical (1) bars."""
    classes = ["horizontal", "vertical"]
    if not read:
        return data.Record((1, 12, 12), classes)
    splits = {}
    for split, n in (("train", 64), ("test", 32)):
        g = torch.Generator().manual_seed(n)
        labels = torch.randint(0, 2, (n,), generator=g)
        bars = (torch.arange(12) % 3 == 0).to(torch.uint8) * 255
        images = torch.where(labels[:, None, None] == 0, bars[:, None].expand(12, 12),
                             bars[None, :].expand(12, 12))
        splits[split] = images[:, None].contiguous(), labels
    return data.Record((1, 12, 12), classes, splits)


def test_a_registered_loader_is_trained_and_evaluated(tmp_path, monkeypatch):
    monkeypatch.setitem(data.DATASETS, "stripes", stripes)
    assert data.describe("stripes") == ((1, 12, 12), ["horizontal", "vertical"])
    out = str(tmp_path / "run")
    assert train.main(["--dataset", "stripes", "--epochs", "1", "--batch-size", "16",
                       "--hidden", "32", "--latent-dim", "2", "--out", out,
                       "--classes", "vertical"]) == 0
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["image_shape"] == [1, 12, 12] and cfg["classes"] == ["horizontal", "vertical"]
    assert cfg["train_classes"] == [1]
    assert evaluate.main([out, "--no-figures"]) == 0
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["test_loss"] > 0


def test_an_unregistered_name_lists_the_registry():
    try:
        data.canonical_name("stripes")
    except ValueError as e:
        assert "mnist" in str(e) and "folder:PATH" in str(e)
    else:
        raise AssertionError("an unknown dataset was accepted")
