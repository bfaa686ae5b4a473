"""Speed: the speed flags on a CPU (--amp, --channels-last, --compile), the data budget's
host-memory path, a training step that never waits for the device, and
benchmarks/suite.py (its FLOP count against a count by hand, and one small run)."""
import csv
import math
import os
import re
import subprocess
import sys
import traceback

import pytest
import torch
import torch.utils._python_dispatch

import data
import models
import parallel
import train

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import suite  # noqa: E402


def rows(run_dir):
    with open(os.path.join(run_dir, "history.csv")) as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def test_speed_flags_work_on_a_cpu(tiny_data, tmp_path, capsys, monkeypatch):
    """--amp on a CPU without matrix units (forced, whatever this CPU has) trains in float32."""
    monkeypatch.setattr(parallel, "cpu_matrix_units", lambda: False)
    base = ["--data-root", tiny_data, "--epochs", "2", "--batch-size", "16", "--log-interval", "1000"]
    assert train.main(base + ["--out", str(tmp_path / "plain")]) == 0
    assert train.main(base + ["--out", str(tmp_path / "amp"), "--amp"]) == 0
    assert "--amp: bfloat16 autocast is not used on cpu" in capsys.readouterr().out
    assert rows(tmp_path / "amp") == rows(tmp_path / "plain")  # float32 where amp does not apply
    conv = base + ["--arch", "conv", "--latent-dim", "4"]
    assert train.main(conv + ["--out", str(tmp_path / "conv")]) == 0
    assert train.main(conv + ["--out", str(tmp_path / "cl"), "--channels-last"]) == 0
    a, b = rows(tmp_path / "conv")[-1], rows(tmp_path / "cl")[-1]
    assert float(b["test_loss"]) == pytest.approx(float(a["test_loss"]), rel=1e-3)


@pytest.mark.parametrize("model", ["vae", "vaegan"])
def test_amp_on_a_cpu_with_matrix_units_trains_in_bfloat16(tiny_data, tmp_path, capsys,
                                                           monkeypatch, model):
    """The check is forced, whatever this CPU has: the autocast run differs from the
    float32 one (bfloat16 was used) but stays close, and every logged number is finite."""
    monkeypatch.setattr(parallel, "cpu_matrix_units", lambda: True)
    base = ["--model", model, "--data-root", tiny_data, "--epochs", "2", "--batch-size", "16"]
    assert train.main(base + ["--out", str(tmp_path / "plain")]) == 0
    assert train.main(base + ["--out", str(tmp_path / "amp"), "--amp"]) == 0
    assert "not used" not in capsys.readouterr().out
    plain, amp = rows(tmp_path / "plain")[-1], rows(tmp_path / "amp")[-1]
    assert plain != amp and all(math.isfinite(float(v)) for v in amp.values())
    assert float(amp["test_loss"]) == pytest.approx(float(plain["test_loss"]), rel=0.05)


@pytest.mark.slow  # about 30 s each on 2 cores, and needs a C++ compiler: python -m pytest --run-slow
@pytest.mark.parametrize("model", ["vae", "vaegan"])
def test_compile_trains_like_eager(tiny_data, tmp_path, model):
    base = ["--model", model, "--data-root", tiny_data, "--epochs", "2", "--batch-size", "16",
            "--log-interval", "1000"]
    assert train.main(base + ["--out", str(tmp_path / "plain")]) == 0
    assert train.main(base + ["--out", str(tmp_path / "compiled"), "--compile"]) == 0
    a, b = rows(tmp_path / "plain")[-1], rows(tmp_path / "compiled")[-1]
    # compiled code draws its own random numbers (z, dropout), so only close, not equal
    assert float(b["train_loss"]) == pytest.approx(float(a["train_loss"]), rel=0.02)


def test_a_split_over_the_data_budget_stays_on_the_host_and_trains_the_same(tiny_data, tmp_path,
                                                                            capsys):
    base = ["--data-root", tiny_data, "--epochs", "2", "--batch-size", "16", "--augment",
            "--noise", "gaussian:0.3", "--dropout", "0.1", "--log-interval", "1000"]
    assert train.main(base + ["--out", str(tmp_path / "resident")]) == 0
    capsys.readouterr()
    assert train.main(base + ["--out", str(tmp_path / "host"), "--data-budget", "1e-6"]) == 0
    out = capsys.readouterr().out
    assert "the train split (0 MB) is over the 0 MB budget: kept in host memory" in out
    assert "the test split" in out
    assert rows(tmp_path / "host") == rows(tmp_path / "resident")  # same batches, same run


def test_staged_batches_equal_resident_batches():
    images = torch.randint(0, 256, (37, 1, 28, 28), dtype=torch.uint8)
    labels = torch.arange(37)
    order = torch.randperm(37)
    for kw in ({"order": order, "shuffle": True}, {"noise": ("mask", 0.3), "noise_seed": 0}):
        a = list(data.batches(images, labels, 8, **kw))
        b = list(data.batches(images, labels, 8, device="cpu", **kw))
        assert len(a) == len(b) == 5
        for (xa, ta, ya), (xb, tb, yb) in zip(a, b):
            assert torch.equal(xa, xb) and torch.equal(ta, tb) and torch.equal(ya, yb)


class HostReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the reads of a tensor's value by the host (.item(), bool(), int(): each one a
    wait for the GPU there), except the BCE range check that losses.py does on CPUs only."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and not any(
                frame.name == "bce_logits" for frame in traceback.extract_stack()):
            self.n += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("argv,per_step", [
    (["--model", "vae"], 0),
    (["--model", "vae", "--dataset", "cifar10", "--arch", "conv", "--output", "tanh", "--recon",
      "mse", "--augment", "--noise", "gaussian:0.2", "--dropout", "0.1"], 0),
    (["--model", "ae", "--contractive", "0.1", "--sparsity", "0.1", "--l1", "1e-5"], 0),
    (["--model", "vaegan", "--arch", "conv", "--grad-clip", "5"], 0),
    (["--model", "vaegan", "--equilibrium", "0.68"], 2),  # the gate reads two numbers a step
])
@pytest.mark.parametrize("staged", [False, True])
def test_the_training_step_never_waits_for_the_device(argv, per_step, staged):
    """Host reads in an epoch of 3 steps and of 6 (no progress line in between): only the
    end of the epoch reads numbers back, however many steps it has."""
    cfg, _ = train.resolve(argv + ["--batch-size", "8", "--log-interval", "1000", "--out", "unused"])
    shape = tuple(cfg["image_shape"])
    model = models.from_config(cfg)
    opt = train.build_optimizers(model, cfg, torch.device("cpu"))
    reads = []
    for steps in (3, 6):
        split = (torch.randint(0, 256, (8 * steps, *shape), dtype=torch.uint8),
                 torch.zeros(8 * steps, dtype=torch.long))
        with HostReads() as counter:
            train.train_epoch(model, opt, split, cfg, 1, data.parse_noise(cfg["noise"]),
                              copy_to=torch.device("cpu") if staged else None)
        reads.append(counter.n)
    assert reads[1] - reads[0] == 3 * per_step and reads[0] - 3 * per_step <= 2, reads


class Args:
    extra, data_root, device = "", "unused", "cpu"


def mlp_vae_flops(batch):
    """784-400-(20, 20) encoder, 20-400-784 decoder: the forward pass takes 2 B sum(in x out)
    FLOPs, the weight gradients as many again, and the input gradients as many less the
    first layer's (the images need no gradient)."""
    layers = [(784, 400), (400, 40), (20, 400), (400, 784)]
    return 2 * batch * (2 * sum(i * o for i, o in layers) + sum(i * o for i, o in layers[1:]))


def test_a_step_of_the_mlp_vae_counts_the_flops_of_its_four_layers():
    cfg, device, model, opt = suite.build("vae-mlp-mnist", Args())
    images = torch.randint(0, 256, (128, 1, 28, 28), dtype=torch.uint8)
    assert suite.step_flops(cfg, device, model, opt, images) == mlp_vae_flops(128)


def test_the_split_is_a_view_when_it_is_long_enough_and_repeats_when_not():
    cfg = {"batch_size": 4}
    images, labels = torch.arange(10).view(10, 1, 1, 1), torch.arange(10)
    x, y = suite.our_split(cfg, images, labels, 2)
    assert x.data_ptr() == images.data_ptr() and y.tolist() == list(range(8))
    x, y = suite.our_split(cfg, images, labels, 4)
    assert y.tolist() == list(range(10)) + list(range(6))


@pytest.mark.e2e
def test_the_suite_runs_and_prints_its_table(tiny_data):
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "suite.py"), "--data-root", tiny_data,
         "--setups", "vae-mlp-mnist", "--steps", "3", "--warmup", "1", "--repeats", "1",
         "--extra", "--batch-size 16"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| vae-mlp-mnist"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 12 and all(re.fullmatch(r"[\d.]+( \(\d+%\))?", c) for c in cells[1:]), row
    assert abs(float(cells[9]) - mlp_vae_flops(16) / 1e9) <= 0.005, row  # GFLOP, 2 decimals
    assert re.search(r"K = 1000, MLP VAE: \d+ test images/s", proc.stdout)
