"""Evaluation metrics as functions of a model and tensors (evaluate.py runs them on run folders).
Units (GUIDE.md, "Units"): likelihood terms in nats per image, summed over pixels and latent
dimensions; reconstruction MSE and PSNR on [0, 1] pixels, whatever the model's scaling."""
import math

import numpy as np
import torch

import data
import losses
import parallel

LOG_2PI = math.log(2 * math.pi)


@torch.no_grad()
def test_loss(model, split, output, noise, copy_to=None):
    """Per image over a split, the model's test_loss (VAE: negative ELBO; AE: reconstruction; no beta),
    in batches of 1000 whatever the processes (the same fixed-seed noise); under torchrun, process r
    sums batches r, r + N, ... output: data.to_range's; copy_to: data.batches'."""
    model.eval()
    sums, names = 0, None
    rank, processes, _ = parallel.world()
    for i, (x, target, y) in enumerate(data.eval_batches(split, output, noise, copy_to)):
        if i % processes == rank:
            out = model.test_loss(x, target, y)
            names = names or list(out)
            sums = sums + torch.stack([out[k] for k in names]) * x.shape[0]
    parts = parallel.gather((names, sums.tolist() if names else None))
    names = next(n for n, _ in parts if n)
    return {k: sum(s[j] for _, s in parts if s) / len(split[0]) for j, k in enumerate(names)}


@torch.no_grad()
def importance_sampled(model, input, target, k, chunk=1024, labels=None):
    """Per image (B,): nll_iw = -log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x), z_k ~ q(z|input) (Burda et
    al. 2016, eq. 8), decoding `chunk` at a time; recon, recon_var: mean and variance over the samples
    of model.nll (-log p(x|z), as the test loss); kl in closed form (recon + kl: the negative ELBO)."""
    mu, logvar = model.encode(input, labels)  # (B, D) each
    std, per_chunk = torch.exp(0.5 * logvar), max(1, chunk // len(mu))
    log_w, recon = [], []
    for start in range(0, k, per_chunk):
        n = min(per_chunk, k - start)
        eps = torch.randn((n, *mu.shape), device=mu.device, dtype=mu.dtype)  # (n, B, D)
        z = mu + std * eps
        logits = model.decode(z.flatten(0, 1), None if labels is None else
                              labels.expand(n, *labels.shape).flatten(0, 1))
        r = model.nll(logits.unflatten(0, (n, -1)), target)  # (n, B, C, H, W) against (B, C, H, W)
        log_pz = -0.5 * (z.pow(2) + LOG_2PI).sum(-1)  # log N(z; 0, I)
        log_qz = -0.5 * (eps.pow(2) + logvar + LOG_2PI).sum(-1)  # log N(z; mu, sigma^2)
        log_w.append(-r + log_pz - log_qz)
        recon.append(r)
    log_w, recon = torch.cat(log_w), torch.cat(recon)  # (K, B)
    return {"nll_iw": math.log(k) - torch.logsumexp(log_w, 0), "recon": recon.mean(0),
            "recon_var": recon.var(0) if k > 1 else torch.zeros_like(recon[0]),
            "kl": losses.kl_normal(mu, logvar)}


def likelihood_constant(recon, c, num_pixels):
    """What the reconstruction term leaves out of -log p(x|z), nats per image: bce 0; gaussian
    D/2 log(2 pi c); mse D/2 log(pi) (||x - x_hat||^2 is the c = 1/2 Gaussian NLL less that)."""
    var = {"gaussian": c, "mse": 0.5}.get(recon)  # the Gaussian's c
    return 0.0 if var is None else losses.gaussian_const(num_pixels, var)


def bits_per_dim(nll, recon, c, num_pixels, output="sigmoid"):
    """Bits per dimension of an NLL in nats per image. Gaussian and mse: the full NLL plus D log(255 /
    range) (range 1 for [0, 1] data, 2 for [-1, 1]) is that of the 8-bit values, as in papers. bce on
    gray levels is no density over pixel values: NLL / (D ln 2) compares only with other bce numbers."""
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
    """The count of active units of the posterior means on a split; None without a posterior."""
    codes = []
    for x, _, y in data.eval_batches(split, output, noise, copy_to):
        if not codes and model.kl_per_dim(x[:1], y[:1]) is None:
            return None  # no posterior (an AE)
        codes.append(model.latent(x, y))
    return active_units(torch.cat(codes))[0]  # every process holds the whole test split


def active_units(mu, threshold=0.01):
    """(count, variance per unit (D,)) of posterior means mu (N, D): unit d is active when
    Cov_x(E_q[z_d | x]) > threshold (Burda et al. 2016)."""
    var = mu.var(0, unbiased=False)
    return int((var > threshold).sum()), var


def linear_probe(train_x, train_y, test_x, test_y, weight_decay=1e-4, iters=200):
    """Test accuracy of a multinomial logistic regression on train-standardized codes (full-batch
    L-BFGS, deterministic): how much of the label a linear map reads off the code."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    a, b = (train_x - mean) / std, (test_x - mean) / std
    classes = int(max(train_y.max(), test_y.max())) + 1
    w = torch.zeros(a.shape[1], classes, device=a.device, requires_grad=True)
    bias = torch.zeros(classes, device=a.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(a @ w + bias, train_y) + weight_decay * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return (b @ w + bias).argmax(1).eq(test_y).float().mean().item()


def fid(real, fake):
    """Fréchet distance (Heusel et al. 2017) of Gaussians fit to features (N, F), (M, F) in float64:
    ||m1 - m2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), the last via the symmetric S1^(1/2) S2 S1^(1/2)."""
    real, fake = real.double(), fake.double()
    s1, s2 = torch.cov(real.T), torch.cov(fake.T)  # (F, F) each
    lam, v = torch.linalg.eigh(s1)
    root1 = (v * lam.clamp_min(0).sqrt()) @ v.T  # S1^(1/2)
    middle = torch.linalg.eigvalsh(root1 @ s2 @ root1).clamp_min(0).sqrt().sum()
    return ((real.mean(0) - fake.mean(0)).pow(2).sum() + s1.trace() + s2.trace() - 2 * middle).item()


def kid(real, fake, subsets=100, size=1000, seed=0):
    """Kernel Inception Distance (Binkowski et al. 2018): (mean, std) over `subsets` random subsets of
    `size` (at most) of the unbiased MMD^2 with the kernel (a.b / F + 1)^3."""
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


def manifold_metrics(real, fake, k_pr=3, k_dc=5, chunk=2048):
    """Precision, recall (Kynkäänniemi et al. 2019, k = 3), density, coverage (Naeem et al. 2020, k = 5) of
    fakes (M, F) against reals (N, F) with balls to each point's k-th neighbour: fakes in real balls,
    reals in fake balls, real balls per fake / k (1 if spread as the reals), real balls holding a fake."""
    real, fake = real.float(), fake.float()

    def kth(x, ks):  # {k: the distance from each row to its k-th nearest other row (N,)}
        nearest = torch.cat([torch.cdist(part, x).topk(max(ks) + 1, dim=1, largest=False).values
                             for part in x.split(chunk)])  # (N, max k + 1) ascending, the row itself first
        return {k: nearest[:, k] for k in ks}

    radius, fake_radius = kth(real, (k_pr, k_dc)), kth(fake, (k_pr,))[k_pr]
    precise, dense, (recalled, covered) = 0, 0, torch.zeros(2, len(real), dtype=torch.bool, device=real.device)
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
    """From logits (M, K): mean top softmax probability; entropy (nats) of the predicted classes (log K
    if even, 0 if one class: the Inception score's idea); the share classified as `asked` (M,)."""
    p = logits.double().softmax(1)
    share = torch.bincount(p.argmax(1), minlength=p.shape[1]).double() / len(p)
    view = {"confidence": p.max(1).values.mean().item(),
            "class_entropy": -(share[share > 0] * share[share > 0].log()).sum().item()}
    if asked is not None:
        view["class_match"] = (p.argmax(1) == asked.to(p.device)).double().mean().item()
    return view


def mean_std(values):
    """(mean, sample standard deviation; 0 for one value) of a list of numbers."""
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def welch(a, b, level=0.95):
    """Welch's t-test of mean(a) - mean(b) (scipy): (difference, `level` interval, two-sided p, degrees
    of freedom); with no spread in either list: the difference as interval, p nan."""
    diff = float(np.mean(a) - np.mean(b))
    if np.var(a) == 0 and np.var(b) == 0:
        return diff, (diff, diff), float("nan"), float("inf")
    import scipy.stats  # here, not above: training never needs scipy's 0.7 s import
    test = scipy.stats.ttest_ind(a, b, equal_var=False)
    low, high = test.confidence_interval(level)
    return diff, (float(low), float(high)), float(test.pvalue), float(test.df)


def as_numpy(scores, positive):
    """(positives as numpy bools, scores as numpy float64), sklearn's argument order."""
    return positive.bool().cpu().numpy(), scores.double().cpu().numpy()


def sk():
    """sklearn.metrics, imported when first used (as scipy in welch): training never waits for it."""
    import sklearn.metrics
    return sklearn.metrics


def auroc(scores, positive):
    """Area under the ROC curve of scores (N,) for positives (N,) (sklearn; ties count one half)."""
    if positive.bool().all() or not positive.bool().any():
        raise ValueError("auroc needs positives and negatives")
    return float(sk().roc_auc_score(*as_numpy(scores, positive)))


def average_precision(scores, positive):
    """Area under the precision-recall curve, sum_n (R_n - R_n-1) P_n (sklearn)."""
    return float(sk().average_precision_score(*as_numpy(scores, positive)))


def roc_points(scores, positive):
    """(false positive rates, true positive rates) of the ROC curve from (0, 0) (sklearn)."""
    return tuple(sk().roc_curve(*as_numpy(scores, positive))[:2])
