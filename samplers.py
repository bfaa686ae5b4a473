"""Samplers, apart from the models: where evaluate.py's samples come from (--sampler).

    prior      the model's own prior draws (model.sample: N(0, I) decoded, for a VAE; an AE has none)
    gmm        a K-component full-covariance Gaussian mixture fitted to the training codes, its draws
               decoded: Ghosh et al. 2020's ex-post density estimation; any model with a code, AE included
    two-stage  a second, small VAE trained on the training codes, its draws u ~ p(u|v), v ~ N(0, I), decoded
               (Dai & Wipf 2019: its Gaussian decoder learns its variance γ, which lets it match the codes'
               density; on near-Gaussian codes its posterior collapses and γ is their spread)

build() returns {name: draw}, each draw(n, generator, labels) -> n images in the data's range, or None
when the model has no prior; `generator` (on the CPU) makes every draw repeatable.
"""
import math
import time

import torch
import torch.nn as nn
from sklearn.mixture import GaussianMixture

import data

SAMPLERS = ("prior", "gmm", "two-stage")
MAX_CODES = 100_000  # training codes a sampler is fitted to, a fixed random subset beyond (dSprites: 727,280)
WIDTH, BATCH, LR = 256, 256, 1e-3  # the second stage's MLP widths (two hidden layers), batch and Adam rate


@torch.no_grad()
def training_codes(model, split, output, seed=0):
    """model.latent of (up to MAX_CODES of) the training images, clean, (N, D) float32 on the CPU."""
    images, labels = split
    if len(images) > MAX_CODES:
        pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:MAX_CODES]
        images, labels = images[pick.to(images.device)], labels[pick.to(labels.device)]
    batches = data.eval_batches((images, labels), output)
    return torch.cat([model.latent(x, y).float().cpu() for x, _, y in batches])


def fit_gmm(codes, components=10, seed=0):
    """A full-covariance Gaussian mixture (scikit-learn) fitted to codes (N, D); returns
    draw(n, generator) -> (n, D)."""
    if len(codes) < components:
        raise ValueError(f"--gmm-components {components} is more than the {len(codes)} training codes; use fewer")
    gm = GaussianMixture(components, covariance_type="full", reg_covar=1e-6, random_state=seed)
    gm.fit(codes.double().numpy())
    weights, means = torch.from_numpy(gm.weights_), torch.from_numpy(gm.means_)
    chol = torch.linalg.cholesky(torch.from_numpy(gm.covariances_))  # (K, D, D)

    def draw(n, generator=None):
        k = torch.multinomial(weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, means.shape[1], 1, generator=generator, dtype=torch.float64)
        return (means[k] + (chol[k] @ eps)[..., 0]).float()
    return draw


class SecondStage(nn.Module):
    """The two-stage VAE's second VAE on standardised codes u: q(v|u), p(u|v) = N(dec(v), γ I), γ learned."""

    def __init__(self, dim, width=WIDTH):
        super().__init__()
        def mlp(d_in, d_out):
            return nn.Sequential(nn.Linear(d_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                 nn.Linear(width, d_out))
        self.enc, self.dec, self.log_gamma = mlp(dim, 2 * dim), mlp(dim, dim), nn.Parameter(torch.zeros(()))

    def loss(self, u):
        """The negative ELBO of u, nats per code, averaged."""
        mu, logvar = self.enc(u).chunk(2, dim=1)
        v = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
        nll = (u - self.dec(v)).pow(2).sum(1) / (2 * self.log_gamma.exp()) + \
            0.5 * u.shape[1] * (self.log_gamma + math.log(2 * math.pi))
        return (nll + 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)).mean()


def fit_two_stage(codes, epochs=50, seed=0, width=WIDTH):
    """Train the second stage on codes (N, D) for `epochs`; returns draw(n, generator) -> (n, D) and the last
    epoch's loss (nats per code, on the standardised codes)."""
    center, scale = codes.mean(0), codes.std(0).clamp_min(1e-6)
    u = (codes - center) / scale
    with torch.random.fork_rng():  # the caller's global generator is left as it was
        torch.manual_seed(seed)
        net = SecondStage(codes.shape[1], width)
        opt = torch.optim.Adam(net.parameters(), lr=LR)
        for _ in range(epochs):
            total = 0.0
            for idx in torch.randperm(len(u)).split(BATCH):
                loss = net.loss(u[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
    net.eval()

    @torch.no_grad()
    def draw(n, generator=None):  # u ~ p(u|v) = N(dec(v), γ I): the mean alone is one point once q(v|u) collapses
        v, eps = torch.randn(2, n, codes.shape[1], generator=generator)
        return (net.dec(v) + (0.5 * net.log_gamma).exp() * eps) * scale + center
    return draw, total / len(u)


def build(names, model, train_split, output, components=10, epochs=50, seed=0):
    """{name: draw(n, generator, labels) -> images or None} for the samplers named, fitted on the training split."""
    draws, codes = {}, None
    device = train_split[0].device  # the data live where the model does (PCA has no parameters)
    for name in names:
        if name == "prior":
            draws[name] = model.sample
            continue
        t0 = time.perf_counter()
        codes = training_codes(model, train_split, output, seed) if codes is None else codes
        if name == "gmm":
            code_draw, about = fit_gmm(codes, components, seed), f"{components} components"
        else:
            code_draw, last = fit_two_stage(codes, epochs, seed)
            about = f"{epochs} epochs, last loss {last:.3f} nats per code"
        print(f"  sampler {name}: fitted to {len(codes):,} training codes ({about}), "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        draws[name] = (lambda d: lambda n, generator=None, labels=None: model.generate(
            d(n, generator).to(device), model.default_labels(n) if labels is None else labels.to(device)))(code_draw)
    return draws
