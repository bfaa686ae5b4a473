"""The autoencoder claims of the README, measured: denoising PSNR, sparsity, contraction,
and AE vs VAE reconstruction, each trained by train.py and measured on the MNIST test split.

    python benchmarks/ae_experiments.py --data-root data --epochs 10

Runs go to --runs (one folder per setting, reused if already finished). Numbers:
- PSNR on [0, 1] pixels, 10 log10(1 / MSE) per test image, averaged over images;
- sparsity: fraction of code activations |h_j| < 1e-2 over test images and code units;
- contraction: ||dh/dx||_F per test image (exact, ae.AE.jacobian_norm2), averaged;
- recon: test reconstruction BCE summed over pixels, per image (history.csv).
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import data  # noqa: E402
import models  # noqa: E402
import runs  # noqa: E402
import train  # noqa: E402

SETTINGS = {
    "ae": ["--model", "ae"],
    "ae-denoise": ["--model", "ae", "--noise", "gaussian:0.5"],
    "ae-relu": ["--model", "ae", "--code", "relu"],
    "ae-relu-sparse": ["--model", "ae", "--code", "relu", "--sparsity", "1"],
    "ae-contractive": ["--model", "ae", "--contractive", "0.1"],
    "vae": ["--model", "vae"],
}


def trained(name, args):
    out = os.path.join(args.runs, name)
    if os.path.isfile(os.path.join(out, "checkpoint.pt")):
        ckpt = runs.load_checkpoint(os.path.join(out, "checkpoint.pt"))
        if ckpt["epoch"] >= args.epochs:
            cfg = ckpt["config"]
            model = models.from_config(cfg)
            model.load_state_dict(ckpt["model"])
            return model.eval(), cfg, ckpt["history"][-1]
    if os.path.isfile(os.path.join(out, "checkpoint.pt")):  # unfinished: continue it
        cfg, ckpt = train.resolve(["--resume", out, "--epochs", str(args.epochs)])
    else:
        cfg, ckpt = train.resolve(SETTINGS[name] + [
            "--data-root", args.data_root, "--epochs", str(args.epochs), "--latent-dim", "20",
            "--out", out, "--log-interval", "1000000"])
    history = train.run(cfg, ckpt)
    return trained(name, args) if history else None


def psnr(x, y):
    mse = (x - y).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse)  # (B,)


def measure(model, cfg, test):
    noise = data.parse_noise(cfg["noise"])
    p_in, p_out, small, jac = [], [], [], []
    for x, target, _ in data.batches(*test, 500, output=cfg["output"], noise=noise,
                                     noise_seed=data.TEST_NOISE_SEED):
        with torch.no_grad():
            p_in.append(psnr(x, target))
            p_out.append(psnr(model.reconstruct(x), target))
        if not model.variational:  # the AE: its code h is the contractive penalty's
            x = x.clone().requires_grad_(True)
            h = model.encode(x)
            small.append((h.abs() < 1e-2).float().flatten())
            jac.append(model.jacobian_norm2(x, h).detach().sqrt())
    cat = lambda ts: torch.cat(ts).mean().item() if ts else float("nan")  # noqa: E731
    return {"psnr_input": cat(p_in), "psnr_output": cat(p_out), "frac_small": cat(small),
            "jacobian_fro": cat(jac)}


def main():
    p = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="./data", help="folder holding MNIST/raw")
    p.add_argument("--epochs", type=int, default=10, help="epochs per setting")
    p.add_argument("--runs", default="runs/ae-experiments", help="folder for the run folders")
    args = p.parse_args()
    torch.manual_seed(0)
    test = data.load("mnist", args.data_root, "cpu")["test"]
    print("\n| run | flags | test recon (nats/image) | PSNR input dB | PSNR output dB "
          "| fraction |h| < 1e-2 | mean ||dh/dx||_F |")
    print("|---|---|---|---|---|---|---|")
    for name in SETTINGS:
        model, cfg, last = trained(name, args)
        m = measure(model, cfg, test)
        p_in = f"{m['psnr_input']:.2f}" if cfg["noise"] else "clean"
        print(f"| {name} | `{' '.join(SETTINGS[name])}` | {last['test_recon']:.2f} "
              f"| {p_in} | {m['psnr_output']:.2f} | {m['frac_small']:.3f} "
              f"| {m['jacobian_fro']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
