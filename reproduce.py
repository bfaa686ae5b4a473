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

import flags
import metrics
import guard
import runs
import sweep


def cifar_mse(row):
    """MSE per [0, 1] pixel from a tanh/MSE run's test recon (summed squared error over the
    3,072 values on [-1, 1], z sampled once): / 3,072 / 4."""
    return row["test_recon"] / 3072 / 4


def autoencoder_measures(run_dir, data_root, quick=False):
    """The autoencoder family's numbers of one finished run, on the MNIST test split: PSNR of
    the input and of the reconstruction (dB, [0, 1] pixels, code h or z = mu), the fraction
    of code activations |h_j| < 1e-2 ("codes below 1e-2"; the VAE's: of mu), and the exact
    ||dh/dx||_F per image ("Jacobian norm")."""
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
    for x, target, y in data.eval_batches(test, noise=data.parse_noise(cfg["noise"]),
                                          batch_size=500):
        with torch.no_grad():
            found["PSNR input dB"].append(metrics.psnr(x, target))
            found["PSNR output dB"].append(metrics.psnr(model.reconstruct(x, y), target))
            found["codes below 1e-2"].append((model.latent(x, y).abs() < 1e-2).float().flatten())
        # ||d code / dx||_F per image, by autograd through latent() (PCA's: sqrt(latent size))
        jac = torch.func.vmap(torch.func.jacrev(lambda xi: model.latent(xi[None])[0]))(x)
        found["Jacobian norm"].append(jac.flatten(1).norm(dim=1))
    return {k: torch.cat(v).mean().item() for k, v in found.items() if v
            and (k != "PSNR input dB" or cfg["noise"])}


def evaluated(run_dir, data_root, flags, ready):
    """The run's metrics.json after `python evaluate.py RUN *flags`, reused when ready(it)
    says it already holds what is wanted for the run's last weights."""
    import json

    import evaluate
    path = os.path.join(run_dir, "metrics.json")
    m = json.load(open(path)) if os.path.isfile(path) else {}
    if not (m and m.get("weights") == "last" and ready(m) and os.path.getmtime(path)
            >= os.path.getmtime(os.path.join(run_dir, "checkpoint.pt"))):
        code = evaluate.main([run_dir, *flags, "--data-root", data_root])
        if code:
            raise SystemExit(code)
        m = json.load(open(path))
    return m


def sample_quality_measures(run_dir, data_root, quick=False):
    """The likelihood and the sample quality of one finished run, as evaluate.py measures
    them (--iw-samples 1000, or 100 with --quick; 10,000 samples in the domain network's
    features)."""
    k = 100 if quick else 1000
    m = evaluated(run_dir, data_root, ["--iw-samples", str(k), "--no-figures"],
                  lambda m: m.get("iw_samples") == k and m.get("features", {}).get(
                      "domain", {}).get("samples") == 10000)
    found = {"NLL (IW)": m["nll_iw"], "FID": m["fid"], "KID": m["kid"], "precision": m["precision"],
             "recall": m["recall"], "coverage": m["coverage"], "FID rec": m["fid_recon"],
             "classes (entropy)": m["class_entropy"], "feature network": m["features"]["domain"]["hash"]}
    return {**found, **({"class match": m["class_match"]} if "class_match" in m else {})}


def disentanglement_measures(run_dir, data_root, quick=False):
    """The five disentanglement metrics of one finished run (evaluate.py, with its figures:
    the factor heat map and the traversals named by factor)."""
    m = evaluated(run_dir, data_root, ["--fid-samples", "0"], lambda m: "mig" in m)
    return {"BetaVAE": m["beta_vae"], "FactorVAE": m["factor_vae"], "MIG": m["mig"],
            "DCI D": m["dci_disentanglement"], "DCI C": m["dci_completeness"],
            "DCI I": m["dci_informativeness"], "SAP": m["sap"]}


def anomaly_measures(run_dir, data_root, quick=False):
    """The AUROC of each anomaly score of one run trained on one class (evaluate.py)."""
    m = evaluated(run_dir, data_root, ["--fid-samples", "0", "--no-figures"],
                  lambda m: "auroc_recon_error" in m)
    return {"AUROC rec": m["auroc_recon_error"], "AUROC code": m["auroc_code_distance"],
            "AUROC ELBO": m.get("auroc_nelbo")}


ONE_CLASS_MODELS = {"pca": ["--model", "pca", "--epochs", "1"],
                    "ae-mlp": ["--model", "ae", "--epochs", "20"],
                    "ae-conv": ["--model", "ae", "--arch", "conv", "--epochs", "5"],
                    "vae-mlp": ["--model", "vae", "--epochs", "20"],
                    "vae-conv": ["--model", "vae", "--arch", "conv", "--epochs", "5"]}
# dataset: {method: [AUROC % of normal classes 0-9]}: Ruff et al. 2018 ("Deep One-Class
# Classification"), Table 1, means over 10 seeds (stds 0.1 to 1.6), as quoted by two sources
# that agree; its other rows (the DCAE baseline among them) could not be read here
ONE_CLASS_PUBLISHED = {"mnist": {"One-Class Deep SVDD": [98.0, 99.7, 91.7, 91.9, 94.9, 88.5,
                                                         98.3, 94.6, 93.9, 96.5]}}


def one_class_summary(found):
    """Per dataset, one row per normal class: each model's best score (the score with the
    highest mean AUROC over the ten classes) as mean +- std over seeds, in %, and the
    published methods beside them; the mean over the classes last."""
    lines = []
    for dataset in dict.fromkeys(s.split("-")[0] for s in next(iter(found.values()))):
        best = {}
        for model in ONE_CLASS_MODELS:
            means = {label: sum(sum(v) / len(v) for s, v in by.items() if s.startswith(f"{dataset}-")
                                and s.endswith(f"-{model}") and None not in v) / 10
                     for label, by in found.items()}
            best[model] = max((label for label in means if means[label]), key=means.get)
        published = ONE_CLASS_PUBLISHED.get(dataset, {})
        lines += [f"{dataset}, AUROC in % (each model's best score named in the header; "
                  f"mean ± std over seeds):", "",
                  "| normal class | " + " | ".join(f"{m} ({best[m][6:]})" for m in best)
                  + "".join(f" | {p} (published)" for p in published) + " |",
                  "|---" * (1 + len(best) + len(published)) + "|"]
        columns = {m: [] for m in best}
        for c in range(10):
            cells = []
            for m, label in best.items():
                v = [100 * x for x in found[label].get(f"{dataset}-{c}-{m}", [])]
                columns[m].append(sum(v) / len(v) if v else float("nan"))
                cells.append(spread(v))
            lines.append(f"| {c} | " + " | ".join(cells) + "".join(
                f" | {published[p][c]:.1f}" for p in published) + " |")
        lines.append("| mean | " + " | ".join(f"**{sum(v) / len(v):.2f}**" for v in columns.values())
                     + "".join(f" | {sum(published[p]) / 10:.2f}" for p in published) + " |")
        lines.append("")
    return lines


GAUSSIAN_ARCHS = {"mlp": ["--hidden", "300,100,10", "--lr", "0.0025"],
                  "cnn": ["--arch", "conv3x3", "--lr", "0.0015"]}
GAUSSIAN_DATASETS = {"mnist": "mnist", "fashion": "fashion-mnist"}

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
                                      "--no-batchnorm"],
                  # ours: one flag each that weakens the adversarial pull on the decoder
                  "bn-gamma10": ["--latent-dim", "20", "--gamma", "10"],
                  "no-bn-gamma10": ["--latent-dim", "20", "--gamma", "10", "--no-batchnorm"],
                  "bn-weaker-disc": ["--latent-dim", "20", "--lr-disc", "1e-4"]},
        epochs=(10, 2),
        columns=[("test loss (z = mu)", "test_loss"), ("negative ELBO", "test_nelbo"),
                 ("KL", "test_kl")],
        figures=[("samples.png", "samples", "VAE-GAN samples (the same z in each row of a "
                  "latent size)", ["bn", "no-bn", "bn-gamma10", "no-bn-gamma10", "bn-weaker-disc"])],
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
             "100' is read as d^2 = 100; it does not say how it weighs reconstruction against "
             "the adversarial term, so gamma = 10 and a slower discriminator are shown too"),
    "cifar10-regularization": dict(
        title="the CIFAR-10 regularization tutorial (conv VAE 32-64-128, latent 256, tanh, MSE)",
        base=["--arch", "conv", "--latent-dim", "256", "--output", "tanh", "--recon", "mse",
              "--scheduler", "step"],
        settings={"vae": ["--model", "vae"],
                  "vae-regularized": ["--model", "vae", "--dropout", "0.3", "--weight-decay",
                                      "1e-4", "--beta", "4", "--augment"],
                  "ae": ["--model", "ae"]},
        epochs=(50, 2), columns=[("test MSE", cifar_mse)],
        figures=[("reconstructions.png", "reconstructions", "CIFAR-10 test images and their "
                  "reconstructions (the AE's code h; the VAEs' z = mu)",
                  ["ae", "vae", "vae-regularized"])],
        published={"vae": {50: {"test MSE": 0.0150}}, "vae-regularized": {50: {"test MSE": 0.0220}}},
        note="MSE per [0, 1] pixel of the reconstruction with z sampled; the published numbers "
             "are after 50 epochs on all 50,000 training images"),
    "gaussian-decoder": dict(
        title="the MLP-vs-CNN Gaussian-decoder study (VAE with decoder N(x_hat, cI) and a "
              "softplus encoder variance, MNIST and Fashion-MNIST)",
        base=["--recon", "gaussian", "--posterior-variance", "softplus", "--act", "elu",
              "--batch-size", "256"],
        settings={f"{arch}-{dataset}-z{z}{'' if c == '0.05' else '-c' + c}": [
            *GAUSSIAN_ARCHS[arch], "--dataset", GAUSSIAN_DATASETS[dataset], "--latent-dim", str(z),
            "--c", c] for arch, dataset, z, c in (
                ("mlp", "mnist", 2, "0.05"), ("mlp", "fashion", 2, "0.05"),
                ("cnn", "mnist", 2, "0.05"), ("cnn", "fashion", 2, "0.05"),
                *(("mlp", "mnist", z, "0.05") for z in (1, 3, 20)),
                *(("cnn", "mnist", z, "0.05") for z in (1, 3, 20)),
                ("mlp", "mnist", 2, "1e-4"), ("mlp", "mnist", 2, "1"))},
        epochs=(15, 2), layout="final",
        columns=[("train loss", "train_loss"), ("train recon", "train_recon"),
                 ("train KL", "train_kl"), ("test loss", "test_loss")],
        published={"mlp-mnist-z2": {15: {"train loss": 307, "train recon": 293, "train KL": 14}},
                   "mlp-fashion-z2": {15: {"train loss": 229, "train recon": 216,
                                           "train KL": 13.4}},
                   "cnn-mnist-z2": {15: {"train loss": 322}},
                   "cnn-fashion-z2": {15: {"train loss": 246}}},
        figures=[("samples-per-dataset.png", "samples", "samples, latent size 2, c = 0.05",
                  ["mlp-mnist-z2", "cnn-mnist-z2", "mlp-fashion-z2", "cnn-fashion-z2"]),
                 ("samples-per-latent-size.png", "samples", "MNIST samples per latent size "
                  "(c = 0.05)", ["mlp-mnist-z1", "mlp-mnist-z2", "mlp-mnist-z3", "mlp-mnist-z20",
                                 "cnn-mnist-z1", "cnn-mnist-z2", "cnn-mnist-z3", "cnn-mnist-z20"]),
                 ("samples-per-c.png", "samples", "MNIST samples per decoder variance c (MLP, "
                  "latent size 2)", ["mlp-mnist-z2-c1e-4", "mlp-mnist-z2", "mlp-mnist-z2-c1"])],
        note="the study's loss per image: ||x - x_hat||^2 / (2c) summed over pixels, plus the KL; "
             "nats only up to the constant D/2 log(2 pi c) it leaves out, so it is not a "
             "likelihood and does not compare across c. Train numbers are the mean over the "
             "last epoch's steps (z sampled); the study's are its final training losses"),
    "sample-quality": dict(
        title="sample quality against likelihood: VAE, VAE-GAN (batch norm or not, gamma 1 or "
              "10) and conditional VAE on MNIST and Fashion-MNIST (MLPs, d = 20; the CVAE d = 5)",
        base=[],
        settings={f"{short}-{model}": ["--dataset", dataset, *flags]
                  for short, dataset in (("mnist", "mnist"), ("fashion", "fashion-mnist"))
                  for model, flags in (
                      ("vae", ["--model", "vae"]), ("vaegan", ["--model", "vaegan"]),
                      ("vaegan-no-bn", ["--model", "vaegan", "--no-batchnorm"]),
                      ("vaegan-gamma10", ["--model", "vaegan", "--gamma", "10"]),
                      ("vaegan-no-bn-gamma10", ["--model", "vaegan", "--no-batchnorm", "--gamma", "10"]),
                      ("cvae", ["--model", "cvae"]))},
        epochs=(10, 2), layout="final", columns=[("test loss", "test_loss")], published={},
        final=sample_quality_measures,
        figures=[("samples.png", "samples", "samples from the prior (the same z in each row of "
                  "a latent size)", [f"{d}-{m}" for d in ("mnist", "fashion") for m in (
                      "vae", "vaegan", "vaegan-no-bn", "vaegan-gamma10", "vaegan-no-bn-gamma10")])],
        note="test loss: each model's own (VAE: negative ELBO; VAE-GAN: z = mu decode plus KL, "
             "not a bound; CVAE: negative ELBO given the label); NLL (IW): K = 1000 importance "
             "samples, nats per image (Bernoulli on grey levels: a cross-entropy, comparable "
             "between these runs only; the CVAE's is -log p(x | y)); FID, KID (unbiased MMD^2, "
             "cubic kernel), precision, recall (k = 3), coverage (k = 5) of 10,000 samples and "
             "FID rec of the 10,000 test reconstructions, against the 10,000 test images in "
             "the features of the dataset's domain CNN (the feature network's weights hash "
             "in its column; numbers from another hash do not compare); classes (entropy): of "
             "the classes the domain CNN gives the samples, nats (log 10 = 2.30 when all ten "
             "are drawn alike); class match: the CVAE's samples classified as the class asked"),
    "dsprites-beta": dict(
        title="what beta does to dSprites' latent space: beta-VAE at beta 1, 4, 16 and the "
              "beta-TCVAE at beta 4 (MLP 4096-512-512, latent 10, generated dSprites)",
        base=["--dataset", "dsprites", "--hidden", "512,512", "--latent-dim", "10",
              "--batch-size", "128"],
        settings={"beta1": ["--model", "vae", "--beta", "1"],
                  "beta4": ["--model", "vae", "--beta", "4"],
                  "beta16": ["--model", "vae", "--beta", "16"],
                  "btcvae-beta4": ["--model", "btcvae", "--beta", "4"]},
        epochs=(2, 1), layout="final",
        columns=[("test recon", "test_recon"), ("test KL", "test_kl"),
                 ("active units", "test_active_units"), ("test loss", "test_loss")],
        published={}, final=disentanglement_measures,
        note="test recon: BCE summed over the 4,096 pixels per image (z sampled), test KL in "
             "nats, both on the 10,000 held-out images; test loss: the negative ELBO; active "
             "units: Cov_x E[z_d | x] > 0.01; the metrics (0 to 1, higher is more "
             "disentangled; BetaVAE and FactorVAE chance is 1/5) as in disentanglement_lib on "
             "the posterior mean, from the codes of all 737,280 images (evaluate.py, GUIDE.md)"),
    "one-class": dict(
        title="one-class anomaly detection on MNIST and Fashion-MNIST (train on one class, "
              "the other nine are the anomalies): PCA, AE and VAE, MLP and conv, code size 32",
        base=["--latent-dim", "32"],
        settings={f"{short}-{c}-{model}": ["--dataset", dataset, "--classes", str(c), *flags]
                  for short, dataset in (("mnist", "mnist"), ("fashion", "fashion-mnist"))
                  for c in range(10) for model, flags in ONE_CLASS_MODELS.items()},
        epochs=(20, 2), layout="final", columns=[("test loss", "test_loss")], published={},
        final=anomaly_measures, summary=one_class_summary,
        note="test loss: each model's own, on the whole test split (mostly anomalies); AUROC "
             "(0.5 is chance) of the anomaly scores over the 10,000 test images, the nine other "
             "classes positive: rec the squared reconstruction error on [0, 1] pixels, code the "
             "mean distance to the 5 nearest training codes, ELBO the negative ELBO (VAEs); "
             "epochs: 20 for the MLPs, 5 for the conv nets, 1 pass for PCA (the one class's "
             "6,000 training images; so the whole benchmark fits in about an hour here)"),
    "autoencoders": dict(
        title="the autoencoder family on MNIST (MLP 784-400-20: plain, denoising, sparse, "
              "contractive; the VAE and PCA with 20 components beside them)",
        base=["--dataset", "mnist", "--latent-dim", "20"],
        settings={"ae": ["--model", "ae"], "denoising-ae": ["--model", "ae", "--noise", "gaussian:0.5"],
                  "ae-relu-code": ["--model", "ae", "--code", "relu"],
                  "sparse-ae": ["--model", "ae", "--code", "relu", "--sparsity", "1"],
                  "contractive-ae": ["--model", "ae", "--contractive", "0.1"],
                  "vae": ["--model", "vae"], "pca": ["--model", "pca", "--epochs", "1"]},
        epochs=(10, 2), columns=[("test recon", "test_recon")], published={},
        final=autoencoder_measures,
        note="test recon is BCE summed over pixels per image (the VAE's with z sampled; PCA's "
             "is its squared error summed over pixels instead, not comparable); PSNR "
             "10 log10(1 / MSE) on [0, 1] pixels per image, averaged; the denoising AE's "
             "input is its corrupted image and its target the clean one"),
}


def build_parser():
    p = argparse.ArgumentParser(prog="reproduce.py", description=flags.description(__doc__),
                                formatter_class=flags.Help)
    p.add_argument("name", nargs="?", help="the experiment (see --list)")
    p.add_argument("--list", action="store_true", help="name every experiment and stop")
    p.add_argument("--quick", action="store_true", help="fewer epochs and one seed: minutes")
    p.add_argument("--seeds", default="1,2,3", help="comma-separated seeds of every setting")
    p.add_argument("--data-root", default="./data", help="train.py's --data-root")
    p.add_argument("--cifar10", default="cifar10", help="the CIFAR-10 dataset to use, e.g. "
                   "npz:TRAIN,TEST for a part of it (cifar10-regularization)")
    p.add_argument("--runs", default=os.path.join("runs", "reproduce"), help="where the runs go")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time")
    p.add_argument("--settings", help="comma-separated: run and report only these settings "
                   "(the names in the report's first column; default: all)")
    return p


def plan(name, exp, args):
    """[(run name, train.py argv)] of every setting and seed."""
    epochs = exp["epochs"][1 if args.quick else 0]
    seeds = ["1"] if args.quick else args.seeds.split(",")
    folder = os.path.join(args.runs, name + ("-quick" if args.quick else ""))
    dataset = ["--dataset", args.cifar10] if name.startswith("cifar10") else []
    chosen = args.settings.split(",") if args.settings else list(exp["settings"])
    unknown = [s for s in chosen if s not in exp["settings"]]
    if unknown:
        raise ValueError(f"--settings: {', '.join(unknown)} not a setting of {name}; its settings "
                         f"are {', '.join(exp['settings'])}")
    def epochs_of(flags):  # a setting may give its own (PCA: 1); --quick caps it
        own = int(flags[flags.index("--epochs") + 1]) if "--epochs" in flags else exp["epochs"][0]
        return str(min(own, epochs))

    return folder, [(f"{setting}-seed{seed}",
                     [*exp["base"], *dataset, *without_epochs(flags),
                      "--seed", seed, "--epochs", epochs_of(flags),
                      "--data-root", args.data_root, "--log-interval", "1000",
                      "--out", os.path.join(folder, f"{setting}-seed{seed}")])
                    for setting, flags in exp["settings"].items() if setting in chosen
                    for seed in seeds]


def without_epochs(flags):
    """A setting's flags less its own --epochs and the value after it."""
    if "--epochs" not in flags:
        return flags
    i = flags.index("--epochs")
    return flags[:i] + flags[i + 2:]


def value(row, how):
    return how(row) if callable(how) else row.get(how)


def setting_of(run_name):
    return run_name.rsplit("-seed", 1)[0]


def report(exp, folder, todo, data_root, quick=False):
    """Per epoch (or, with layout "final", at the last epoch) each setting's mean +- std over
    its seeds beside the published number."""
    histories = {}
    for name, _ in todo:
        ckpt = runs.load_checkpoint(os.path.join(folder, name, "checkpoint.pt"))
        histories.setdefault(setting_of(name), []).append(ckpt["history"])
    lines = [f"## {exp['title']}", "", f"Units: {exp['note']}.", ""]
    if exp.get("layout") == "final":
        return "\n".join(lines + final_table(exp, histories) + measured(exp, folder, todo, data_root, quick))
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
    return "\n".join(lines + measured(exp, folder, todo, data_root, quick))


def final_table(exp, histories):
    """One row per setting: every column at the last epoch, ours (mean +- std) and the
    published number after it where there is one."""
    last = max(len(h) for hs in histories.values() for h in hs)
    heads = ["setting", "n", "epoch"]
    for label, _ in exp["columns"]:
        heads += [label] + ([f"{label}, published"] if any(
            label in v.get(last, {}) for v in exp["published"].values()) else [])
    lines = ["| " + " | ".join(heads) + " |", "|---" * len(heads) + "|"]
    for setting, hs in histories.items():
        cells = [setting, str(len(hs)), str(min(len(h) for h in hs))]
        for label, how in exp["columns"]:
            cells.append(spread([value(h[-1], how) for h in hs]))
            if f"{label}, published" in heads:
                cells.append(spread([exp["published"].get(setting, {}).get(last, {}).get(label)]))
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def measured(exp, folder, todo, data_root, quick=False):
    """The table of the numbers exp["final"] measures on each run's final weights."""
    if "final" not in exp:
        return []
    found = {}
    for name, _ in todo:  # (the labels in the order of the run that has the most)
        values = exp["final"](os.path.join(folder, name), data_root, quick)
        for label, v in values.items():
            found.setdefault(label, {}).setdefault(setting_of(name), []).append(v)
    found = dict(sorted(found.items(), key=lambda item: -len(item[1])))
    lines = ["At the last epoch:", "", "| setting | " + " | ".join(found) + " |",
             "|---" * (len(found) + 1) + "|"]
    lines += [f"| {setting} | " + " | ".join(spread(found[label].get(setting, []))
                                             for label in found) + " |"
              for setting in dict.fromkeys(map(setting_of, (n for n, _ in todo)))]
    return lines + ([""] + exp["summary"](found) if "summary" in exp else [])


def draw(exp, folder, todo, data_root):
    """The experiment's figures, from the first seed of each setting: 16 samples per setting
    (the same z for settings of one latent size), or 12 test images over each setting's
    reconstructions. Returns the files written."""
    import torch

    import data
    import evaluate
    import figures
    first, written = {}, []
    for name, _ in todo:
        first.setdefault(setting_of(name), os.path.join(folder, name))
    for filename, kind, title, settings in exp.get("figures", ()):
        have = [s for s in settings if s in first]
        rows, labels = [], []
        for setting in have:
            cfg, model = evaluate.load_run(first[setting])[:2]
            model.eval()
            if kind == "samples":
                z = torch.randn(16, model.latent_dim, generator=torch.Generator().manual_seed(0))
                rows.append(figures.decode01(model, z))
            else:  # reconstructions of the same test images
                if not rows:
                    test = data.load(cfg["dataset"], data_root, "cpu", download=False,
                                     size=cfg["image_size"], channels=cfg["channels"])["test"]
                    x, target, y = evaluate.test_inputs(test, cfg, 12)
                    rows.append(data.to_unit(target, cfg["output"]))
                    labels.append("original")
                rows.append(data.to_unit(model.reconstruct(x, y), cfg["output"]).clamp(0, 1))
            labels.append(setting)
        if have:
            path = os.path.join(folder, filename)
            figures.image_rows(rows, labels, path, title)
            written.append(path)
    return written


def spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return ""
    if isinstance(values[0], str):  # a name, such as the feature network's hash
        return ", ".join(dict.fromkeys(values))
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
        held = guard.lock(folder, fresh=False)
        new = sweep.check(todo, "another --runs")
        if args.jobs > 1:
            sweep.fetch_data(new)
    except ValueError as e:
        print(f"reproduce.py: error: {e}", file=sys.stderr)
        if held:
            guard.unlock(held, folder)
        return 2
    try:
        code = sweep.run_all(todo, args.jobs)
    finally:
        guard.unlock(held, folder)
    if code:
        return code
    text = report(exp, folder, todo, args.data_root, args.quick)
    if args.quick:
        text = (f"QUICK: {exp['epochs'][1]} epoch(s), one seed: a smoke test, not comparable "
                f"with the published numbers.\n\n{text}")
    runs.atomic_save(text + "\n", os.path.join(folder, "report.md"))
    print(text)
    for path in draw(exp, folder, todo, args.data_root):
        print(f"Figure: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
