"""One reference experiment, rerun with the settings and seeds it needs, our numbers printed
beside the published ones.

    python reproduce.py --list
    python reproduce.py pytorch-examples-vae                 # 10 epochs, seeds 1, 2, 3
    python reproduce.py vaegan-batchnorm --quick             # minutes on a laptop CPU
    python reproduce.py cifar10-regularization --cifar10 npz:train.npz,test.npz

The runs are ordinary train.py runs (sweep.py's machinery), in runs/reproduce/<name>/ (or
<name>-quick/): the same command again skips finished runs and resumes unfinished ones.
--quick runs fewer epochs and one seed, and says so: its numbers are a smoke test, not a
reproduction.
"""
import argparse
import os
import sys

import metrics
import runs
import sweep


def cifar_mse(row):
    """MSE per [0, 1] pixel from a tanh/MSE run's test recon (summed squared error over the
    3,072 values on [-1, 1], z sampled once): / 3,072 / 4."""
    return row["test_recon"] / 3072 / 4


def autoencoder_measures(run_dir, data_root):
    """The autoencoder family's numbers of one finished run, on the MNIST test split: PSNR of
    the input and of the reconstruction (dB, [0, 1] pixels, code h or z = mu), the fraction
    of code activations |h_j| < 1e-2 ("codes below 1e-2"), and the exact ||dh/dx||_F per
    image ("Jacobian norm"; AEs only)."""
    import torch

    import data
    import models
    ckpt = runs.load_checkpoint(os.path.join(run_dir, "checkpoint.pt"))
    cfg = ckpt["config"]
    model = models.from_config(cfg)
    model.load_state_dict(ckpt["model"])
    model.eval()
    test = data.load("mnist", data_root, "cpu", download=False)["test"]
    found = {"PSNR input dB": [], "PSNR output dB": [], "codes below 1e-2": [], "Jacobian norm": []}
    for x, target, y in data.batches(*test, 500, noise=data.parse_noise(cfg["noise"]),
                                     noise_seed=data.TEST_NOISE_SEED):
        with torch.no_grad():
            found["PSNR input dB"].append(metrics.psnr(x, target))
            found["PSNR output dB"].append(metrics.psnr(model.reconstruct(x, y), target))
        if not model.variational:  # the AE's code h is what the penalties act on
            x = x.clone().requires_grad_(True)
            h = model.encode(x)
            found["codes below 1e-2"].append((h.abs() < 1e-2).float().flatten())
            found["Jacobian norm"].append(model.jacobian_norm2(x, h).detach().sqrt())
    return {k: torch.cat(v).mean().item() for k, v in found.items() if v
            and (k != "PSNR input dB" or cfg["noise"])}


# name: what it is, the train.py flags of every setting, epochs (full, quick), the columns
# printed (label, a history row's key or a function of the row), the published numbers
# {setting: {epoch: {column label: value}}}, and a note on what they are.
EXPERIMENTS = {
    "pytorch-examples-vae": dict(
        title="pytorch/examples' MNIST VAE (MLP 784-400-20, Adam 1e-3, batch 128, BCE)",
        base=["--dataset", "mnist"], settings={"vae": []}, epochs=(10, 2),
        columns=[("test loss", "test_loss"), ("train loss", "train_loss")],
        published={"vae": {10: {"test loss": 105.55}}},
        note="negative ELBO in nats per image, z sampled once, as main.py prints it"),
    "mnist-2d-latent": dict(
        title="the 2-D-latent MNIST VAE tutorial (MLP 784-400-2)",
        base=["--dataset", "mnist", "--latent-dim", "2"], settings={"vae": []}, epochs=(10, 2),
        columns=[("train loss", "train_loss"), ("train recon", "train_recon"),
                 ("train KL", "train_kl"), ("test loss", "test_loss"), ("test KL", "test_kl")],
        published={"vae": {10: {"train loss": 154.52, "test loss": 154.80, "test KL": 5.88}}},
        note="nats per image; negative ELBO with z sampled once"),
    "vaegan-batchnorm": dict(
        title="the MNIST VAE-GAN batch-norm study (MLP VAE-GAN, d = 20; denoising d = 10)",
        base=["--model", "vaegan", "--dataset", "mnist"],
        settings={"bn": ["--latent-dim", "20"],
                  "no-bn": ["--latent-dim", "20", "--no-batchnorm"],
                  "denoising-bn": ["--latent-dim", "10", "--noise", "gaussian:0.5"],
                  "denoising-no-bn": ["--latent-dim", "10", "--noise", "gaussian:0.5",
                                      "--no-batchnorm"]},
        epochs=(10, 2),
        columns=[("test loss (z = mu)", "test_loss"), ("negative ELBO", "test_nelbo")],
        published={  # section 4: the test set loss after each epoch
            "bn": {e + 1: {"test loss (z = mu)": v} for e, v in enumerate(
                [147.84, 125.58, 114.92, 107.75, 103.73, 101.18, 99.68, 98.59, 98.25, 97.33])},
            "no-bn": {e + 1: {"test loss (z = mu)": v} for e, v in enumerate(
                [230.33, 180.40, 157.06, 142.45, 134.21, 128.91, 126.73, 124.57, 122.25, 119.86])},
            "denoising-bn": {e + 1: {"test loss (z = mu)": v} for e, v in enumerate(
                [164.16, 154.75, 154.71, 152.69, 150.39, 144.79, 133.71, 132.98, 124.23, 121.48])},
            "denoising-no-bn": {e + 1: {"test loss (z = mu)": v} for e, v in enumerate(
                [347.02, 247.79, 207.18, 186.86, 178.08, 168.44, 162.59, 155.95, 150.02, 146.45])}},
        note="the study's test loss is BCE of the decode of z = mu plus the KL (not a bound); "
             "its denoising noise is not given (Gaussian 0.5 is our choice) and its 'dimension "
             "100' is read as d^2 = 100"),
    "cifar10-regularization": dict(
        title="the CIFAR-10 regularization tutorial (conv VAE 32-64-128, latent 256, tanh, MSE)",
        base=["--arch", "conv", "--latent-dim", "256", "--output", "tanh", "--recon", "mse",
              "--scheduler", "step"],
        settings={"vae": ["--model", "vae"],
                  "vae-regularized": ["--model", "vae", "--dropout", "0.3", "--weight-decay",
                                      "1e-4", "--beta", "4", "--augment"],
                  "ae": ["--model", "ae"]},
        epochs=(50, 2), columns=[("test MSE", cifar_mse)],
        published={"vae": {50: {"test MSE": 0.0150}}, "vae-regularized": {50: {"test MSE": 0.0220}}},
        note="MSE per [0, 1] pixel of the reconstruction with z sampled; the published numbers "
             "are after 50 epochs on all 50,000 training images"),
    "autoencoders": dict(
        title="the autoencoder family on MNIST (MLP 784-400-20: plain, denoising, sparse, "
              "contractive; the VAE beside them)",
        base=["--dataset", "mnist", "--latent-dim", "20"],
        settings={"ae": ["--model", "ae"], "denoising-ae": ["--model", "ae", "--noise", "gaussian:0.5"],
                  "ae-relu-code": ["--model", "ae", "--code", "relu"],
                  "sparse-ae": ["--model", "ae", "--code", "relu", "--sparsity", "1"],
                  "contractive-ae": ["--model", "ae", "--contractive", "0.1"],
                  "vae": ["--model", "vae"]},
        epochs=(10, 2), columns=[("test recon", "test_recon")], published={},
        final=autoencoder_measures,
        note="test recon is BCE summed over pixels per image (the VAE's with z sampled); PSNR "
             "10 log10(1 / MSE) on [0, 1] pixels per image, averaged; the denoising AE's "
             "input is its corrupted image and its target the clean one"),
}


def build_parser():
    p = argparse.ArgumentParser(prog="reproduce.py", description=__doc__.splitlines()[0])
    p.add_argument("name", nargs="?", help="the experiment (see --list)")
    p.add_argument("--list", action="store_true", help="name every experiment and stop")
    p.add_argument("--quick", action="store_true", help="fewer epochs and one seed: minutes")
    p.add_argument("--seeds", default="1,2,3", help="comma-separated seeds of every setting")
    p.add_argument("--data-root", default="./data", help="train.py's --data-root")
    p.add_argument("--cifar10", default="cifar10", help="the CIFAR-10 dataset to use, e.g. "
                   "npz:TRAIN,TEST for a part of it (cifar10-regularization)")
    p.add_argument("--runs", default=os.path.join("runs", "reproduce"), help="where the runs go")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time")
    return p


def plan(name, exp, args):
    """[(run name, train.py argv)] of every setting and seed."""
    epochs = exp["epochs"][1 if args.quick else 0]
    seeds = ["1"] if args.quick else args.seeds.split(",")
    folder = os.path.join(args.runs, name + ("-quick" if args.quick else ""))
    dataset = ["--dataset", args.cifar10] if name.startswith("cifar10") else []
    return folder, [(f"{setting}-seed{seed}",
                     [*exp["base"], *dataset, *flags, "--seed", seed, "--epochs", str(epochs),
                      "--data-root", args.data_root, "--log-interval", "1000",
                      "--out", os.path.join(folder, f"{setting}-seed{seed}")])
                    for setting, flags in exp["settings"].items() for seed in seeds]


def value(row, how):
    return how(row) if callable(how) else row.get(how)


def report(exp, folder, todo, data_root):
    """Per epoch, each setting's mean +- std over its seeds beside the published number."""
    histories = {}
    for name, _ in todo:
        setting = name.rsplit("-seed", 1)[0]
        ckpt = runs.load_checkpoint(os.path.join(folder, name, "checkpoint.pt"))
        histories.setdefault(setting, []).append(ckpt["history"])
    lines = [f"## {exp['title']}", "", f"Units: {exp['note']}.", ""]
    for label, how in exp["columns"]:
        heads, cells_of = [], []
        for setting, hs in histories.items():
            heads.append(f"{setting} (ours, n={len(hs)})")
            cells_of.append(lambda e, hs=hs: spread([value(h[e - 1], how) for h in hs if len(h) >= e]))
            if any(label in v for v in exp["published"].get(setting, {}).values()):
                heads.append(f"{setting} (published)")
                cells_of.append(lambda e, s=setting: spread([exp["published"][s].get(e, {}).get(label)]))
        ours = max(len(h) for hs in histories.values() for h in hs)
        published = {e for by_epoch in exp["published"].values() for e, v in by_epoch.items() if label in v}
        lines += [f"{label}:", "", "| epoch | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
        lines += [f"| {e} | " + " | ".join(c(e) for c in cells_of) + " |"
                  for e in sorted(set(range(1, ours + 1)) | published)]
        lines.append("")
    if "final" in exp:  # numbers measured on each run's final weights
        found = {}
        for name, _ in todo:  # (the labels in the order of the run that has the most)
            measured = exp["final"](os.path.join(folder, name), data_root)
            for label, v in measured.items():
                found.setdefault(label, {}).setdefault(name.rsplit("-seed", 1)[0], []).append(v)
        found = dict(sorted(found.items(), key=lambda item: -len(item[1])))
        lines += ["At the last epoch:", "", "| setting | " + " | ".join(found) + " |",
                  "|---" * (len(found) + 1) + "|"]
        lines += [f"| {setting} | " + " | ".join(spread(found[label].get(setting, []))
                                                for label in found) + " |" for setting in histories]
    return "\n".join(lines)


def spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return ""
    digits = 4 if abs(values[0]) < 1 else 2
    mean, std = metrics.mean_std(values)
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if len(values) > 1 else "")


def main(argv=None):
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.list or not args.name:
        print("\n".join(f"{name}: {exp['title']}" for name, exp in EXPERIMENTS.items()))
        return 0 if args.list else 2
    if args.name not in EXPERIMENTS:
        print(f"reproduce.py: error: unknown experiment {args.name!r}; use one of "
              f"{', '.join(EXPERIMENTS)}", file=sys.stderr)
        return 2
    exp = EXPERIMENTS[args.name]
    held = None
    try:
        seeds = args.seeds.split(",")
        if args.jobs < 1 or len(set(seeds)) < len(seeds) or not all(s.isdigit() for s in seeds):
            raise ValueError(f"give --jobs >= 1 and distinct --seeds (got --jobs {args.jobs}, "
                             f"--seeds {args.seeds})")
        folder, todo = plan(args.name, exp, args)
        held = runs.lock(folder, fresh=False)
        sweep.check(todo)
    except ValueError as e:
        print(f"reproduce.py: error: {e}", file=sys.stderr)
        if held:
            runs.unlock(held, folder)
        return 2
    try:
        code = sweep.run_all(todo, args.jobs)
    finally:
        runs.unlock(held, folder)
    if code:
        return code
    text = report(exp, folder, todo, args.data_root)
    if args.quick:
        text = (f"QUICK: {exp['epochs'][1]} epoch(s), one seed: a smoke test, not comparable "
                f"with the published numbers.\n\n{text}")
    runs.atomic_save(text + "\n", os.path.join(folder, "report.md"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
