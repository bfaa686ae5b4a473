"""Bad numbers and bad machines: a non-finite gradient named, --grad-clip, out of memory in training and in
evaluation, damaged data files named with nothing written."""
import os

import pytest
import torch

import data
import torchvision_data
import evaluate
import runs
import train
import vae
from conftest import write_cifar, write_mnist
from test_reliability import rows


def test_a_non_finite_gradient_stops_the_run_and_names_it(tiny_data, tmp_path, capsys, monkeypatch):
    real_loss, calls = vae.VAE.loss, {"n": 0}

    def loss_with_a_bad_gradient(self, input, target, labels=None):
        out = real_loss(self, input, target, labels)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 6:  # epoch 2, step 2: the value stays finite, d/dw sqrt(0 w) = nan
                out["loss"] = out["loss"] + torch.sqrt(0 * next(self.parameters()).sum())
        return out
    monkeypatch.setattr(vae.VAE, "loss", loss_with_a_bad_gradient)
    run = str(tmp_path / "run")
    assert train.main(["--data-root", tiny_data, "--epochs", "3", "--batch-size", "16",
                       "--out", run, "--log-interval", "1000"]) == 1
    err = capsys.readouterr().err
    assert "non-finite grad_norm at epoch 2, step 2" in err
    assert runs.load_checkpoint(os.path.join(run, "checkpoint.pt"))["epoch"] == 1


def test_grad_clip_caps_the_norm_and_reports_the_norm_before():
    w = torch.nn.Parameter(torch.zeros(4))
    w.grad = torch.tensor([3.0, 4.0, 0.0, 0.0])
    norm = train.grad_norm([w], clip=1.0)
    assert norm.item() == pytest.approx(5.0) and w.grad.norm().item() == pytest.approx(1.0, rel=1e-5)
    w.grad = torch.tensor([3.0, 4.0, 0.0, 0.0])
    assert train.grad_norm([w]).item() == pytest.approx(5.0) and w.grad[1] == 4.0


def test_grad_clip_runs_and_logs_the_norms(tiny_data, tmp_path):
    for model, column in (("vae", "train_grad_norm"), ("vaegan", "train_grad_discriminator")):
        run = str(tmp_path / model)
        assert train.main(["--model", model, "--data-root", tiny_data, "--epochs", "1",
                           "--grad-clip", "0.01", "--out", run]) == 0
        assert float(rows(run)[0][column]) > 0.01  # logged before clipping


def test_out_of_memory_says_to_lower_the_batch_size(tiny_data, tmp_path, capsys, monkeypatch):
    def oom(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(vae.VAE, "loss", oom)
    assert train.main(["--data-root", tiny_data, "--out", str(tmp_path / "run"),
                       "--batch-size", "256"]) == 1
    err = capsys.readouterr().err
    assert "out of memory" in err and "--batch-size (e.g. 128)" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("dataset,damage", [
    ("mnist", "truncate"), ("mnist", "garbage"), ("fashion-mnist", "truncate"), ("cifar10", "garbage")])
def test_a_damaged_data_file_is_named_and_nothing_is_written(tmp_path, capsys, monkeypatch,
                                                             dataset, damage):
    import torchvision.datasets.cifar as cifar
    monkeypatch.setattr(cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    root = str(tmp_path / "data")
    if dataset == "cifar10":
        write_cifar(root)
        path = os.path.join(root, "cifar-10-batches-py", "data_batch_3")
    else:
        write_mnist(root, "MNIST" if dataset == "mnist" else "FashionMNIST")
        path = os.path.join(root, "MNIST" if dataset == "mnist" else "FashionMNIST", "raw",
                            "train-images-idx3-ubyte")
    content = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(content[:-50] if damage == "truncate" else b"not the real file")
    out = tmp_path / "run"
    assert train.main(["--dataset", dataset, "--data-root", root, "--no-download",
                       "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{path} is corrupted" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    if dataset != "cifar10":  # the tiny CIFAR-10 files cannot match the official md5 sums
        assert torchvision_data.corrupted_file(data.canonical_name(dataset), root, train=False) is None


def test_evaluate_out_of_memory_says_to_lower_the_chunk(tiny_data, tmp_path, capsys, monkeypatch):
    run = str(tmp_path / "run")
    assert train.main(["--data-root", tiny_data, "--epochs", "1", "--out", run]) == 0
    capsys.readouterr()

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")
    monkeypatch.setattr(evaluate.metrics, "importance_sampled", oom)
    assert evaluate.main([run, "--chunk", "4096", "--iw-samples", "1000"]) == 1
    err = capsys.readouterr().err
    assert "out of memory" in err and "lower --chunk (now 4096)" in err
