"""Side-by-side speed of train.py against the standard pytorch/examples VAE loop.

Both train the same 784-400-20 MLP VAE on MNIST with Adam (lr 1e-3), batch 128, the same seeds,
for the same number of epochs, train and test, in this one process on the same machine.
The standard loop is pytorch/examples' vae/main.py: torchvision MNIST + ToTensor +
DataLoader, a `.to(device)` per batch and a `.item()` per step. The ratio printed is
train.py's wall time over the standard loop's (the target is at most 0.5).

    python benchmarks/speed.py --data-root data --epochs 10
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision import datasets, transforms

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
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


def main():
    p = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="./data", help="folder holding MNIST/raw")
    p.add_argument("--epochs", type=int, default=10, help="epochs for each loop")
    p.add_argument("--device", default="cpu", help="cpu, cuda or mps")
    p.add_argument("--seeds", default="1", help="comma-separated seeds; each runs both loops")
    args = p.parse_args()
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
