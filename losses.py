"""Every loss term, as pure functions.

Units (GUIDE.md, "Units"): each term is summed over pixels and latent dimensions and returned
per image, (B,); callers `.mean()` over images, so a number is nats per image whatever the
batch size. Reconstruction terms also take n decodes (n, B, ...) of B targets and return (n, B).
"""
import math

import torch
import torch.nn.functional as F


def bce_logits(logits, x):
    """Bernoulli NLL -sum[x log s(l) + (1-x) log(1-s(l))] from logits, finite where s(l) rounds
    to 0 or 1. Targets outside [0, 1] are refused on the CPU (on a GPU: a host sync; check_recon)."""
    if x.device.type == "cpu" and x.numel():
        low, high = torch.aminmax(x)  # one pass over x
        if low < 0 or high > 1:
            raise ValueError(f"bce needs targets in [0, 1], got values in [{low.item():.3g}, "
                             f"{high.item():.3g}]; use recon='mse' or recon='gaussian' for [-1, 1] (tanh) data")
    if logits.shape == x.shape:
        return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
    # n decodes of each image, logits (n, B, ...) against x (B, ...): BCE = softplus(l) - x l,
    # with x l summed as a product of matrices rather than repeating x n times (2x faster)
    l = logits.flatten(logits.dim() - x.dim() + 1)  # (n, B, P)
    return F.softplus(l).sum(-1) - torch.einsum("...bp,bp->...b", l, x.flatten(1))


def per_image(t, x):
    """t summed over one image's dimensions of x: (B,) for t like x, (n, B) for t (n, B, ...)."""
    return t.flatten(t.dim() - x.dim() + 1).sum(-1)


def mse(x_hat, x):
    """Summed squared error ||x - x_hat||^2 per image."""
    return per_image((x_hat - x).pow(2), x)


def gaussian(x_hat, x, c=0.05):
    """||x - x_hat||^2 / (2c): the NLL of a Gaussian decoder N(x_hat, cI) less gaussian_const."""
    return mse(x_hat, x) / (2 * c)


def gaussian_const(num_pixels, c):
    """D/2 * log(2 pi c), the part of the Gaussian NLL that `gaussian` leaves out."""
    return 0.5 * num_pixels * math.log(2 * math.pi * c)


RECONS = ("bce", "mse", "gaussian")


def check_recon(recon, output, recons=RECONS):
    """recon, or its default (bce for sigmoid, mse for tanh); ValueError if it does not fit output."""
    recon = recon or ("bce" if output == "sigmoid" else "mse")
    if output not in ("sigmoid", "tanh"):
        raise ValueError(f"output={output!r} is unknown; use 'sigmoid' ([0, 1] data) or 'tanh' "
                         f"([-1, 1] data)")
    if recon not in recons:
        raise ValueError(f"recon={recon!r} is unknown; use {', '.join(map(repr, recons))}")
    if recon == "bce" and output != "sigmoid":
        raise ValueError("recon='bce' needs output='sigmoid' ([0, 1] data); with output='tanh' "
                         "use recon='mse' or recon='gaussian'")
    return recon


def reconstruction(recon, logits, target, output="sigmoid", c=0.05):
    """Per-image reconstruction term from the decoder's pre-activations, shape (B,)."""
    if recon == "bce":
        check_recon(recon, output)
        return bce_logits(logits, target)
    x_hat = torch.sigmoid(logits) if output == "sigmoid" else torch.tanh(logits)
    if recon == "mse":
        return mse(x_hat, target)
    if recon == "gaussian":
        return gaussian(x_hat, target, c)
    check_recon(recon, output)


def kl_normal(mu, logvar, per_dim=False):
    """KL(N(mu, sigma^2) || N(0, I)) in closed form (Kingma & Welling 2014, app. B): (B,) or (B, D)."""
    kl = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1)
    return kl if per_dim else kl.sum(1)


def gan_real(logits):
    """-log D(x) = softplus(-l): D's loss on real images; the non-saturating G loss (Goodfellow 2014)."""
    return F.softplus(-logits)


def gan_fake(logits):
    """-log(1 - D(x)) = softplus(l): the discriminator's loss on generated images."""
    return F.softplus(logits)


def l1_penalty(parameters):
    """sum |w| over the given parameters (L1 weight penalty; scale it with --l1)."""
    return sum(p.abs().sum() for p in parameters)


def l1_activity(h):
    """sum_j |h_j| per image: L1 on the code, the sparse autoencoder's simplest penalty."""
    return h.abs().flatten(1).sum(1)


def kl_sparsity(h, rho, eps=1e-7):
    """sum_j KL(rho || rho_hat_j), rho_hat_j code unit j's batch-mean activation (Ng's sparse AE)."""
    rho_hat = h.mean(0).clamp(eps, 1 - eps)
    return (rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))).sum()


# The KL term's schedules (train.py gives the model its progress: epochs done, a float)

def warmup_weight(beta, epochs_done, epochs):
    """KL warm-up (Bowman et al. 2016; Sonderby et al. 2016): beta * min(1, t / epochs)."""
    return beta * min(1.0, epochs_done / epochs)


def cyclical_weight(beta, epochs_done, cycle, ramp=0.5):
    """Cyclical annealing (Fu et al. 2019): each cycle, beta rises from 0 over its first `ramp`."""
    return beta * min(1.0, (epochs_done % cycle) / (ramp * cycle))


def free_bits_kl(kl_per_dim, floor):
    """Free bits (Kingma et al. 2016): sum_d max(floor, batch-mean KL of dimension d)."""
    return kl_per_dim.mean(0).clamp_min(floor).sum()


def capacity_target(c_max, epochs_done, epochs):
    """Controlled capacity (Burgess et al. 2018): C rises from 0 to c_max nats over `epochs`."""
    return c_max * (min(1.0, epochs_done / epochs) if epochs else 1.0)


def capacity_kl(kl, target):
    """|KL - C| (Burgess et al. 2018), which the loss weighs by gamma (here beta)."""
    return (kl - target).abs()
