"""Metrics and figures for one run or a comparison of runs, rebuilt from the run folders.

    python evaluate.py runs/vae-mnist-20261120-101500
    python evaluate.py runs/ae-cifar10 runs/vae-cifar10 runs/vae-reg-cifar10 --out figures/
    python evaluate.py 'runs/vae-mnist-*'                           # a glob, or a folder of runs
    python evaluate.py RUN --iw-samples 1000                        # and the likelihood (minutes)

Each run: metrics.json in its folder (units below, and in the file), one markdown row
per run on stdout (also <out>/table.md), figures in --out. Inputs are what the model saw
in its test loss: the corrupted image for --noise runs (fixed seed), else the clean one.
"""
import csv
import glob
import json
import math
import os
import sys
import time
import types

import torch

import anomaly
import data
import disentanglement
import features
import figures
import losses
import metrics
import models
import runs
from tables import group_table, groups, label, table
from config import pick_device, saved_config
from flags import Help, Parser

UNITS = {
    "test_loss": "the test loss as train.py prints it (VAE: negative ELBO, z sampled once; "
                 "AE: reconstruction term; VAE-GAN: recon with z = mu, plus KL), per image",
    "train_loss": "the same quantity on the training split, in evaluation mode",
    "gap": "test_loss - train_loss",
    "history_train_loss": "the training objective train.py logged for this epoch",
    "history_test_loss": "the test loss train.py logged for this epoch",
    "nelbo": "negative ELBO, nats per image, reconstruction averaged over the K samples",
    "code_variance": "Cov_x(E_q[z_d]) of each dimension over the test split",
    "nelbo_se": "sampling standard error of nelbo",
    "recon": "reconstruction term of nelbo", "kl": "KL(q(z|x) || p(z)), nats per image",
    "nll_iw": "importance-sampled negative log-likelihood with K samples (Burda et al. 2016), "
              "nats per image, same constant as the test loss; for a conditional model "
              "(cvae) -log p(x | y) given the label, not comparable with -log p(x)",
    "likelihood_constant": "nats per image to add to nll_iw and nelbo for the full -log p(x) "
                           "(Gaussian and mse decoders)",
    "likelihood": "the decoder's distribution behind nll_iw: bce (Bernoulli on grey levels), "
                  "gaussian or mse",
    "bits_per_dim": "nll_iw in bits per dimension (see metrics.bits_per_dim); for a bce "
                    "(Bernoulli) decoder a cross-entropy on grey levels, not a likelihood of "
                    "pixel values: comparable with other bce numbers only",
    "mse": "reconstruction mean squared error per pixel on [0, 1] pixels (z = mu)",
    "psnr": "mean over test images of 10 log10(1 / MSE), dB",
    "psnr_noisy": "--noise runs: PSNR of the corrupted input against the clean image, dB",
    "kl_per_dim": "KL of each latent dimension, nats per image",
    "active_units": "dimensions with Cov_x(E_q[z_d]) > 0.01 (Burda et al. 2016)",
    "probe_accuracy": "test accuracy of a logistic regression on the train split's codes",
    "acc_real": "VAE-GAN: fraction of test images D calls real",
    "acc_rec": "VAE-GAN: fraction of reconstructions D calls fake",
    "acc_prior": "VAE-GAN: fraction of prior samples D calls fake",
    "fid": "Frechet distance of the samples' features to the test images' (Heusel et al. "
           "2017), in the feature space named in features (lower is better; not comparable "
           "across feature networks or sample counts)",
    "fid_recon": "the same for the reconstructions of the test images (z = mu, or code h)",
    "kid": "kernel distance (Binkowski et al. 2018): unbiased MMD^2, cubic polynomial kernel, "
           "mean over 100 subsets of 1,000 (kid_std: their standard deviation)",
    "precision": "share of samples inside the test images' feature manifold (k = 3; "
                 "Kynkaanniemi et al. 2019): fidelity",
    "recall": "share of test images inside the samples' manifold (k = 3): diversity",
    "density": "Naeem et al. 2020 (k = 5): about 1 when samples spread as the test images do",
    "coverage": "share of test images whose k = 5 neighbourhood holds a sample (Naeem et al. 2020)",
    "confidence": "the domain classifier's mean top probability on the samples",
    "class_entropy": "entropy of the classes the domain classifier gives the samples, nats "
                     "(log of the class count when all are drawn equally)",
    "class_match": "conditional models: share of samples of class c classified as c",
    "features": "the feature networks of the sample-quality numbers: name, weights hash, "
                "test accuracy, and the counts of samples and test images compared",
    "*_inception": "the same number in Inception v3's 2048 pool features",
    "beta_vae": "datasets with factors: BetaVAE score (Higgins et al. 2017), a logistic "
                "regression's accuracy at telling which factor a batch of 64 pairs shares from "
                "the mean |z1 - z2| (10,000 train, 5,000 eval points; chance 1/K)",
    "factor_vae": "FactorVAE score (Kim & Mnih 2018): majority-vote accuracy of the unit of "
                  "least normalised variance when one factor is fixed (units with std < 0.05 "
                  "pruned; 10,000 train, 5,000 eval votes of 64)",
    "mig": "mutual information gap (Chen et al. 2018): per factor, the gap between the two "
           "units with the most mutual information with it (20-bin histograms of the codes, "
           "10,000 points), over its entropy, averaged",
    "dci_disentanglement": "DCI (Eastwood & Williams 2018) with gradient-boosted trees' "
                           "importances (750 training points, 5,000 test): disentanglement, "
                           "completeness (dci_completeness) and test accuracy "
                           "(dci_informativeness)",
    "sap": "SAP (Kumar et al. 2018): per factor, the gap between the two best units' "
           "linear-SVM accuracies (10,000 train, 5,000 test points), averaged",
    "mutual_info": "(latent units x factors) mutual information in nats behind MIG",
    "auroc_*": "runs trained on some classes (--classes): the area under the ROC curve of "
               "an anomaly score (anomaly.py), the other classes' test images positive; "
               "auprc_*: the average precision; anomaly: per held-out class",
}
TRAIN_IMAGES = 60_000  # train_loss and the probe use at most the first this many training images


def build_parser():
    p = Parser(prog="evaluate.py", description="Metrics and figures for train.py run folders.",
               formatter_class=Help)
    a = p.add_argument
    a("runs", nargs="+", metavar="RUN", help="run folders, globs, or folders holding runs")
    a("--out", default=None, help="folder for figures and table.md (default: <run>/eval for "
      "one run, figures/ for several)")
    a("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    a("--iw-samples", type=int, default=0, help="K of the importance-sampled likelihood (a tighter "
      "bound than the test loss; 1000 for numbers to compare with papers, minutes on a CPU; "
      "default: 0, skipped)")
    a("--fid-samples", type=int, default=10000, help="samples per run for FID, KID, precision "
      "and recall against the test images (0 skips them)")
    a("--inception-weights", default="download", help="Inception v3 for RGB data's FID: "
      "download (torchvision's ImageNet weights, once), a PATH to their state dict (offline; "
      "also for grey data), or none")
    a("--chunk", type=int, default=1024, help="images x samples decoded at once (bounds memory)")
    a("--n", type=int, default=10, help="images per figure row (samples: an n x n grid)")
    a("--seed", type=int, default=0, help="seeds every sample drawn in evaluation")
    a("--weights", default="last", help="last (checkpoint.pt) or best (best.pt, lowest "
      "validation loss; runs with a validation split)")
    a("--partial", action="store_true", help="evaluate a run that has not finished its epochs")
    a("--data-root", default=None, help="dataset folder (default: the run's own --data-root)")
    a("--no-download", dest="download", action="store_false", help="never download datasets")
    a("--no-figures", dest="figures", action="store_false", help="metrics only")
    return p


def find_runs(patterns):
    """Run folders from paths, globs ('runs/vae-*') and folders holding run folders."""
    found = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        matches = [m for m in matches if os.path.isdir(m) or not glob.has_magic(pattern)]
        if not matches:
            raise ValueError(f"{pattern}: no run folder matches it")
        for path in matches:
            inner = sorted(os.path.dirname(c) for c in glob.glob(os.path.join(path, "*", "config.json")))
            found += inner if not os.path.isfile(os.path.join(path, "config.json")) and inner else [path]
    return list(dict.fromkeys(os.path.normpath(f) for f in found))


def load_run(run_dir, weights="last", partial=False, quiet=True):
    """(config, model on the CPU, history rows, epoch, whether the weights are that epoch's)
    from a run folder, or one-line ValueError. quiet=False: notes are printed."""
    if not os.path.isdir(run_dir):
        raise ValueError(f"{run_dir}: no such run folder")
    if not os.path.isfile(os.path.join(run_dir, "config.json")):
        raise ValueError(f"{run_dir}: not a run folder (no config.json); pass a folder written by train.py")
    cfg = saved_config(run_dir)
    if not os.path.isfile(os.path.join(run_dir, "checkpoint.pt")):
        raise ValueError(f"{run_dir}: it stopped before saving anything (no checkpoint.pt); "
                         f"start it again with --out {run_dir} (the folder may be reused) and its "
                         f"flags (config.json, \"command\")")
    ckpt = runs.load_checkpoint(os.path.join(run_dir, "checkpoint.pt"))
    epoch, history = ckpt["epoch"], ckpt["history"]
    if epoch == 0:
        raise ValueError(f"{run_dir}: stopped inside its first epoch, so no epoch has ended to "
                         f"evaluate; finish it with: python train.py --resume {run_dir}")
    if epoch < cfg["epochs"] and not partial:
        raise ValueError(f"{run_dir}: unfinished ({epoch} of {cfg['epochs']} epochs); finish it with "
                         f"python train.py --resume {run_dir}, or pass --partial to evaluate epoch {epoch}")
    logged = weights == "best" or not ckpt.get("mid_epoch")  # else stopped inside an epoch
    if not logged and not quiet:
        print(f"{run_dir}: its last weights are from step {ckpt['mid_epoch']['step']} of epoch "
              f"{epoch + 1}; the logged losses are epoch {epoch}'s")
    if weights == "best" and not any("val_loss" in row for row in history):  # no validation split
        raise ValueError(f"{run_dir} has no validation split (--val-split): its weights are "
                         f"not chosen (a best.pt of an older version was chosen on the test "
                         f"split); train with --val-split 0.1 (say) to have best weights")
    if weights == "best":
        ckpt = runs.load_checkpoint(os.path.join(run_dir, "best.pt"))
    model = models.from_config(cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError) as e:
        lines = [line.strip() for line in str(e).strip().splitlines()]
        first = (lines[1] if len(lines) > 1 else lines[0])[:140]  # line 0 is a header
        raise ValueError(f"{run_dir}: the checkpoint does not match config.json ({first}); "
                         f"the folder mixes two runs") from None
    return cfg, model, history, ckpt["epoch"], logged


def test_inputs(split, cfg, n=None):
    """(input, target, label) of the first n test images (all if n is None), as in the test loss."""
    images, labels = split if n is None else (split[0][:n], split[1][:n])
    parts = list(zip(*data.eval_batches((images, labels), cfg["output"],
                                        data.parse_noise(cfg["noise"]))))
    return [torch.cat(p) for p in parts]


@torch.no_grad()
def codes_of(model, split, cfg):
    return torch.cat([model.latent(x, y) for x, _, y in data.eval_batches(
        split, cfg["output"], data.parse_noise(cfg["noise"]))])


def curves(figures, histories, path, kinds):
    """loss_curves.png (the loss and the objective's terms) and, when the runs logged any,
    training_internals.png (gradient norms, the discriminator's numbers, skipped steps)."""
    main, internal = figures.split_terms(figures.history_terms(histories))
    figures.loss_curves(histories, path("loss_curves.png"), main, kinds=kinds)
    if internal:
        figures.loss_curves(histories, path("training_internals.png"), internal)


def duration(seconds):
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


@torch.no_grad()
def measure(model, cfg, splits, args, history, epoch):
    """Every metric of one run (see UNITS), as plain numbers and lists; the test codes; and
    per test image what the anomaly scores reuse ({"nll_iw": (N,)} when measured)."""
    torch.manual_seed(args.seed)
    noise = data.parse_noise(cfg["noise"])
    test = metrics.test_loss(model, splits["test"], cfg["output"], noise)
    some_train = (splits["train"][0][:TRAIN_IMAGES], splits["train"][1][:TRAIN_IMAGES])
    m = {"test_loss": test["loss"], "train_loss": metrics.test_loss(model, some_train, cfg["output"], noise)["loss"]}
    m["gap"] = m["test_loss"] - m["train_loss"]
    row = next(r for r in history if int(r["epoch"]) == epoch)  # the weights' epoch
    m["history_train_loss"], m["history_test_loss"] = float(row["train_loss"]), float(row["test_loss"])
    m.update({k: v for k, v in test.items() if k.startswith("acc_")})
    k = args.iw_samples if model.likelihood else 0  # a model with a decoder's likelihood
    sums, codes, kl_dims, per_image = {}, [], [], {}
    n_test, t0, done, announced = splits["test"][0].shape[0], time.perf_counter(), 0, False
    for x, target, y in data.eval_batches(splits["test"], cfg["output"], noise):
        code = model.latent(x, y)  # mu, or the AE's code h
        codes.append(code)
        kl = model.kl_per_dim(x, y)  # None: no posterior (an AE)
        if kl is not None:
            kl_dims.append(kl)
        clean = data.to_unit(target, cfg["output"])
        rec = data.to_unit(model.generate(code, y), cfg["output"])  # z = mu
        per = {"mse": (rec - clean).pow(2).flatten(1).mean(1), "psnr": metrics.psnr(rec, clean)}
        if noise is not None:
            per["psnr_noisy"] = metrics.psnr(data.to_unit(x, cfg["output"]), clean)
        if k:
            b, parts = max(1, args.chunk // k), []
            for xs, ts, ys in zip(x.split(b), target.split(b), y.split(b)):
                parts.append(metrics.importance_sampled(model, xs, ts, k, args.chunk, ys))
                spent = time.perf_counter() - t0
                if not announced and (spent > 1 or done + b * len(parts) >= n_test):
                    rate = (done + sum(p["nll_iw"].shape[0] for p in parts)) / spent
                    print(f"  the likelihood with K = {k} importance samples: about "
                          f"{duration(n_test / rate)} for the {n_test:,} test images "
                          f"({rate:,.0f} images/s)", flush=True)
                    announced = True
            per.update({key: torch.cat([p[key] for p in parts]) for key in ("nll_iw", "recon", "recon_var")})
            per_image.setdefault("nll_iw", []).append(per["nll_iw"])
        for key, v in per.items():
            sums[key] = sums.get(key, 0) + v.double().sum()
        done += x.shape[0]
        if k and done < n_test:
            rate = done / (time.perf_counter() - t0)
            print(f"  {done:,}/{n_test:,} test images, {rate:,.0f} images/s, about "
                  f"{duration((n_test - done) / rate)} left", flush=True)
    seconds = time.perf_counter() - t0
    for key in ("mse", "psnr", "psnr_noisy", "nll_iw", "recon"):
        if key in sums:
            m[key] = sums[key].item() / n_test
    codes = torch.cat(codes)
    if kl_dims:
        kl_dims = torch.cat(kl_dims).mean(0)
        m["kl"], m["kl_per_dim"] = kl_dims.sum().item(), kl_dims.tolist()
        m["active_units"], variance = metrics.active_units(codes)
        m["code_variance"] = variance.tolist()
    if k:
        m["likelihood"] = model.likelihood
        m["nelbo"] = m["recon"] + m["kl"]
        m["nelbo_se"] = math.sqrt(sums["recon_var"].item() / k) / n_test
        pixels = math.prod(cfg["image_shape"])
        m["likelihood_constant"] = metrics.likelihood_constant(model.likelihood, model.c, pixels)
        m["bits_per_dim"] = metrics.bits_per_dim(m["nll_iw"], model.likelihood, model.c, pixels,
                                                 cfg["output"])
        m["iw_samples"], m["iw_seconds"] = k, round(seconds, 2)
        m["iw_images_per_second"] = round(n_test / seconds, 1)
    kept = data.kept_classes(cfg)
    if cfg["num_classes"] and (kept is None or len(kept) > 1):  # nothing to probe with one class
        test_y = splits["test"][1]  # with --classes: the test images of those classes
        of_kept = torch.ones_like(test_y, dtype=torch.bool) if kept is None else torch.isin(
            test_y, torch.tensor(kept, device=test_y.device))
        m["probe_accuracy"] = metrics.linear_probe(codes_of(model, some_train, cfg), some_train[1],
                                                   codes[of_kept], test_y[of_kept])
    return m, codes, {k: torch.cat(v) for k, v in per_image.items()}


@torch.no_grad()
def factor_metrics(model, cfg, splits, seed=0):
    """BetaVAE, FactorVAE, MIG, DCI and SAP (disentanglement.py) of the model's code (z = mu,
    or the AE's h) on a dataset with factors. The code of every image of the grid is
    computed once (batches of 1,000), so the metrics' millions of draws are look-ups."""
    truth = data.ground_truth(cfg["dataset"], splits)
    t0, count = time.perf_counter(), math.prod(truth.factor_sizes)
    positions = torch.arange(count, device=splits["train"][0].device)
    table = torch.cat([model.latent(data.to_range(truth.sprites.at(p).float() / 255, cfg["output"]),
                                    truth.labels_of(p))  # a conditional model's label: the shape
                       for p in positions.split(1000)])  # (grid size, D)
    print(f"  factors: the codes of all {count:,} images of the grid in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)

    # the grid as the metrics see it: an "image" is its grid position, its code a look-up
    positions = types.SimpleNamespace(factor_sizes=truth.factor_sizes, images=truth.index_of,
                                      sample_factors=truth.sample_factors)
    found = disentanglement.evaluate_all(lambda index: table[index.to(table.device)], positions, seed)
    print(f"  disentanglement metrics in {time.perf_counter() - t0:.0f} s (MIG {found['mig']:.3f})",
          flush=True)
    return {**{k: v for k, v in found.items() if not k.startswith("seconds_")},
            "mutual_info": found["mutual_info"].tolist(), "factor_entropy": found["factor_entropy"].tolist(),
            "importance": found["importance"].tolist(), "factor_names": truth.factor_names,
            "factor_seconds": round(time.perf_counter() - t0, 1)}


@torch.no_grad()
def draw(model, cfg, split, m, codes, history, name, out, args):
    """The figures of one run, into folder `out`."""
    n, gen = args.n, torch.Generator().manual_seed(args.seed)
    x, target, y = test_inputs(split, cfg, 2 * n)
    clean = data.to_unit(target, cfg["output"])
    recon = data.to_unit(model.reconstruct(x, y), cfg["output"])
    path = lambda f: os.path.join(out, f)  # noqa: E731
    code = model.CODE
    figures.reconstructions(clean[:n], {name: recon[:n]}, path("reconstructions.png"),
                            f"{name}: test images and their reconstructions ({code})")
    if cfg["noise"]:
        figures.denoising(data.to_unit(x, cfg["output"])[:n], recon[:n], clean[:n], path("denoising.png"))
    figures.latent_scatter(codes, split[1], path("latent.png"), f"{name}: test codes ({code})",
                           cfg.get("classes"))
    pairs = min(4, x.shape[0] // 2)
    figures.interpolations(model, x[:pairs], x[-pairs:], n, path("interpolation.png"),
                           "kl_per_dim" in m,  # slerp too, for a Gaussian prior's codes
                           y[:pairs], y[-pairs:], f"{name}: interpolation between the codes of "
                           f"two test images ({code})", (clean[:pairs], clean[-pairs:]))
    classes = cfg.get("classes")
    sampled = figures.samples(model, n, path("samples.png"), f"{name}: samples from the prior",
                              gen, classes)  # None: no prior (an AE)
    if cfg["latent_dim"] == 2 and model.default_labels(1) is None:  # (a CVAE: one per class)
        figures.manifold(model, n, path("manifold.png"), f"{name}: decodes over a grid of the "
                         f"code (covering 99% of the test codes)", codes, y[:1])
    center, spread = codes.mean(0).cpu(), codes.std(0).cpu()  # walk each unit over its test spread
    order = spread.argsort(descending=True)[:min(8, len(spread))].tolist()
    rows = [f"{model.UNIT}{d + 1} (sd {spread[d]:.2f})" for d in order]
    if "kl_per_dim" in m:
        figures.kl_bars({name: torch.tensor(m["kl_per_dim"])}, path("kl_per_dim.png"))
    if "mutual_info" in m:  # a dataset with factors: name each traversed unit by its factor
        share = torch.tensor(m["mutual_info"]) / torch.tensor(m["factor_entropy"]).clamp_min(1e-12)
        rows = [f"{r}: {m['factor_names'][share[d].argmax()]} ({share[d].max():.2f})"
                for r, d in zip(rows, order)]
        figures.factor_heatmap(m["mutual_info"], m["factor_entropy"], m["factor_names"],
                               path("factors.png"), f"{name}: mutual information of each unit "
                               f"({code}) with each factor, over the factor's entropy",
                               model.UNIT)
    device = x.device
    figures.traversal(model, x, order, center.to(device), spread.to(device), n,
                      path("traversal.png"), f"{name}: one dimension at a time, in "
                      f"standard deviations of the test codes", rows, y[:1], clean)
    curves(figures, {name: history}, path, {name: model.LOSS})
    return clean[:n], recon[:n], sampled  # for the side-by-side figures of several runs


def check_writable(paths):
    """ValueError unless each path (a folder, made if missing) can be written: found before
    any work, not after it (metrics.json goes into each run folder, figures into --out)."""
    for path in paths:
        if os.path.exists(path) and not os.path.isdir(path):
            raise ValueError(f"--out {path} is a file; choose a folder")
        parent = os.path.abspath(path)
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ValueError(f"cannot write to {parent}: permission denied; "
                             + ("pass --out a writable folder" if parent != os.path.abspath(path)
                                or not os.path.isfile(os.path.join(path, "config.json")) else
                                "copy the run folder somewhere writable and evaluate the copy"))


def read_history(run_dir, fallback):
    """history.csv's rows; the checkpoint's copy (fallback) when the file is missing or
    damaged (not UTF-8, no rows, no epoch column), with a note."""
    path = os.path.join(run_dir, "history.csv")
    if not os.path.isfile(path):
        return fallback
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if rows and all(r.get("epoch", "").isdigit() for r in rows):
            return rows
    except (OSError, UnicodeDecodeError, csv.Error):
        pass
    print(f"{path} is damaged; the loss curves use the checkpoint's copy of the history")
    return fallback


def main(argv=None):
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        for flag, value, low, high in (("--iw-samples", args.iw_samples, 0, 100_000),
                                       ("--chunk", args.chunk, 1, 65_536), ("--n", args.n, 1, 100),
                                       ("--fid-samples", args.fid_samples, 0, 1_000_000)):
            if not low <= value <= high:  # above high: hours of work, or a figure of gigabytes
                raise ValueError(f"{flag} must be in [{low}, {high}], got {value}")
        if 0 < args.fid_samples < 10:
            raise ValueError(f"--fid-samples must be 0 (skipped) or at least 10, got {args.fid_samples}")
        if args.weights not in ("last", "best"):
            raise ValueError(f"unknown --weights {args.weights!r}; use last or best")
        device = pick_device(args.device)
        dirs = find_runs(args.runs)
        for d in dirs:  # every run checked before any work; each loaded again when its turn comes
            load_run(d, args.weights, args.partial)
        out = args.out or (os.path.join(dirs[0], "eval") if len(dirs) == 1 else "figures")
        check_writable(dirs + [out])
    except ValueError as e:
        print(f"evaluate.py: error: {e}", file=sys.stderr)
        return 2
    names = [os.path.basename(d) for d in dirs]
    names = [f"{nm}-{i + 1}" if names.count(nm) > 1 else nm for i, nm in enumerate(names)]
    print(f"Device: {device}; {len(dirs)} run(s); figures in {out}")
    if args.iw_samples == 0:
        print("The importance-sampled likelihood (nll_iw) is skipped by default; --iw-samples "
              "1000 adds it (minutes on a CPU)")
    try:
        evaluate(dirs, names, out, device, args)
    except ValueError as e:  # a data set that cannot be read, a run that changed meanwhile
        print(f"evaluate.py: error: {e}", file=sys.stderr)
        return 2
    except torch.OutOfMemoryError:
        print(f"evaluate.py: error: out of memory on {device}; lower --chunk (now {args.chunk}), "
              f"or use --device cpu", file=sys.stderr)
        return 1
    except (runs.DiskFull, OSError) as e:
        if not isinstance(e, runs.DiskFull) and not runs.full_disk(e):
            raise
        print(f"evaluate.py: error: no space left on device ({e}); free some space and run it "
              f"again", file=sys.stderr)
        return 1
    return 0


def evaluate(dirs, names, out, device, args):
    """Measure each run in turn (one model in memory at a time), write its metrics.json and
    figures; then the comparison figures and the table."""
    splits, identities, rows, recons, histories, kls, configs = {}, {}, [], {}, {}, {}, {}
    spaces = {}  # dataset key: the feature spaces of its sample-quality metrics
    samples = {}  # dataset: {run: images}, for the side-by-side samples figure
    kinds_of = {}  # run: what its "loss" is
    for name, run_dir in zip(names, dirs):
        cfg, model, history, epoch, logged = load_run(run_dir, args.weights, args.partial, False)
        kept = data.kept_classes(cfg)  # trained on some classes: its splits are built as then
        key = (cfg["dataset"], args.data_root or cfg["data_root"], cfg["image_size"],
               cfg["channels"], cfg["val_split"], None if kept is None else tuple(kept))
        load = lambda keep: data.load(  # noqa: E731
            cfg["dataset"], key[1], device, args.download, size=cfg["image_size"],
            channels=cfg["channels"], skip_bad=cfg["skip_bad_images"], val_split=cfg["val_split"],
            keep=keep)
        if key not in splits:
            splits[key] = load(kept)
            identities[key] = data.identity(splits[key])
        if cfg.get("data") not in (None, identities[key]):
            print(f"{run_dir}: warning: the data under {key[1]} are not those it was trained "
                  f"on (their sizes or hash differ); its numbers are on these data")
        model.to(device).eval()
        print(f"{run_dir}: {cfg['model']} on {cfg['dataset']}, epoch {epoch} ({args.weights} weights)", flush=True)
        m, codes, per_image = measure(model, cfg, splits[key], args, history, epoch)
        if kept is not None:  # trained on some classes: the others are the anomalies
            folder = out if len(dirs) == 1 else os.path.join(out, name)
            m.update(anomaly.detect(model, cfg, splits[key], codes, codes_of(
                model, (splits[key]["train"][0][:TRAIN_IMAGES], splits[key]["train"][1][:TRAIN_IMAGES]),
                cfg), per_image, kept, run_dir, folder if args.figures else None, name, args.n))
        if data.ground_truth(cfg["dataset"], splits[key]) is not None:
            if model.latent_dim < 2:  # MIG and SAP compare a factor's two best units
                print(f"{run_dir}: a code of one unit: no disentanglement metrics")
            else:
                m.update(factor_metrics(model, cfg, splits[key], args.seed))
        if args.fid_samples and key not in spaces:  # a domain network learns every class
            spaces[key] = features.spaces_for(cfg, splits[key] if kept is None else load(None),
                                              key[1], device, args.inception_weights)
        if args.fid_samples and spaces[key]:
            m.update(features.sample_quality(model, cfg, splits[key]["test"], spaces[key],
                                    args.fid_samples, args.seed))
        if logged and abs(m["test_loss"] - m["history_test_loss"]) > 0.05 * abs(m["history_test_loss"]) + 1:
            print(f"{run_dir}: warning: its test loss now is {m['test_loss']:.2f}, but "
                  f"{m['history_test_loss']:.2f} was logged at epoch {epoch}: other data under "
                  f"{key[1]}, or other weights than the logged epoch's?")
        m = {"run": run_dir, "model": cfg["model"], "dataset": cfg["dataset"], "epoch": epoch,
             "weights": args.weights, "seed": args.seed, **m, "units": UNITS}
        name_json = "metrics.json" if args.weights == "last" else "metrics_best.json"
        runs.atomic_save(json.dumps(m, indent=2) + "\n", os.path.join(run_dir, name_json))
        rows.append((name, m))
        configs[name] = cfg
        kinds_of[name] = model.LOSS
        histories[name], kls[name] = read_history(run_dir, history), m.get("kl_per_dim")
        if args.figures:
            folder = out if len(dirs) == 1 else os.path.join(out, name)
            os.makedirs(folder, exist_ok=True)
            clean, recon, sampled = draw(model, cfg, splits[key]["test"], m, codes,
                                         histories[name], name, folder, args)
            recons.setdefault(cfg["dataset"], (clean, {}))[1][name] = recon
            if sampled is not None:
                samples.setdefault(cfg["dataset"], {})[name] = sampled
        del model, codes  # one run's model in memory at a time
    os.makedirs(out, exist_ok=True)
    if args.figures and len(dirs) > 1:
        for dataset, (originals, by_run) in recons.items():
            suffix = "" if len(recons) == 1 else f"_{dataset}"
            figures.reconstructions(originals, by_run, os.path.join(out, f"reconstructions{suffix}.png"),
                                    "test images and each run's reconstructions (VAEs: z = μ; AEs: code h)")
        for dataset, by_run in samples.items():
            suffix = "" if len(samples) == 1 else f"_{dataset}"
            figures.image_rows(list(by_run.values()), [figures.short(r) for r in by_run],
                               os.path.join(out, f"samples{suffix}.png"), "samples from the prior, "
                               "one row per run (the same z in runs of one latent size)")
        for dataset in dict.fromkeys(c["dataset"] for c in configs.values()):  # no shared axes
            mine = {k: h for k, h in histories.items() if configs[k]["dataset"] == dataset}
            suffix = "" if len(mine) == len(histories) else f"_{dataset.replace(':', '-').replace('/', '-')}"
            curves(figures, mine, lambda f: os.path.join(out, f.replace(".png", suffix + ".png")),
                   {k: kinds_of[k] for k in mine})
        if any(kl is not None for kl in kls.values()):
            figures.kl_bars({k: v for k, v in kls.items() if v is not None}, os.path.join(out, "kl_per_dim.png"))
        grouped = groups(rows, configs)
        if any(len(names) > 1 for names in grouped.values()):  # a mean line and a band per group
            figures.loss_curves(histories, os.path.join(out, "loss_curves_groups.png"),
                                groups={label(s): names for s, names in grouped.items()})
    text = table(rows)
    grouped = group_table(rows, configs)
    text += f"\n\n{grouped}" if grouped else ""
    runs.atomic_save(text + "\n", os.path.join(out, "table.md"))
    print(text)


if __name__ == "__main__":
    sys.exit(main())
