"""Evaluation metrics as functions of a model and tensors; evaluate.py runs them on run folders.

Units (GUIDE.md, "Units"): likelihood terms in nats per image, summed over pixels and latent
dimensions; reconstruction MSE and PSNR on [0, 1] pixels, whatever the model's scaling.
"""
import math

import numpy as np
import scipy.stats
import sklearn.metrics
import torch

import data
import losses
import parallel

LOG_2PI = math.log(2 * math.pi)


@torch.no_grad()
def test_loss(model, split, output, noise, copy_to=None):
    """The model's test_loss over a split, per image: the VAE's negative ELBO (z sampled),
    the AE's reconstruction term, without beta or penalties. Batches of 1000 whatever the
    processes, so the fixed-seed test noise is the same; under torchrun, process r takes
    batches r, r + N, ... and the sums are added up. output: sigmoid or tanh (data.to_range);
    copy_to: see data.batches."""
    model.eval()
    sums, names = 0, None
    rank, processes, _ = parallel.world()
    for i, (x, target, y) in enumerate(data.eval_batches(
            split, output, noise, copy_to)):
        if i % processes == rank:
            out = model.test_loss(x, target, y)
            names = names or list(out)
            sums = sums + torch.stack([out[k] for k in names]) * x.shape[0]
    parts = parallel.gather((names, sums.tolist() if names else None))
    names = next(n for n, _ in parts if n)
    return {k: sum(s[j] for _, s in parts if s) / len(split[0]) for j, k in enumerate(names)}


@torch.no_grad()
def importance_sampled(model, input, target, k, chunk=1024, labels=None):
    """The importance-weighted bound with K samples (Burda et al. 2016, eq. 8), per image:

        log p(x) >= log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x),   z_k ~ q(z|input)

    All K samples of all B images go through the decoder together, at most `chunk`
    decodes at a time. model.nll(logits, target) -> (n, B) is -log p(x|z) for n decodes of
    each image, in the same convention as the test loss (models.py). Returns per-image
    tensors (B,): nll_iw, the K-sample average of the reconstruction term (recon) and its
    variance over samples (recon_var), and the closed-form KL, so recon + kl is the
    negative ELBO averaged over K samples.
    """
    mu, logvar = model.encode(input, labels)  # (B, D) each
    std = torch.exp(0.5 * logvar)
    B = mu.shape[0]
    per_chunk = max(1, chunk // B)
    log_w, recon = [], []
    for start in range(0, k, per_chunk):
        n = min(per_chunk, k - start)
        eps = torch.randn((n, *mu.shape), device=mu.device, dtype=mu.dtype)  # (n, B, D)
        z = mu + std * eps
        logits = model.decode(z.flatten(0, 1), None if labels is None else
                              labels.expand(n, *labels.shape).flatten(0, 1))
        r = model.nll(logits.unflatten(0, (n, B)), target)  # (n, B, C, H, W) against (B, C, H, W)
        log_pz = -0.5 * (z.pow(2) + LOG_2PI).sum(-1)  # log N(z; 0, I)
        log_qz = -0.5 * (eps.pow(2) + logvar + LOG_2PI).sum(-1)  # log N(z; mu, sigma^2)
        log_w.append(-r + log_pz - log_qz)
        recon.append(r)
    log_w, recon = torch.cat(log_w), torch.cat(recon)  # (K, B)
    return {"nll_iw": math.log(k) - torch.logsumexp(log_w, 0), "recon": recon.mean(0),
            "recon_var": recon.var(0) if k > 1 else torch.zeros_like(recon[0]),
            "kl": losses.kl_normal(mu, logvar)}


def likelihood_constant(recon, c, num_pixels):
    """What the reconstruction term leaves out of -log p(x|z), in nats per image.

    bce: nothing (Bernoulli). gaussian: D/2 log(2 pi c). mse: ||x - x_hat||^2 is the
    Gaussian NLL with c = 1/2 less D/2 log(pi).
    """
    if recon == "gaussian":
        return losses.gaussian_const(num_pixels, c)
    if recon == "mse":
        return losses.gaussian_const(num_pixels, 0.5)
    return 0.0


def bits_per_dim(nll, recon, c, num_pixels, output="sigmoid"):
    """Bits per dimension from an NLL in nats per image (as the test loss reports it).

    Gaussian and mse decoders are densities on the scaled pixels: their full NLL plus
    D log(255 / range) (bins of width range / 255, range 1 for [0, 1] data and 2 for
    [-1, 1]) is the NLL of the 8-bit pixel values, comparable with papers' bits/dim.
    A Bernoulli (bce) decoder on gray levels is not a density over pixel values: its
    number is NLL / (D ln 2) and is only comparable with other Bernoulli numbers.
    """
    full = nll + likelihood_constant(recon, c, num_pixels)
    if recon != "bce":
        full = full + num_pixels * math.log(255 / (1 if output == "sigmoid" else 2))
    return full / (num_pixels * math.log(2))


def psnr(x, y):
    """Peak signal-to-noise ratio per image in dB, for images in [0, 1]: 10 log10(1 / MSE)."""
    mse = (x - y).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse.clamp_min(1e-10))


@torch.no_grad()
def count_active(model, split, output, noise, copy_to=None):
    """The active units on the test split of a model with a posterior (Burda et al. 2016), or
    None: the units whose mean E_q[z_d | x] varies over the test images by more than 0.01."""
    codes = []
    for x, _, y in data.eval_batches(split, output, noise, copy_to):
        if not codes and model.kl_per_dim(x[:1], y[:1]) is None:
            return None  # no posterior (an AE)
        codes.append(model.latent(x, y))
    return active_units(torch.cat(codes))[0]  # every process holds the whole test split


def active_units(mu, threshold=0.01):
    """Burda et al. 2016: unit d is active when Cov_x(E_q[z_d | x]) > threshold.

    mu: (N, D) posterior means over a dataset. Returns (count, variance per unit (D,)).
    """
    var = mu.var(0, unbiased=False)
    return int((var > threshold).sum()), var


def linear_probe(train_x, train_y, test_x, test_y, weight_decay=1e-4, iters=200):
    """Accuracy on the test codes of a multinomial logistic regression fit to the train codes.

    Features are standardized with the train split's mean and std; full-batch L-BFGS,
    deterministic. A measure of how much of the label a linear map can read off the code.
    """
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    a, b = (train_x - mean) / std, (test_x - mean) / std
    classes = int(max(train_y.max(), test_y.max())) + 1
    w = torch.zeros(a.shape[1], classes, device=a.device, requires_grad=True)
    bias = torch.zeros(classes, device=a.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(a @ w + bias, train_y)
        loss = loss + weight_decay * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return (b @ w + bias).argmax(1).eq(test_y).float().mean().item()


def fid(real, fake):
    """Fréchet distance between Gaussians fitted to two feature sets (N, F) and (M, F)
    (Heusel et al. 2017): ||m1 - m2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), with
    tr (S1 S2)^(1/2) = sum of sqrt(eigenvalues of S1^(1/2) S2 S1^(1/2)), a symmetric matrix
    (float64; sample covariances, N - 1)."""
    real, fake = real.double(), fake.double()
    m1, m2 = real.mean(0), fake.mean(0)
    s1, s2 = torch.cov(real.T), torch.cov(fake.T)  # (F, F) each
    lam, v = torch.linalg.eigh(s1)
    root1 = (v * lam.clamp_min(0).sqrt()) @ v.T  # S1^(1/2)
    middle = torch.linalg.eigvalsh(root1 @ s2 @ root1).clamp_min(0).sqrt().sum()
    return ((m1 - m2).pow(2).sum() + s1.trace() + s2.trace() - 2 * middle).item()


def kid(real, fake, subsets=100, size=1000, seed=0):
    """Kernel Inception Distance (Binkowski et al. 2018): the unbiased MMD^2 estimate with
    the kernel k(a, b) = (a.b / F + 1)^3, over `subsets` random subsets of `size` of each set
    (fewer when a set is smaller). Returns (mean, standard deviation over the subsets)."""
    real, fake = real.double(), fake.double()
    m = min(size, len(real), len(fake))
    gen = torch.Generator().manual_seed(seed)
    kernel = lambda a, b: (a @ b.T / a.shape[1] + 1) ** 3  # noqa: E731
    values = []
    for _ in range(subsets):
        a = real[torch.randperm(len(real), generator=gen)[:m]]
        b = fake[torch.randperm(len(fake), generator=gen)[:m]]
        kaa, kbb = kernel(a, a), kernel(b, b)
        within = (kaa.sum() - kaa.trace() + kbb.sum() - kbb.trace()) / (m * (m - 1))
        values.append((within - 2 * kernel(a, b).mean()).item())
    return mean_std(values)


def kth_distances(x, ks, chunk=2048):
    """{k: the distance from each row of x to its k-th nearest other row (N,)} for each k."""
    nearest = torch.cat([torch.cdist(part, x).topk(max(ks) + 1, dim=1, largest=False).values
                         for part in x.split(chunk)])  # (N, max k + 1), ascending; the row itself first
    return {k: nearest[:, k] for k in ks}


def manifold_metrics(real, fake, k_pr=3, k_dc=5, chunk=2048):
    """Improved precision and recall (Kynkäänniemi et al. 2019, k = 3) and density and
    coverage (Naeem et al. 2020, k = 5) of fake features (M, F) against real ones (N, F).

    Each set's manifold is the union of balls around its points reaching their k-th nearest
    neighbour in the set. Precision: the share of fake points inside the real manifold;
    recall: the share of real points inside the fake one. Density: the mean number of real
    balls (k = 5) holding a fake point, over k (about 1 when the fakes spread as the reals
    do; above 1 where they crowd); coverage: the share of real balls holding a fake point.
    """
    real, fake = real.float(), fake.float()
    radius = kth_distances(real, (k_pr, k_dc), chunk)
    fake_radius = kth_distances(fake, (k_pr,), chunk)[k_pr]
    precise, dense = 0, 0
    recalled = torch.zeros(len(real), dtype=torch.bool, device=real.device)
    covered = torch.zeros(len(real), dtype=torch.bool, device=real.device)
    for part, r_fake in zip(fake.split(chunk), fake_radius.split(chunk)):
        d = torch.cdist(part, real)  # (chunk, N)
        precise += (d <= radius[k_pr]).any(1).sum().item()
        hits = d <= radius[k_dc]
        dense += hits.sum().item()
        covered |= hits.any(0)
        recalled |= (d <= r_fake[:, None]).any(0)
    return {"precision": precise / len(fake), "recall": recalled.sum().item() / len(real),
            "density": dense / (k_dc * len(fake)), "coverage": covered.sum().item() / len(real)}


def classifier_view(logits, asked=None):
    """What the domain classifier makes of samples, from its logits (M, K): the mean
    confidence (top softmax probability), the entropy of the histogram of predicted classes
    in nats (log K when every class is drawn equally often; 0 when all samples look like
    one class: the Inception score's diversity idea) and, for conditional samples with the
    classes `asked` (M,), the share classified as asked."""
    p = logits.double().softmax(1)
    counts = torch.bincount(p.argmax(1), minlength=p.shape[1]).double()
    share = counts / counts.sum()
    view = {"confidence": p.max(1).values.mean().item(),
            "class_entropy": -(share[share > 0] * share[share > 0].log()).sum().item()}
    if asked is not None:
        view["class_match"] = (p.argmax(1) == asked.to(p.device)).double().mean().item()
    return view


def mean_std(values):
    """(mean, sample standard deviation; 0 for one value) of a list of numbers."""
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def welch(a, b, level=0.95):
    """Welch's t-test (unequal variances) of mean(a) - mean(b), by scipy.stats.ttest_ind:
    (difference, its `level` confidence interval (low, high), two-sided p, degrees of
    freedom). With no spread in either list the test is undefined: the interval is the
    difference itself and p is nan."""
    diff = float(np.mean(a) - np.mean(b))
    if np.var(a) == 0 and np.var(b) == 0:
        return diff, (diff, diff), float("nan"), float("inf")
    test = scipy.stats.ttest_ind(a, b, equal_var=False)
    low, high = test.confidence_interval(level)
    return diff, (float(low), float(high)), float(test.pvalue), float(test.df)


def auroc(scores, positive):
    """The area under the ROC curve of scores (N,) for the positives (N,) bools
    (scikit-learn's roc_auc_score; ties count one half)."""
    positive = positive.bool().cpu().numpy()
    if positive.all() or not positive.any():
        raise ValueError("auroc needs positives and negatives")
    return float(sklearn.metrics.roc_auc_score(positive, scores.double().cpu().numpy()))


def average_precision(scores, positive):
    """The area under the precision-recall curve as scikit-learn's average_precision_score:
    sum over thresholds of (R_n - R_n-1) P_n."""
    return float(sklearn.metrics.average_precision_score(positive.bool().cpu().numpy(),
                                                         scores.double().cpu().numpy()))


def roc_points(scores, positive):
    """(false positive rates, true positive rates) of the ROC curve, from (0, 0) up
    (scikit-learn's roc_curve)."""
    fpr, tpr, _ = sklearn.metrics.roc_curve(positive.bool().cpu().numpy(),
                                            scores.double().cpu().numpy())
    return fpr, tpr
