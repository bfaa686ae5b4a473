"""The VAE (Kingma & Welling 2014) and beta-VAE (Higgins et al. 2017), MLP and conv.

Follows the model contract of models.py. Imports only torch and losses.py, so it can be
copied into a notebook with losses.py and run alone:

    from vae import VAE
    model = VAE(image_shape=(1, 28, 28), latent_dim=20)         # pytorch/examples' 784-400-20
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    out = model.loss(x, x)          # x: (B, 1, 28, 28) in [0, 1]; {"loss", "recon", "kl"}
    opt.zero_grad(); out["loss"].backward(); opt.step()
    images = model.sample(64)       # (64, 1, 28, 28) in [0, 1]
"""
import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import losses

ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU}
HIDDEN = (400,)  # the MLP's default hidden widths: pytorch/examples' 784-400-20


def mlp_encoder(image_shape, hidden, out_dim, act="relu", dropout=0.0, batchnorm=False):
    """Flatten, then [Linear, (BatchNorm), act, (Dropout)] per hidden width, then Linear."""
    layers, width = [nn.Flatten()], math.prod(image_shape)
    for h in hidden:
        layers += [nn.Linear(width, h)]
        layers += [nn.BatchNorm1d(h)] if batchnorm else []
        layers += [ACTIVATIONS[act]()]
        layers += [nn.Dropout(dropout)] if dropout > 0 else []
        width = h
    return nn.Sequential(*layers, nn.Linear(width, out_dim))


def mlp_decoder(image_shape, hidden, latent_dim, act="relu", batchnorm=False):
    """The encoder's mirror image; returns pre-activations shaped like the image."""
    layers, width = [], latent_dim
    for h in reversed(hidden):
        layers += [nn.Linear(width, h)]
        layers += [nn.BatchNorm1d(h)] if batchnorm else []
        layers += [ACTIVATIONS[act]()]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, math.prod(image_shape)),
                         nn.Unflatten(1, image_shape))


def conv_kernels(image_shape):
    """Kernel sizes of the stride-2 convolutions that take the image to a 4x4 map.

    Square sizes 4 * 2^k (16, 32, 64, 128, ...): k convolutions of kernel 4, each halving the
    side exactly (32 -> 16 -> 8 -> 4, the CIFAR-10 regularization tutorial's).
    28x28: 4, 4, 3 gives 28 -> 14 -> 7 -> 4; the decoder mirrors it (3, 4, 4 transposed)
    to 4 -> 7 -> 14 -> 28, so the output is exactly 28x28 with no padding or cropping.
    """
    h, w = image_shape[-2:]
    if (h, w) == (28, 28):
        return (4, 4, 3)
    stages = max(0, round(math.log2(h / 4)))
    if h != w or h < 16 or h != 4 * 2 ** stages:
        raise ValueError(f"image_shape={tuple(image_shape)}: the conv arch takes square images "
                         f"of 28 or 4 * 2^k pixels (16, 32, 64, 128, ...); resize them with "
                         f"--image-size, or use arch='mlp'")
    return (4,) * stages


def conv_widths(kernels, first=32, most=512):
    """Channels of the stride-2 stages, doubling from `first` (32-64-128 for three) up to
    `most` (a 1024x1024 VAE keeps 31 M parameters, not 362 M)."""
    return [min(first * 2 ** i, most) for i in range(len(kernels))]


def conv_encoder(image_shape, out_dim, act="relu", dropout=0.0, batchnorm=True):
    """Stride-2 convolutions 32-64-128(-256...) down to 4x4, each with (BatchNorm), act,
    (Dropout); then a linear layer."""
    kernels = conv_kernels(image_shape)
    layers, channels = [], image_shape[0]
    for width, k in zip(conv_widths(kernels), kernels):
        layers += [nn.Conv2d(channels, width, k, stride=2, padding=1)]
        layers += [nn.BatchNorm2d(width)] if batchnorm else []
        layers += [ACTIVATIONS[act]()]
        layers += [nn.Dropout(dropout)] if dropout > 0 else []
        channels = width
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * 4 * 4, out_dim))


def conv_decoder(image_shape, latent_dim, act="relu", batchnorm=True):
    """Linear to the encoder's last map (128x4x4 for three stages), then transposed
    convolutions mirroring the encoder, the last one to the image's channels."""
    kernels = conv_kernels(image_shape)
    widths = conv_widths(kernels)[::-1] + [image_shape[0]]  # e.g. 128, 64, 32, C
    layers = [nn.Linear(latent_dim, widths[0] * 4 * 4), nn.Unflatten(1, (widths[0], 4, 4))]
    for i, k in enumerate(reversed(kernels)):
        layers += [nn.ConvTranspose2d(widths[i], widths[i + 1], k, stride=2, padding=1)]
        if i < len(kernels) - 1:
            layers += [nn.BatchNorm2d(widths[i + 1])] if batchnorm else []
            layers += [ACTIVATIONS[act]()]
    return nn.Sequential(*layers)


def conv3x3_sides(image_shape, stages=3):
    """Sides (h, w) after each 3x3, stride-2, padding-1 convolution: 28 -> 14 -> 7 -> 4."""
    sides = [tuple(image_shape[-2:])]
    for _ in range(stages):
        sides.append(tuple((s + 1) // 2 for s in sides[-1]))
    return sides


CONV3X3_WIDTHS = (32, 64, 32)  # the Gaussian-decoder study's CNN


def conv3x3_encoder(image_shape, out_dim, act="elu", dropout=0.0, batchnorm=True):
    """The Gaussian-decoder study's CNN: three 3x3 stride-2 convolutions 32-64-32, each with
    (BatchNorm), act, (Dropout); then a linear layer (512 inputs for 28x28)."""
    layers, channels = [], image_shape[0]
    for width in CONV3X3_WIDTHS:
        layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1)]
        layers += [nn.BatchNorm2d(width)] if batchnorm else []
        layers += [ACTIVATIONS[act]()]
        layers += [nn.Dropout(dropout)] if dropout > 0 else []
        channels = width
    h, w = conv3x3_sides(image_shape)[-1]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * h * w, out_dim))


def conv3x3_decoder(image_shape, latent_dim, act="elu", batchnorm=True):
    """Its mirror: linear to 32x4x4, act, three 3x3 stride-2 transposed convolutions
    32-64-32-32 (4 -> 7 -> 14 -> 28: the output padding makes each side exact), each with
    (BatchNorm) and act, then a 3x3 convolution to the image's channels.

    (The study prints an activation beside the decoder's linear layer; we apply it there.)"""
    sides = conv3x3_sides(image_shape)[::-1]  # (4, 4), (7, 7), (14, 14), (28, 28)
    widths = CONV3X3_WIDTHS[::-1] + CONV3X3_WIDTHS[:1]  # 32, 64, 32, 32
    layers = [nn.Linear(latent_dim, widths[0] * sides[0][0] * sides[0][1]), ACTIVATIONS[act](),
              nn.Unflatten(1, (widths[0], *sides[0]))]
    for i in range(3):
        pad = tuple(out - (2 * s - 1) for out, s in zip(sides[i + 1], sides[i]))  # 0 or 1
        layers += [nn.ConvTranspose2d(widths[i], widths[i + 1], 3, stride=2, padding=1,
                                      output_padding=pad)]
        layers += [nn.BatchNorm2d(widths[i + 1])] if batchnorm else []
        layers += [ACTIVATIONS[act]()]
    return nn.Sequential(*layers, nn.Conv2d(widths[-1], image_shape[0], 3, padding=1))


def build_networks(image_shape, code_dim, latent_dim, arch="mlp", hidden=(400,), act="relu",
                   dropout=0.0, batchnorm=False):
    """Encoder (image -> code_dim numbers) and decoder (latent_dim -> pre-activations)."""
    if arch == "mlp":
        return (mlp_encoder(image_shape, hidden, code_dim, act, dropout, batchnorm),
                mlp_decoder(image_shape, hidden, latent_dim, act, batchnorm))
    if arch == "conv3x3":
        return (conv3x3_encoder(image_shape, code_dim, act, dropout, batchnorm),
                conv3x3_decoder(image_shape, latent_dim, act, batchnorm))
    return (conv_encoder(image_shape, code_dim, act, dropout, batchnorm),
            conv_decoder(image_shape, latent_dim, act, batchnorm))


# name: (type, help). The defaults are the constructors' (models.py's contract).
NETWORK_OPTIONS = {
    "latent_dim": (int, "size of the code: z for the VAE family, h for the AE"),
    "arch": (str, "mlp; conv (stride-2 convolutions 32-64-128 down to 4x4); or conv3x3 "
                  "(three 3x3 stride-2 convolutions 32-64-32, the Gaussian-decoder study's CNN)"),
    "hidden": (tuple, "mlp hidden widths, comma-separated, e.g. 300,100,10 (default 400; "
                      "vaegan: latent_dim squared, the d^2 of the MNIST VAE-GAN study)"),
    "act": (str, "hidden activation: relu or elu"),
    "dropout": (float, "dropout after each hidden activation of the encoder"),
    "batchnorm": (bool, "batch norm after each hidden layer (default: on for the conv "
                        "archs and for vaegan, off for mlp); --no-batchnorm removes every batch norm layer"),
    "output": (str, "decoder output: sigmoid ([0, 1] data) or tanh ([-1, 1] data)"),
    "recon": (str, "reconstruction loss: bce, mse or gaussian; vaegan also feature (Larsen's "
                   "error on a discriminator layer) (default: bce for sigmoid, mse for tanh)"),
    "c": (float, "variance c of the gaussian decoder N(x_hat, cI)"),
}


ARCHS = ("mlp", "conv", "conv3x3")


def check_networks(image_shape, latent_dim, arch, hidden, act, dropout, archs=ARCHS):
    """ValueError, in the constructor's words, for options no network can be built with."""
    if arch not in archs:
        raise ValueError(f"arch={arch!r} is unknown; use {', '.join(map(repr, archs))}")
    if arch == "conv":
        conv_kernels(image_shape)
    if arch == "conv3x3" and min(image_shape[-2:]) < 8:
        raise ValueError(f"image_shape={tuple(image_shape)}: the conv3x3 arch needs sides of 8 "
                         f"pixels or more")
    if arch != "mlp" and hidden is not None:
        raise ValueError(f"hidden={hidden!r} sets the mlp's widths; the conv arch's channels "
                         f"are fixed (leave hidden out)")
    if hidden is not None and not (isinstance(hidden, (tuple, list)) and hidden and all(
            isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in hidden)):
        raise ValueError(f"hidden={hidden!r} must be positive widths, e.g. (400,) or (300, 100)")
    if not (isinstance(latent_dim, int) and latent_dim >= 1):
        raise ValueError(f"latent_dim={latent_dim!r} must be an integer >= 1")
    if act not in ACTIVATIONS:
        raise ValueError(f"act={act!r} is unknown; use {' or '.join(map(repr, ACTIVATIONS))}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout={dropout!r} must be in [0, 1)")


def check_schedules(kl_warmup, kl_cycle, free_bits, capacity, capacity_epochs):
    """ValueError for a negative schedule setting or two that cannot go together."""
    for name, v in (("kl_warmup", kl_warmup), ("kl_cycle", kl_cycle), ("free_bits", free_bits),
                    ("capacity", capacity), ("capacity_epochs", capacity_epochs)):
        if not (isinstance(v, (int, float)) and 0 <= v < math.inf):
            raise ValueError(f"{name}={v!r} must be a number >= 0 (0: off)")
    if kl_warmup and kl_cycle:
        raise ValueError(f"kl_warmup={kl_warmup} and kl_cycle={kl_cycle}: choose one schedule of beta")
    if capacity and (kl_warmup or kl_cycle or free_bits):
        raise ValueError(f"capacity={capacity} replaces beta's schedule and free bits with "
                         f"beta * |KL - C|: give it alone")
    if capacity_epochs and not capacity:
        raise ValueError(f"capacity_epochs={capacity_epochs} is the ramp of capacity: give capacity too")


def positive(**values):
    """ValueError naming the first value that is not a finite number > 0."""
    for name, v in values.items():
        if not (isinstance(v, (int, float)) and 0 < v < math.inf):
            raise ValueError(f"{name}={v!r} must be > 0")


@contextlib.contextmanager
def evaluating(model):
    """Evaluation mode inside (batch norm uses and keeps its running statistics, no
    dropout); the modules' own modes after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class VAE(nn.Module):
    """q(z|x) = N(mu(x), diag sigma^2(x)), p(z) = N(0, I), p(x|z) from the decoder.

    recon: "bce" (Bernoulli decoder, sigmoid output), "mse", or "gaussian" (N(x_hat, cI)).
    output: "sigmoid" for [0, 1] data, "tanh" for [-1, 1] data.
    beta weights the KL term (beta-VAE); beta = 1 is the plain VAE and the ELBO.
    """
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
    variational, can_sample, conditional, gated = True, True, False, False
    closed_form = False  # optimised by train.py's loop (PCA is fitted in one pass)
    LOSS = "negative ELBO"  # what test_loss's "loss" is, for legends and tables

    def __init__(self, image_shape=(1, 28, 28), num_classes=None, latent_dim=20, arch="mlp",
                 hidden=None, act="relu", dropout=0.0, batchnorm=None, output="sigmoid",
                 recon=None, beta=1.0, c=0.05, posterior_variance="logvar", kl_warmup=0.0,
                 kl_cycle=0.0, free_bits=0.0, capacity=0.0, capacity_epochs=0.0):
        super().__init__()
        self.image_shape = tuple(image_shape)
        check_networks(self.image_shape, latent_dim, arch, hidden, act, dropout, self.ARCHS)
        if posterior_variance not in ("logvar", "softplus"):
            raise ValueError(f"posterior_variance={posterior_variance!r} is unknown; use "
                             f"'logvar' or 'softplus'")
        recon = losses.check_recon(recon, output, self.RECONS)
        positive(c=c)
        if not (isinstance(beta, (int, float)) and 0 <= beta < math.inf):
            raise ValueError(f"beta={beta!r} must be >= 0")
        self.latent_dim, self.arch, self.act, self.dropout = latent_dim, arch, act, dropout
        self.output, self.recon, self.beta, self.c = output, recon, beta, c
        self.posterior_variance = posterior_variance
        check_schedules(kl_warmup=kl_warmup, kl_cycle=kl_cycle, free_bits=free_bits,
                        capacity=capacity, capacity_epochs=capacity_epochs)
        self.kl_warmup, self.kl_cycle, self.free_bits = kl_warmup, kl_cycle, free_bits
        self.capacity, self.capacity_epochs = capacity, capacity_epochs
        self.progress = None  # epochs done, set by the loop each step; None: past any schedule
        self.likelihood = recon  # the decoder's distribution that nll() uses
        self.batchnorm = arch != "mlp" if batchnorm is None else bool(batchnorm)
        self.hidden = (tuple(hidden) if hidden else self.default_hidden()) if arch == "mlp" else None
        for name, net in self.networks().items():
            setattr(self, name, net)

    def default_hidden(self):
        return HIDDEN

    def networks(self):
        """{"encoder": ..., "decoder": ...}. The VAE-GAN adds its discriminator here, the CVAE
        its label inputs."""
        encoder, decoder = build_networks(self.image_shape, 2 * self.latent_dim, self.latent_dim,
                                          self.arch, self.hidden, self.act, self.dropout,
                                          self.batchnorm)
        return {"encoder": encoder, "decoder": decoder}

    @property
    def scheduled(self):
        return bool(self.kl_warmup or self.kl_cycle or self.free_bits or self.capacity)

    @property
    def term_weights(self):
        """With a schedule the loss adds kl_term (beta now times the KL, free bits or
        |KL - C|), and the true KL is logged beside it."""
        return {"kl": 0, "kl_term": 1, "capacity_c": 0} if self.scheduled else {"kl": self.beta}

    def kl_terms(self, mu, logvar):
        """({"kl": the batch-mean KL, and with a schedule "kl_term" (and the capacity C)},
        what the loss adds for the KL)."""
        per_dim = losses.kl_normal(mu, logvar, per_dim=True)  # (B, D)
        kl = per_dim.sum(1).mean()
        if not self.scheduled:
            return {"kl": kl}, self.beta * kl
        t = math.inf if self.progress is None else self.progress
        terms = {"kl": kl}
        if self.capacity:
            terms["capacity_c"] = torch.full_like(kl, losses.capacity_target(
                self.capacity, t, self.capacity_epochs))
            terms["kl_term"] = self.beta * losses.capacity_kl(kl, terms["capacity_c"])
            return terms, terms["kl_term"]
        beta = (losses.warmup_weight(self.beta, t, self.kl_warmup) if self.kl_warmup else
                losses.cyclical_weight(self.beta, t, self.kl_cycle) if self.kl_cycle and t < math.inf
                else self.beta)
        terms["kl_term"] = beta * (losses.free_bits_kl(per_dim, self.free_bits) if self.free_bits else kl)
        return terms, terms["kl_term"]

    def encode(self, x, labels=None):
        return self.posterior(self.encoder(x))

    def posterior(self, h):
        """(mu, logvar) of q(z|x) from the encoder's output (B, 2D), in at least float32 (under
        --amp the networks run in bfloat16): the KL sums in full precision."""
        mu, h = h.to(torch.promote_types(h.dtype, torch.float32)).chunk(2, dim=1)  # (B, D)
        if self.posterior_variance == "softplus":
            return mu, torch.log(F.softplus(h) + 1e-8)
        return mu, h

    def reparameterize(self, mu, logvar):
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)  # z = mu + sigma * eps

    def decode(self, z, labels=None):
        return self.decoder(z)  # (B, C, H, W) logits (sigmoid) or pre-activations (tanh)

    def activate(self, logits):
        return torch.sigmoid(logits) if self.output == "sigmoid" else torch.tanh(logits)

    def nll(self, logits, target):
        """-log p(x|z) per image (B,), less the constant a Gaussian leaves out (metrics.py)."""
        return losses.reconstruction(self.likelihood, logits, target, self.output, self.c)

    def forward(self, x, labels=None):
        mu, logvar = self.encode(x, labels)
        return self.decode(self.reparameterize(mu, logvar), labels), mu, logvar

    @torch.no_grad()
    def latent(self, x, labels=None):
        with evaluating(self):
            return self.encode(x, labels)[0]

    @torch.no_grad()
    def generate(self, z, labels=None):
        with evaluating(self):
            return self.activate(self.decode(z, labels))

    @torch.no_grad()
    def reconstruct(self, x, labels=None):
        return self.generate(self.latent(x, labels), labels)  # decode z = mu

    @torch.no_grad()
    def sample(self, n, labels=None):
        z = torch.randn(n, self.latent_dim, device=next(self.parameters()).device)
        return self.generate(z, labels)

    def loss(self, input, target, labels=None):
        """Batch means of the per-image terms: loss = recon + beta * kl (nats per image)."""
        logits, mu, logvar = self(input, labels)
        recon = self.nll(logits, target).mean()
        terms, kl_loss = self.kl_terms(mu, logvar)
        return {"loss": recon + kl_loss, "recon": recon, **terms}

    def test_loss(self, input, target, labels=None):
        """The negative ELBO per image: beta = 1 whatever the training beta or schedule."""
        out = self.loss(input, target, labels)
        out = {k: v for k, v in out.items() if k not in ("kl_term", "capacity_c")}
        out["loss"] = out["recon"] + out["kl"]
        return out

    @torch.no_grad()
    def anomaly_scores(self, input, target, labels=None):
        """{score: (B,)}, higher for a more unusual image: the negative ELBO (z sampled once)."""
        with evaluating(self):
            mu, logvar = self.encode(input, labels)
            z = self.reparameterize(mu, logvar)
            return {"nelbo": self.nll(self.decode(z, labels), target) + losses.kl_normal(mu, logvar)}

    def parameter_groups(self):
        return {"model": list(self.parameters())}

    def objectives(self, out):
        return {"model": out["loss"]}


if __name__ == "__main__":
    # Runs alone: builds each network and pushes a random batch through it.
    for shape in ((1, 28, 28), (3, 32, 32)):
        for arch in ARCHS:
            model = VAE(shape, latent_dim=20, arch=arch)
            x = torch.rand(8, *shape)
            out = model.loss(x, x)
            params = sum(p.numel() for p in model.parameters())
            print(f"{arch:4s} {shape}: {params:,} parameters, sample {tuple(model.sample(4).shape)}, "
                  f"loss {out['loss'].item():.1f} = recon {out['recon'].item():.1f} "
                  f"+ kl {out['kl'].item():.2f} nats/image")
