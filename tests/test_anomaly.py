"""Training on some classes (--classes), PCA as a model (pca.py), and the anomaly scores
evaluate.py gives a run trained on some classes (anomaly.py, metrics.auroc)."""
import csv
import json
import os

import numpy as np
import pytest
import sklearn.metrics
import torch

import data
import evaluate
import metrics
import models
import train
from conftest import write_mnist


@pytest.mark.parametrize("scores,positive", [
    ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]),
    ([1, 1, 1, 1], [0, 1, 0, 1]),  # all tied: chance
    ([3, 1, 2, 2, 2, 5, 0], [1, 0, 1, 0, 1, 1, 0]),  # ties across the classes
    ([0, 0, 1, 1, 1, 2], [1, 0, 0, 1, 1, 0]),
])
def test_auroc_and_average_precision_are_sklearns(scores, positive):
    s, y = torch.tensor(scores, dtype=torch.float64), torch.tensor(positive, dtype=torch.bool)
    assert metrics.auroc(s, y) == pytest.approx(sklearn.metrics.roc_auc_score(positive, scores))
    assert metrics.average_precision(s, y) == pytest.approx(
        sklearn.metrics.average_precision_score(positive, scores))


def test_auroc_on_random_scores_with_many_ties():
    g = np.random.default_rng(0)
    scores, positive = g.integers(0, 7, 500), g.random(500) < 0.3
    s, y = torch.tensor(scores), torch.tensor(positive)
    assert metrics.auroc(s, y) == pytest.approx(sklearn.metrics.roc_auc_score(positive, scores))
    assert metrics.average_precision(s, y) == pytest.approx(
        sklearn.metrics.average_precision_score(positive, scores))
    with pytest.raises(ValueError):
        metrics.auroc(s, torch.zeros(500, dtype=torch.bool))


def test_pca_is_the_projection_on_the_top_components_and_its_error_the_rest():
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64))[0]
    spread = torch.tensor([5, 3, 2, 1, 0.5, 0.3, 0.2, 0.1, *[0.05] * 8], dtype=torch.float64)
    x = (torch.randn(400, 16, generator=g, dtype=torch.float64) * spread) @ basis.T + 0.5
    model = models.build("pca", (1, 4, 4), None, {"latent_dim": 3})
    model.before_epoch(x.float().view(-1, 1, 4, 4).split(64))
    centred = x - x.mean(0)
    values, vectors = torch.linalg.eigh(centred.T @ centred / len(x))
    top = vectors[:, -3:]  # the three largest
    expected = x.mean(0) + centred @ top @ top.T
    got = model.reconstruct(x.float().view(-1, 1, 4, 4)).view(-1, 16).double()
    assert torch.allclose(got, expected, atol=1e-4)
    error = model.loss(x.float().view(-1, 1, 4, 4), x.float().view(-1, 1, 4, 4))["loss"].item()
    assert error == pytest.approx(values[:-3].sum().item(), rel=1e-4)  # the discarded eigenvalues
    assert model.eigenvalues[3:].sum().item() == pytest.approx(values[:-3].sum().item(), rel=1e-4)
    assert torch.allclose(model.components.T.double() @ model.components.double(), torch.eye(3, dtype=torch.float64), atol=1e-5)


def two_kinds(root, n=80):
    """MNIST-format files: class 0 bright squares on the left, class 1 on the right."""
    write_mnist(root)
    raw = os.path.join(root, "MNIST", "raw")
    from conftest import write_idx
    for prefix, count in (("train", n), ("t10k", n // 2)):
        images = np.zeros((count, 28, 28), dtype=np.uint8)
        labels = np.arange(count) % 2
        rng = np.random.default_rng(count)
        for i, y in enumerate(labels):
            top = rng.integers(4, 16)
            images[i, top:top + 8, 3 + 14 * y:11 + 14 * y] = 255
        write_idx(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), images)
        write_idx(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), labels)


@pytest.mark.parametrize("model", ["pca", "ae", "vae", "vaegan"])
def test_a_model_trained_on_one_class_finds_the_other(tmp_path, model, capsys):
    root, run = str(tmp_path / "data"), str(tmp_path / model)
    two_kinds(root)
    extra = [] if model == "pca" else ["--epochs", "30", "--batch-size", "16", "--hidden", "64"]
    assert train.main(["--model", model, "--data-root", root, "--classes", "0", "--latent-dim", "4",
                       "--out", run, *extra]) == 0
    assert json.load(open(os.path.join(run, "config.json")))["data"]["train"][0] == 40  # class 0 only
    assert evaluate.main([run, "--fid-samples", "0"]) == 0
    m = json.load(open(os.path.join(run, "metrics.json")))
    assert m["anomaly"]["normal_classes"] == ["0"] and m["anomaly"]["test_anomalous"] == 20
    assert m["auroc_recon_error"] > 0.9  # the squares on the right are the unusual ones
    expected = {"pca": set(), "ae": set(), "vae": {"nelbo"}, "vaegan": {"nelbo", "discriminator"}}[model]
    assert set(m["anomaly"]["per_class"]) == {"recon_error", "code_distance", *expected}
    assert set(m["anomaly"]["per_class"]["recon_error"]) == {"1"}
    with open(os.path.join(run, "anomaly_scores.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 40 and {r["normal"] for r in rows} == {"0", "1"}
    for name in ("roc.png", "anomalies.png"):
        assert os.path.getsize(os.path.join(run, "eval", name)) > 5000
    assert "probe_accuracy" not in m  # one class: nothing to probe


def test_classes_flags(tiny_data, tmp_path, capsys):
    base = ["--data-root", tiny_data, "--epochs", "1", "--batch-size", "8"]
    run = str(tmp_path / "run")
    assert train.main(base + ["--exclude-classes", "0,9", "--out", run]) == 0
    cfg = json.load(open(os.path.join(run, "config.json")))
    assert cfg["exclude_classes"] == [0, 9] and cfg["data"]["train"][0] == 48  # 60 less 12
    assert cfg["data"]["test"][0] == 24  # the test split stays whole
    splits = data.load("fashion-mnist", tiny_data, keep=[1])
    assert set(splits["train"][1].tolist()) == {1} and len(splits["test"][1]) == 24
    cfg2 = dict(cfg, exclude_classes=None, train_classes=[2, 5])
    assert data.kept_classes(cfg2) == [2, 5] and data.kept_classes(cfg) == list(range(1, 9))
    for flags, words in ((["--classes", "10"], "'10' is not a class of mnist"),
                         (["--classes", "1", "--exclude-classes", "2"], "not both"),
                         (["--exclude-classes", ",".join(map(str, range(10)))], "leaves no class"),
                         (["--model", "pca", "--epochs", "3"], "drop --epochs"),
                         (["--model", "pca", "--lr", "0.1"], "drop --lr"),
                         (["--classes", ",".join(map(str, range(10)))], "names every class")):
        capsys.readouterr()
        assert train.main(["--data-root", tiny_data, "--out", str(tmp_path / "x"), *flags]) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1
    assert train.main(["--dataset", "fashion-mnist", "--data-root", tiny_data, "--classes", "trouser,Bag",
                       "--epochs", "1", "--out", str(tmp_path / "names")]) == 0
    assert json.load(open(tmp_path / "names" / "config.json"))["train_classes"] == [1, 8]


def test_a_run_on_some_classes_with_a_validation_split_is_evaluated_on_its_own_splits(tmp_path, capsys):
    root, run = str(tmp_path / "data"), str(tmp_path / "run")
    two_kinds(root)
    assert train.main(["--model", "ae", "--data-root", root, "--classes", "1", "--val-split", "10",
                       "--latent-dim", "4", "--hidden", "32", "--epochs", "2", "--out", run]) == 0
    capsys.readouterr()
    assert evaluate.main([run, "--fid-samples", "0", "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert "not those it was trained on" not in out  # the same splits as in training
    m = json.load(open(os.path.join(run, "metrics.json")))
    assert m["anomaly"]["normal_classes"] == ["1"] and m["anomaly"]["test_normal"] == 20
