"""The VAE (Kingma & Welling 2014) and beta-VAE (Higgins et al. 2017), MLP and conv; the model
contract of nets.Model. Imports only torch, losses.py and nets.py: copy the three and run:

    from vae import VAE
    model = VAE(image_shape=(1, 28, 28), latent_dim=20)         # pytorch/examples' 784-400-20
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    out = model.loss(x, x)          # x: (B, 1, 28, 28) in [0, 1]; {"loss", "recon", "kl"}
    opt.zero_grad(); out["loss"].backward(); opt.step()
    images = model.sample(64)       # (64, 1, 28, 28) in [0, 1]
"""
import math

import torch
import torch.nn.functional as F

import losses
from nets import (ARCHS, BATCHNORM, HIDDEN, NETWORK_OPTIONS, Model, at_least, build_networks, check_networks,
                  evaluating, positive)


def check_schedules(kl_warmup, kl_cycle, free_bits, capacity, capacity_epochs):
    """ValueError for a negative schedule setting or two that cannot go together."""
    for name, v in zip(("kl_warmup", "kl_cycle", "free_bits", "capacity", "capacity_epochs"),
                       (kl_warmup, kl_cycle, free_bits, capacity, capacity_epochs)):
        if not (isinstance(v, (int, float)) and 0 <= v < math.inf):
            raise ValueError(f"{name}={v!r} must be a number >= 0 (0: off)")
    if kl_warmup and kl_cycle:
        raise ValueError(f"kl_warmup={kl_warmup} and kl_cycle={kl_cycle}: choose one schedule of beta")
    if capacity and (kl_warmup or kl_cycle or free_bits):
        raise ValueError(f"capacity={capacity} replaces beta's schedule and free bits with "
                         f"beta * |KL - C|: give it alone")
    if capacity_epochs and not capacity:
        raise ValueError(f"capacity_epochs={capacity_epochs} is the ramp of capacity: give capacity too")


class VAE(Model):
    """q(z|x) = N(mu(x), diag sigma^2(x)), p(z) = N(0, I), p(x|z) the decoder; beta weighs the KL."""
    OPTIONS = {**NETWORK_OPTIONS,
               "beta": (float, "weight of the KL term (beta-VAE); 1 is the ELBO"),
               "kl_warmup": (float, "epochs over which beta rises linearly from 0 (KL warm-up); 0: off"),
               "kl_cycle": (float, "cyclical annealing (Fu et al. 2019): beta rises from 0 over "
                                   "the first half of each cycle of this many epochs; 0: off"),
               "free_bits": (float, "free bits (Kingma et al. 2016): each latent dimension's "
                                    "batch-mean KL counts as at least this many nats; 0: off"),
               "capacity": (float, "controlled capacity (Burgess et al. 2018): the loss has "
                                   "beta * |KL - C| with C rising to this many nats; 0: off"),
               "capacity_epochs": (float, "epochs over which C rises from 0 to --capacity "
                                          "(0: C = --capacity from the start)"),
               "posterior_variance": (str, "how the encoder's second half h gives q(z|x)'s "
                                           "variance: logvar (exp(h)) or softplus (softplus(h) "
                                           "+ 1e-8, the Gaussian-decoder study's)")}
    RECONS, ARCHS = losses.RECONS, ARCHS
    LOSS, CODE, UNIT = "negative ELBO", "z = μ", "z"
    SCHEDULE_TERMS = ("kl_term", "capacity_c", "tc_term")  # what test_loss leaves out (BetaTCVAE's too)

    def __init__(self, image_shape=(1, 28, 28), num_classes=None, latent_dim=20, arch="mlp",
                 hidden=None, act="relu", dropout=0.0, batchnorm=None, output="sigmoid",
                 recon=None, beta=1.0, c=0.05, posterior_variance="logvar", kl_warmup=0.0,
                 kl_cycle=0.0, free_bits=0.0, capacity=0.0, capacity_epochs=0.0):
        super().__init__()
        self.image_shape = tuple(image_shape)
        check_networks(self.image_shape, latent_dim, arch, hidden, act, dropout, self.ARCHS)
        if posterior_variance not in ("logvar", "softplus"):
            raise ValueError(f"posterior_variance={posterior_variance!r} is unknown; use 'logvar' or "
                             f"'softplus'")
        recon = losses.check_recon(recon, output, self.RECONS)
        positive(c=c)
        at_least(0, beta=beta)
        self.latent_dim, self.arch, self.act, self.dropout = latent_dim, arch, act, dropout
        self.output, self.recon, self.beta, self.c = output, recon, beta, c
        self.posterior_variance, self.likelihood = posterior_variance, recon  # nll()'s distribution
        check_schedules(kl_warmup, kl_cycle, free_bits, capacity, capacity_epochs)
        self.kl_warmup, self.kl_cycle, self.free_bits = kl_warmup, kl_cycle, free_bits
        self.capacity, self.capacity_epochs = capacity, capacity_epochs
        self.batchnorm = BATCHNORM.get(arch, False) if batchnorm is None else bool(batchnorm)
        self.hidden = (tuple(hidden) if hidden else self.default_hidden()) if arch == "mlp" else None
        for name, net in self.networks().items():
            setattr(self, name, net)

    def default_hidden(self):
        return HIDDEN

    def networks(self):
        """{"encoder": ..., "decoder": ...}; the VAE-GAN adds its discriminator, the CVAE labels."""
        return dict(zip(("encoder", "decoder"), build_networks(
            self.image_shape, 2 * self.latent_dim, self.latent_dim, self.arch, self.hidden, self.act,
            self.dropout, self.batchnorm)))

    @property
    def scheduled(self):
        return bool(self.kl_warmup or self.kl_cycle or self.free_bits or self.capacity)

    @property
    def term_weights(self):
        """With a schedule the loss adds kl_term (scheduled beta times KL, free bits or |KL - C|)."""
        return {"kl": 0, "kl_term": 1, "capacity_c": 0} if self.scheduled else {"kl": self.beta}

    def kl_terms(self, mu, logvar):
        """({"kl": batch-mean KL, with a schedule "kl_term" (and "capacity_c")}, the loss's KL part)."""
        per_dim = losses.kl_normal(mu, logvar, per_dim=True)  # (B, D)
        kl = per_dim.sum(1).mean()
        if not self.scheduled:
            return {"kl": kl}, self.beta * kl
        t, terms = math.inf if self.progress is None else self.progress, {"kl": kl}
        if self.capacity:
            terms["capacity_c"] = torch.full_like(kl, losses.capacity_target(self.capacity, t,
                                                                             self.capacity_epochs))
            terms["kl_term"] = self.beta * losses.capacity_kl(kl, terms["capacity_c"])
        else:
            kl_or_floor = losses.free_bits_kl(per_dim, self.free_bits) if self.free_bits else kl
            terms["kl_term"] = self.beta_at(t) * kl_or_floor
        return terms, terms["kl_term"]

    def beta_at(self, t):
        """beta after t epochs under kl_warmup or kl_cycle (t = inf: past any schedule)."""
        return (losses.warmup_weight(self.beta, t, self.kl_warmup) if self.kl_warmup else
                losses.cyclical_weight(self.beta, t, self.kl_cycle) if self.kl_cycle and t < math.inf
                else self.beta)

    def encode(self, x, labels=None):
        return self.posterior(self.encoder(x))

    def posterior(self, h):
        """(mu, logvar) of q(z|x) from the encoder's (B, 2D), in at least float32 (--amp: bfloat16)."""
        mu, h = h.to(torch.promote_types(h.dtype, torch.float32)).chunk(2, dim=1)  # (B, D)
        if self.posterior_variance == "softplus":
            return mu, torch.log(F.softplus(h) + 1e-8)
        return mu, h

    def reparameterize(self, mu, logvar):
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)  # z = mu + sigma * eps

    def decode(self, z, labels=None):
        return self.decoder(z)  # (B, C, H, W) logits (sigmoid) or pre-activations (tanh)

    def nll(self, logits, target):
        """-log p(x|z) per image (B,), less the constant a Gaussian leaves out (metrics.py)."""
        return losses.reconstruction(self.likelihood, logits, target, self.output, self.c)

    def latent(self, x, labels=None):
        return super().latent(x, labels)[0]  # the posterior mean mu

    def posterior_sample(self, x, labels=None):
        with evaluating(self):
            return self.reparameterize(*self.encode(x, labels))

    @torch.no_grad()
    def sample(self, n, generator=None, labels=None):
        device = next(self.parameters()).device
        z = torch.randn(n, self.latent_dim, generator=generator).to(device)
        return self.generate(z, self.default_labels(n) if labels is None else labels.to(device))

    def kl_per_dim(self, x, labels=None):
        with evaluating(self):
            return losses.kl_normal(*self.encode(x, labels), per_dim=True)

    def forward(self, x, labels=None):
        mu, logvar = self.encode(x, labels)
        return self.decode(self.reparameterize(mu, logvar), labels), mu, logvar

    def loss(self, input, target, labels=None):
        """Batch means (nats per image): loss = recon + beta * kl."""
        logits, mu, logvar = self(input, labels)
        recon = self.nll(logits, target).mean()
        terms, kl_loss = self.kl_terms(mu, logvar)
        return {"loss": recon + kl_loss, "recon": recon, **terms}

    def test_loss(self, input, target, labels=None):
        """The negative ELBO per image: beta = 1 whatever the training beta or schedule."""
        out = {k: v for k, v in self.loss(input, target, labels).items() if k not in self.SCHEDULE_TERMS}
        return {**out, "loss": out["recon"] + out["kl"]}

    def anomaly_scores(self, input, target, labels=None):
        """{"nelbo": the negative ELBO per image, z sampled once}."""
        with evaluating(self):
            logits, mu, logvar = self(input, labels)
            return {"nelbo": self.nll(logits, target) + losses.kl_normal(mu, logvar)}


if __name__ == "__main__":
    # Runs alone: builds each network and pushes a random batch through it.
    for shape in ((1, 28, 28), (3, 32, 32)):
        for arch in ARCHS:
            model = VAE(shape, latent_dim=20, arch=arch)
            x = torch.rand(8, *shape)
            out = model.loss(x, x)
            params = sum(p.numel() for p in model.parameters())
            print(f"{arch:4s} {shape}: {params:,} parameters, sample {tuple(model.sample(4).shape)}, loss "
                  f"{out['loss'].item():.1f} = recon {out['recon'].item():.1f} + kl {out['kl'].item():.2f}"
                  f" nats/image")
