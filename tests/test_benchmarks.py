"""benchmarks/suite.py: its FLOP count against a count by hand, and one small run end to end."""
import os
import re
import subprocess
import sys

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import suite  # noqa: E402


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
