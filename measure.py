"""One run's metrics.json (but the anomaly scores, anomaly.py, and the sample quality,
features.py): UNITS says what each number means, measure and factor_metrics measure them
on the inputs the test loss saw (--noise runs: the corrupted images, fixed seed), and
save_metrics writes the file."""
import json
import math
import os
import time
import types

import sklearn
import torch

import data
import disentanglement
import metrics
import runs

UNITS = {  # what each number of metrics.json means, and its unit (written into the file)
    "test_loss": "the test loss as train.py prints it (VAE: negative ELBO, z sampled once; AE: "
        "reconstruction term; VAE-GAN: recon with z = mu, plus KL), per image",
    "train_loss": "the same quantity on the training split, in evaluation mode",
    "eval_seed": "evaluate.py --seed: every random draw of the evaluation (z, samples, the samplers' fits, "
        "the FID/KID draws, the disentanglement metrics' points)",
    "train_seed": "train.py's --seed of this run (config.json's seed)",
    "gap": "test_loss - train_loss",
    "history_train_loss": "the training objective train.py logged for this epoch",
    "history_test_loss": "the test loss train.py logged for this epoch",
    "nelbo": "negative ELBO, nats per image, reconstruction averaged over the K samples",
    "code_variance": "Cov_x(E_q[z_d]) of each dimension over the test split",
    "nelbo_se": "sampling standard error of nelbo", "recon": "reconstruction term of nelbo",
    "kl": "KL(q(z|x) || p(z)), nats per image",
    "nll_iw": "importance-sampled negative log-likelihood with K samples (Burda et al. 2016), nats per "
        "image, same constant as the test loss; for a conditional model (cvae) -log p(x | y) given the "
        "label, not comparable with -log p(x)",
    "likelihood_constant": "nats per image to add to nll_iw and nelbo for the full -log p(x) (Gaussian "
        "and mse decoders)",
    "likelihood": "the decoder's distribution behind nll_iw: bce (Bernoulli on grey levels), gaussian "
        "or mse",
    "bits_per_dim": "nll_iw in bits per dimension (see metrics.bits_per_dim); for a bce (Bernoulli) "
        "decoder a cross-entropy on grey levels, not a likelihood of pixel values: comparable with "
        "other bce numbers only",
    "mse": "reconstruction mean squared error per pixel on [0, 1] pixels (z = mu)",
    "psnr": "mean over test images of 10 log10(1 / MSE), dB",
    "psnr_noisy": "--noise runs: PSNR of the corrupted input against the clean image, dB",
    "kl_per_dim": "KL of each latent dimension, nats per image",
    "active_units": "dimensions with Cov_x(E_q[z_d]) > 0.01 (Burda et al. 2016)",
    "probe_accuracy": "test accuracy of a logistic regression on the train split's codes",
    "acc_real": "VAE-GAN: fraction of test images D calls real",
    "acc_rec": "VAE-GAN: fraction of reconstructions D calls fake",
    "acc_prior": "VAE-GAN: fraction of prior samples D calls fake",
    "fid": "Frechet distance of the samples' features to the test images' (Heusel et al. 2017), in the "
        "feature space named in features (lower is better; not comparable across feature networks or "
        "sample counts)",
    "fid_recon": "the same for the reconstructions of the test images (z = mu, or code h)",
    "kid": "kernel distance (Binkowski et al. 2018): unbiased MMD^2, cubic polynomial kernel, mean "
        "over 100 subsets of 1,000 (kid_std: their standard deviation)",
    "precision": "share of samples inside the test images' feature manifold (k = 3; Kynkaanniemi et "
        "al. 2019): fidelity",
    "recall": "share of test images inside the samples' manifold (k = 3): diversity",
    "density": "Naeem et al. 2020 (k = 5): about 1 when samples spread as the test images do",
    "coverage": "share of test images whose k = 5 neighbourhood holds a sample (Naeem et al. 2020)",
    "confidence": "the domain classifier's mean top probability on the samples",
    "class_entropy": "entropy of the classes the domain classifier gives the samples, nats (log of the "
        "class count when all are drawn equally)",
    "class_match": "conditional models: share of samples of class c classified as c",
    "features": "the feature networks of the sample-quality numbers: name, weights hash, test "
        "accuracy, and the counts of samples and test images compared",
    "*_inception": "the same number in Inception v3's 2048 pool features",
    "*_gmm, *_two_stage": "the same sample numbers for evaluate.py --sampler gmm (a Gaussian mixture fitted "
        "to the training codes) or two-stage (a second VAE on them): samplers.py; unsuffixed: the prior's",
    "beta_vae": "datasets with factors: BetaVAE score (Higgins et al. 2017), a logistic regression's "
        "accuracy at telling which factor a batch of 64 pairs shares from the mean |z1 - z2| (10,000 "
        "train, 5,000 eval points; chance 1/K)",
    "factor_vae": "FactorVAE score (Kim & Mnih 2018): majority-vote accuracy of the unit of least "
        "normalised variance when one factor is fixed (units with std < 0.05 pruned; 10,000 train, "
        "5,000 eval votes of 64)",
    "mig": "mutual information gap (Chen et al. 2018): per factor, the gap between the two units with "
        "the most mutual information with it (20-bin histograms of the codes, 10,000 points), over its "
        "entropy, averaged",
    "dci_disentanglement": "DCI (Eastwood & Williams 2018) with gradient-boosted trees' importances "
        "(750 training points, 5,000 test): disentanglement, completeness (dci_completeness) and test "
        "accuracy (dci_informativeness)",
    "sap": "SAP (Kumar et al. 2018): per factor, the gap between the two best units' linear-SVM "
        "accuracies (10,000 train, 5,000 test points), averaged",
    "mutual_info": "(latent units x factors) mutual information in nats behind MIG",
    "auroc_*": "runs trained on some classes (--classes): the area under the ROC curve of an anomaly "
        "score (anomaly.py), the other classes' test images positive; auprc_*: the average precision; "
        "anomaly: per held-out class",
}
TRAIN_IMAGES = 60_000  # train_loss and the probe use at most the first this many training images


def some_train(splits):
    """The training images and labels train_loss and the probe use."""
    return splits["train"][0][:TRAIN_IMAGES], splits["train"][1][:TRAIN_IMAGES]


def test_inputs(split, output, noise, n=None):
    """(input, target, label) of the first n test images (all if n is None), as in the test loss; noise:
    --noise's words."""
    images, labels = split if n is None else (split[0][:n], split[1][:n])
    parts = zip(*data.eval_batches((images, labels), output, data.parse_noise(noise)))
    return [torch.cat(p) for p in parts]


@torch.no_grad()
def codes_of(model, split, output, noise):
    return torch.cat([model.latent(x, y) for x, _, y in data.eval_batches(split, output, data.parse_noise(noise))])


def duration(seconds):
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


@torch.no_grad()
def measure(model, cfg, splits, args, history, epoch):
    """Every metric of one run (see UNITS), as plain numbers and lists; the test codes; and
    per test image what the anomaly scores reuse ({"nll_iw": (N,)} when measured)."""
    torch.manual_seed(args.seed)
    noise, train, n_test = data.parse_noise(cfg["noise"]), some_train(splits), splits["test"][0].shape[0]
    test = metrics.test_loss(model, splits["test"], cfg["output"], noise)
    m = {"test_loss": test["loss"], "train_loss": metrics.test_loss(model, train, cfg["output"], noise)["loss"]}
    m["gap"] = m["test_loss"] - m["train_loss"]
    row = next(r for r in history if int(r["epoch"]) == epoch)  # the weights' epoch
    m["history_train_loss"], m["history_test_loss"] = float(row["train_loss"]), float(row["test_loss"])
    m.update({k: v for k, v in test.items() if k.startswith("acc_")})
    k = args.iw_samples if model.likelihood else 0  # a model with a decoder's likelihood
    sums, codes, kl_dims, nll_iw, seconds = test_pass(model, cfg, splits["test"], k, args.chunk)
    m.update({key: sums[key].item() / n_test for key in ("mse", "psnr", "psnr_noisy", "nll_iw", "recon")
              if key in sums})
    if kl_dims:
        kl_dims = torch.cat(kl_dims).mean(0)
        m["kl"], m["kl_per_dim"] = kl_dims.sum().item(), kl_dims.tolist()
        m["active_units"], variance = metrics.active_units(codes)
        m["code_variance"] = variance.tolist()
    if k:
        pixels = math.prod(cfg["image_shape"])
        m.update(likelihood=model.likelihood, nelbo=m["recon"] + m["kl"],
                 nelbo_se=math.sqrt(sums["recon_var"].item() / k) / n_test,
                 likelihood_constant=metrics.likelihood_constant(model.likelihood, model.c, pixels),
                 bits_per_dim=metrics.bits_per_dim(m["nll_iw"], model.likelihood, model.c, pixels,
                                                   cfg["output"]),
                 iw_samples=k, iw_seconds=round(seconds, 2), iw_images_per_second=round(n_test / seconds, 1))
    kept = data.kept_classes(cfg)
    if cfg["num_classes"] and (kept is None or len(kept) > 1):  # nothing to probe with one class
        test_y = splits["test"][1]  # with --classes: the test images of those classes
        of_kept = torch.ones_like(test_y, dtype=torch.bool) if kept is None else torch.isin(
            test_y, torch.tensor(kept, device=test_y.device))
        m["probe_accuracy"] = metrics.linear_probe(codes_of(model, train, cfg["output"], cfg["noise"]), train[1],
                                                   codes[of_kept], test_y[of_kept])
    return m, codes, {"nll_iw": torch.cat(nll_iw)} if nll_iw else {}


def test_pass(model, cfg, split, k, chunk):
    """One pass over the test split: the sums of the per-image numbers, the codes, each batch's
    KL per dimension and nll_iw (K = k importance samples, with notes on their time), and the
    seconds it took."""
    noise, n_test, t0 = data.parse_noise(cfg["noise"]), split[0].shape[0], time.perf_counter()
    sums, codes, kl_dims, nll_iw, done, announced = {}, [], [], [], 0, False
    for x, target, y in data.eval_batches(split, cfg["output"], noise):
        code = model.latent(x, y)  # mu, or the AE's code h
        codes.append(code)
        kl = model.kl_per_dim(x, y)  # None: no posterior (an AE)
        kl_dims += [] if kl is None else [kl]
        clean = data.to_unit(target, cfg["output"])
        rec = data.to_unit(model.generate(code, y), cfg["output"])  # z = mu
        per = {"mse": (rec - clean).pow(2).flatten(1).mean(1), "psnr": metrics.psnr(rec, clean)}
        if noise is not None:
            per["psnr_noisy"] = metrics.psnr(data.to_unit(x, cfg["output"]), clean)
        if k:
            parts = []
            for xs, ts, ys in zip(*(t.split(max(1, chunk // k)) for t in (x, target, y))):
                parts.append(metrics.importance_sampled(model, xs, ts, k, chunk, ys))
                so_far, spent = done + sum(p["nll_iw"].shape[0] for p in parts), time.perf_counter() - t0
                if not announced and (spent > 1 or so_far >= n_test):  # a first estimate of its time
                    print(f"  the likelihood with K = {k} importance samples: about "
                          f"{duration(n_test / (so_far / spent))} for the {n_test:,} test images "
                          f"({so_far / spent:,.0f} images/s)", flush=True)
                    announced = True
            per.update({key: torch.cat([p[key] for p in parts]) for key in ("nll_iw", "recon", "recon_var")})
            nll_iw.append(per["nll_iw"])
        for key, v in per.items():
            sums[key] = sums.get(key, 0) + v.double().sum()
        done += x.shape[0]
        if k and done < n_test:
            rate = done / (time.perf_counter() - t0)
            print(f"  {done:,}/{n_test:,} test images, {rate:,.0f} images/s, about "
                  f"{duration((n_test - done) / rate)} left", flush=True)
    return sums, torch.cat(codes), kl_dims, nll_iw, time.perf_counter() - t0


@torch.no_grad()
def factor_metrics(model, cfg, splits, seed=0, mig_code="mean", mig_factors=None):
    """BetaVAE, FactorVAE, MIG, DCI and SAP (disentanglement.py) of the model's code (z = mu,
    or the AE's h) on a dataset with factors; MIG of mig_code "mean" (disentanglement_lib's) or
    "sample" (one draw of q(z|x) per image), over the factors named in mig_factors (default: all). The
    code of every image of the grid is computed once (batches of 1,000), so the metrics' millions of
    draws are look-ups."""
    truth = data.ground_truth(cfg["dataset"], splits)
    t0, count = time.perf_counter(), math.prod(truth.factor_sizes)
    positions = torch.arange(count, device=splits["train"][0].device)
    names = truth.factor_names if mig_factors is None else mig_factors
    unknown = [f for f in names if f not in truth.factor_names]
    if unknown:
        raise ValueError(f"--mig-factors {','.join(names)}: {unknown[0]} is not a factor of {cfg['dataset']} "
                         f"({', '.join(truth.factor_names)})")

    def codes(encode):  # (grid size, D); a conditional model's label: the shape
        return torch.cat([encode(data.to_range(truth.sprites.at(p).float() / 255, cfg["output"]), truth.labels_of(p))
                          for p in positions.split(1000)])
    table = codes(model.latent)
    torch.manual_seed(seed)  # the draws of q(z|x) of mig_code "sample"
    mig_table = table if mig_code == "mean" else codes(model.posterior_sample)
    print(f"  factors: the codes of all {count:,} images of the grid in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    # the grid as the metrics see it: an "image" is its grid position, its code a look-up
    grid = types.SimpleNamespace(factor_sizes=truth.factor_sizes, images=truth.index_of,
                                 sample_factors=truth.sample_factors)
    found = disentanglement.evaluate_all(lambda index: table[index.to(table.device)], grid, seed,
                                         mig_represent=lambda index: mig_table[index.to(table.device)],
                                         mig_factors=[truth.factor_names.index(f) for f in names])
    print(f"  disentanglement metrics in {time.perf_counter() - t0:.0f} s (MIG {found['mig']:.3f})",
          flush=True)
    return {**{k: v for k, v in found.items() if not k.startswith("seconds_")},
            **{k: found[k].tolist() for k in ("mutual_info", "factor_entropy", "importance")},
            "factor_names": list(names), "factor_seconds": round(time.perf_counter() - t0, 1),
            "mig_conventions": {"code": mig_code, "factors": list(names), "bins": 20, "points": 10000,
                                "estimator": "disentanglement_lib's discrete MIG: plug-in mutual information "
                                             "(sklearn mutual_info_score) of equal-width bins",
                                "sklearn": sklearn.__version__}}


def save_metrics(m, run_dir, cfg, epoch, logged, root, args):
    """metrics.json (metrics_best.json with --weights best) in the run folder, with a warning
    when the test loss is not the logged one; returns what it wrote."""
    if logged and abs(m["test_loss"] - m["history_test_loss"]) > 0.05 * abs(m["history_test_loss"]) + 1:
        print(f"{run_dir}: warning: its test loss now is {m['test_loss']:.2f}, but "
              f"{m['history_test_loss']:.2f} was logged at epoch {epoch}: other data under "
              f"{root}, or other weights than the logged epoch's?")
    m = {"run": run_dir, "model": cfg["model"], "dataset": cfg["dataset"], "epoch": epoch,
         "weights": args.weights, "eval_seed": args.seed, "train_seed": cfg["seed"], **m, "units": UNITS}
    name = "metrics.json" if args.weights == "last" else "metrics_best.json"
    runs.atomic_save(json.dumps(m, indent=2) + "\n", os.path.join(run_dir, name))
    return m


def autoencoder_measures(cfg, model, data_root):
    """reproduce.py's autoencoders experiment, on the MNIST test split: PSNR of the input and of the
    reconstruction (dB, [0, 1] pixels, code h or z = mu), the fraction of code activations |h_j| < 1e-2
    (the VAE's: of mu), and the exact ||dh/dx||_F per image (autograd through latent(); PCA's: sqrt(latent
    size))."""
    model.eval()
    test = data.load("mnist", data_root, "cpu", download=False)["test"]
    found = {"PSNR input dB": [], "PSNR output dB": [], "codes below 1e-2": [], "Jacobian norm": []}
    for x, target, y in data.eval_batches(test, noise=data.parse_noise(cfg["noise"]),
                                          batch_size=500):
        with torch.no_grad():
            found["PSNR input dB"].append(metrics.psnr(x, target))
            found["PSNR output dB"].append(metrics.psnr(model.reconstruct(x, y), target))
            found["codes below 1e-2"].append((model.latent(x, y).abs() < 1e-2).float().flatten())
        jac = torch.func.vmap(torch.func.jacrev(lambda xi: model.latent(xi[None])[0]))(x)
        found["Jacobian norm"].append(jac.flatten(1).norm(dim=1))
    return {k: torch.cat(v).mean().item() for k, v in found.items()
            if k != "PSNR input dB" or cfg["noise"]}
