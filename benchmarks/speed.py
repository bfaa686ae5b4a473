"""Side-by-side speed of train.py against pytorch/examples' MNIST VAE (vae/main.py).

Both train the same 784-400-20 MLP VAE on MNIST with Adam (lr 1e-3), batch 128, seed 1,
for the same number of epochs, train and test, on the same machine. Two ways:

  --examples-main PATH   whole process against whole process, as a user runs them:
                         `python main.py --epochs E` (pytorch/examples' own file, which you
                         fetch yourself: it is not part of this project) in a scratch folder
                         laid out as it expects (../data/MNIST/raw, results/), against
                         `python train.py --model vae --dataset mnist --latent-dim 20
                         --epochs E`; imports, data loading, figures and checkpoints included.
                         The two take turns for --rounds rounds; the ratio is of the medians.
  (default)              both loops in this one process: a copy of main.py's loop
                         (torchvision MNIST + ToTensor + DataLoader, a `.to(device)` per batch
                         and a `.item()` per step) against train.run.

The ratio printed is train.py's time over the standard one's (the target is at most 0.5).

    python benchmarks/speed.py --data-root data --epochs 10
    python benchmarks/speed.py --data-root data --epochs 10 --examples-main ~/examples/vae/main.py
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision import datasets, transforms

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
import flags  # noqa: E402
import train  # noqa: E402


class ExamplesVAE(nn.Module):
    """pytorch/examples' VAE, layer for layer."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
        self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

    def forward(self, x):
        h = F.relu(self.fc1(x.view(-1, 784)))
        mu, logvar = self.fc21(h), self.fc22(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar


def examples_loss(recon_x, x, mu, logvar):
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    return bce - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


def standard_loop(root, epochs, device, batch_size=128, seed=1):
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    train_loader = torch.utils.data.DataLoader(
        datasets.MNIST(root, train=True, transform=transforms.ToTensor()),
        batch_size=batch_size, shuffle=True)
    test_loader = torch.utils.data.DataLoader(
        datasets.MNIST(root, train=False, transform=transforms.ToTensor()),
        batch_size=batch_size, shuffle=False)
    model = ExamplesVAE().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(1, epochs + 1):
        model.train()
        train_loss = 0
        for x, _ in train_loader:
            x = x.to(device)
            opt.zero_grad()
            recon, mu, logvar = model(x)
            loss = examples_loss(recon, x, mu, logvar)
            loss.backward()
            train_loss += loss.item()
            opt.step()
        model.eval()
        test_loss = 0
        with torch.no_grad():
            for x, _ in test_loader:
                x = x.to(device)
                recon, mu, logvar = model(x)
                test_loss += examples_loss(recon, x, mu, logvar).item()
        test_loss /= len(test_loader.dataset)
        print(f"  standard epoch {epoch}: train {train_loss / len(train_loader.dataset):.4f} "
              f"test {test_loss:.4f}", flush=True)
    return time.perf_counter() - t0, test_loss


def ours(root, epochs, device, seed=1):
    out = tempfile.mkdtemp(prefix="speed-")
    t0 = time.perf_counter()
    try:
        cfg, _ = train.resolve(["--dataset", "mnist", "--data-root", root, "--epochs", str(epochs),
                                "--device", str(device), "--seed", str(seed), "--out",
                                os.path.join(out, "run"), "--log-interval", "1000000"])
        history = train.run(cfg)
    finally:
        shutil.rmtree(out)
    return time.perf_counter() - t0, history[-1]["test_loss"]


def timed(command, cwd):
    """(wall seconds, last test loss printed) of one command, run to its end."""
    t0 = time.perf_counter()
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{proc.stderr[-2000:]}")
    losses = re.findall(r"Test set loss: ([\d.]+)", proc.stdout)
    return seconds, float(losses[-1])


def whole_processes(args):
    """pytorch/examples' main.py against train.py, each a fresh process, taking turns."""
    root = os.path.abspath(args.data_root)
    scratch = tempfile.mkdtemp(prefix="speed-")
    try:
        os.makedirs(os.path.join(scratch, "vae", "results"))
        os.symlink(root, os.path.join(scratch, "data"))  # main.py reads ../data/MNIST/raw
        shutil.copyfile(args.examples_main, os.path.join(scratch, "vae", "main.py"))
        examples = [sys.executable, "main.py", "--epochs", str(args.epochs)]
        ours = [sys.executable, os.path.join(ROOT, "train.py"), "--model", "vae", "--dataset",
                "mnist", "--latent-dim", "20", "--epochs", str(args.epochs), "--data-root",
                root, "--device", args.device, "--no-download"]
        rows = []
        for r in range(args.rounds):
            t_ex, loss_ex = timed(examples + (["--no-accel"] if args.device == "cpu" else []),
                                  os.path.join(scratch, "vae"))
            t_us, loss_us = timed(ours + ["--out", os.path.join(scratch, f"run{r}")], scratch)
            rows.append((t_ex, t_us))
            print(f"round {r + 1}: pytorch/examples {t_ex:.1f} s (test loss {loss_ex:.4f}), "
                  f"train.py {t_us:.1f} s (test loss {loss_us:.4f}), ratio {t_us / t_ex:.2f}",
                  flush=True)
    finally:
        shutil.rmtree(scratch)
    ex, us = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
    print(f"\nmedian of {len(rows)} rounds, {args.epochs} epochs, whole processes: "
          f"pytorch/examples {ex:.1f} s, train.py {us:.1f} s, ratio {us / ex:.2f} "
          f"(per round: {', '.join(f'{b / a:.2f}' for a, b in rows)}; target <= 0.5)")


def main():
    p = argparse.ArgumentParser(formatter_class=flags.Help,
                                description=flags.description(__doc__))
    p.add_argument("--data-root", default="./data", help="folder holding MNIST/raw")
    p.add_argument("--epochs", type=int, default=10, help="epochs for each loop")
    p.add_argument("--device", default="cpu", help="cpu, cuda or mps")
    p.add_argument("--seeds", default="1", help="comma-separated seeds; each runs both loops "
                   "(in-process comparison)")
    p.add_argument("--examples-main", default=None, metavar="PATH", help="pytorch/examples' "
                   "vae/main.py: compare whole processes against it instead")
    p.add_argument("--rounds", type=int, default=3, help="--examples-main: rounds, taking turns")
    args = p.parse_args()
    if args.examples_main:
        whole_processes(args)
        return
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, "
          f"{os.cpu_count()} CPUs")
    rows = []
    for seed in map(int, args.seeds.split(",")):
        t_std, loss_std = standard_loop(args.data_root, args.epochs, device, seed=seed)
        t_ours, loss_ours = ours(args.data_root, args.epochs, device, seed=seed)
        rows.append((seed, t_std, loss_std, t_ours, loss_ours))
    print(f"\n{args.epochs} epochs, train and test | seed | standard s | standard test loss "
          f"| train.py s | train.py test loss | time ratio")
    for seed, t_std, loss_std, t_ours, loss_ours in rows:
        print(f"| {seed} | {t_std:.1f} | {loss_std:.4f} | {t_ours:.1f} | {loss_ours:.4f} "
              f"| {t_ours / t_std:.2f} |")
    ratio = sum(r[3] for r in rows) / sum(r[1] for r in rows)
    print(f"ratio train.py / standard over all seeds: {ratio:.2f} (target <= 0.5)")


if __name__ == "__main__":
    main()
