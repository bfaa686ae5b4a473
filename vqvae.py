"""The VQ-VAE (van den Oord et al. 2017; nets.Model): a conv encoder maps an image to a grid of
(H/4) x (W/4) vectors z_e of D numbers; each is replaced by its nearest of K codebook vectors, z_q,
and the decoder turns the grid of z_q back into an image.

    loss = recon(x, dec(z_q)) + ||sg[z_e] - z_q||^2 + beta ||z_e - sg[z_q]||^2     (sums per image)

The reconstruction's gradient skips the quantisation (straight-through: dec sees z_e + sg[z_q - z_e]).
With ema=True the codebook follows moving averages of the vectors assigned to each code instead of the
second term (the paper's appendix). A code left unused for a while restarts at a random encoder
output of the batch. The test loss is the negative ELBO under a uniform prior over the K codes: the
reconstruction plus (H/4)(W/4) log K nats. Copy with nets.py and losses.py.

    from vqvae import VQVAE
    model = VQVAE((3, 32, 32))
    out = model.loss(x, x)   # {"loss", "recon", "commitment", "codebook", "perplexity", "used_codes"}
"""
import math
import os

import torch
import torch.nn as nn

import losses
from nets import NETWORK_OPTIONS, Model, at_least, positive


class Residual(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))), the paper's residual block."""

    def __init__(self, channels, hidden):
        super().__init__()
        self.net = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(hidden, channels, 1))

    def forward(self, x):
        return x + self.net(x)


def encoder(in_channels, channels, code_dim):
    """Two 4x4 stride-2 convolutions (side / 4), a 3x3 one, two residual blocks, a 1x1 to D channels."""
    return nn.Sequential(nn.Conv2d(in_channels, channels // 2, 4, 2, 1), nn.ReLU(),
                         nn.Conv2d(channels // 2, channels, 4, 2, 1), nn.ReLU(),
                         nn.Conv2d(channels, channels, 3, padding=1),
                         Residual(channels, channels // 4), Residual(channels, channels // 4), nn.ReLU(),
                         nn.Conv2d(channels, code_dim, 1))


def decoder(out_channels, channels, code_dim):
    """The encoder's mirror image: 3x3, two residual blocks, two 4x4 stride-2 transposed convolutions."""
    return nn.Sequential(nn.Conv2d(code_dim, channels, 3, padding=1),
                         Residual(channels, channels // 4), Residual(channels, channels // 4), nn.ReLU(),
                         nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1), nn.ReLU(),
                         nn.ConvTranspose2d(channels // 2, out_channels, 4, 2, 1))


class Codebook(nn.Module):
    """K code vectors of size D, with the training-time updates: EMA (optional) and dead-code restarts.
    `usage` is a moving average of how often each code is picked per batch, kept as batch norm keeps its
    statistics: by forward passes in training mode."""

    def __init__(self, size, dim, ema=False, decay=0.99, restart=1.0):
        super().__init__()
        self.ema, self.decay, self.restart = ema, decay, restart
        vectors = torch.empty(size, dim).uniform_(-1 / size, 1 / size)
        if ema:  # moved by the averages below, not by the optimiser
            self.register_buffer("vectors", vectors)
            self.register_buffer("sums", torch.zeros(size, dim))
        else:
            self.vectors = nn.Parameter(vectors)
        self.register_buffer("usage", torch.zeros(size))

    @torch.no_grad()
    def assign(self, flat):
        """The index of each row's nearest code vector, (N,) for flat (N, D), in float32."""
        flat, vectors = flat.float(), self.vectors.float()
        return (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ vectors.T + vectors.pow(2).sum(1)).argmin(1)

    @torch.no_grad()
    def update(self, flat, index):
        """One training step's moving averages (counts; with ema the vectors too) and restarts."""
        flat, k = flat.float(), len(self.usage)
        counts = torch.bincount(index, minlength=k).to(flat.dtype)
        self.usage.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        if self.ema:  # vector k = the moving average of its vectors' sum over that of their count
            self.sums.mul_(self.decay).add_(torch.zeros_like(self.sums).index_add_(0, index, flat),
                                            alpha=1 - self.decay)
            total = self.usage.sum()
            smoothed = (self.usage + 1e-5) / (total + k * 1e-5) * total  # no division by 0
            used = self.usage > 0
            self.vectors[used] = self.sums[used] / smoothed[used, None]
        dead = (self.usage < self.restart).nonzero()[:, 0]
        if len(dead):  # each dead code to a random encoder output, with a batch's average use
            picked = flat[torch.randint(len(flat), (len(dead),), device=flat.device)]
            self.vectors[dead] = picked.to(self.vectors.dtype)
            self.usage[dead] = len(flat) / k
            if self.ema:
                self.sums[dead] = picked * self.usage[dead, None]


def straight_through(z_e, z_q):
    """z_q's values with z_e's gradient: d(out)/d(z_e) = identity."""
    return z_e + (z_q - z_e).detach()


class VQVAE(Model):
    OPTIONS = {"latent_dim": (int, "vqvae: D, the size of each code vector of the grid"),
               "codebook": (int, "K, the number of code vectors"),
               "width": (int, "channels of the encoder's and decoder's convolutions (the outer ones "
                                 "have half, the residual blocks' inner ones a quarter)"),
               "commitment": (float, "beta of the commitment term beta ||z_e - sg[z_q]||^2"),
               "ema": (bool, "codebook by exponential moving averages instead of its loss term (default: off)"),
               "decay": (float, "the moving averages' decay (usage counts, and --ema's vectors)"),
               "restart": (float, "a code used less than this many times per batch (moving average) "
                                  "restarts at a random encoder output (0: never)"),
               **{k: NETWORK_OPTIONS[k] for k in ("output", "recon", "c")}}
    LOSS = "negative ELBO, uniform prior over codes"
    CODE, UNIT = "the grid of code vectors z_q", "q"
    ARCHS = ()

    def __init__(self, image_shape=(3, 32, 32), num_classes=None, latent_dim=64, codebook=512, width=128,
                 commitment=0.25, ema=False, decay=0.99, restart=1.0, output="sigmoid", recon=None, c=0.05):
        super().__init__()
        self.image_shape = tuple(image_shape)
        if self.image_shape[1] % 4 or self.image_shape[2] % 4 or min(self.image_shape[1:]) < 8:
            raise ValueError(f"image_shape={self.image_shape}: the vqvae takes sides that are multiples of 4 "
                             f"(28, 32, 64, ...); resize them with --image-size")
        for name, v in (("latent_dim", latent_dim), ("codebook", codebook), ("width", width)):
            if not (isinstance(v, int) and v >= (4 if name == "width" else 1)):
                raise ValueError(f"{name}={v!r} must be an integer >= {4 if name == 'width' else 1}")
        at_least(0, commitment=commitment, restart=restart)
        positive(c=c)
        if not 0 < decay < 1:
            raise ValueError(f"decay={decay!r} must be in (0, 1)")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # each process would move its own codebook
            raise ValueError("the vqvae's codebook updates are one process's; run it without torchrun")
        self.latent_dim, self.codebook, self.width, self.commitment = latent_dim, codebook, width, commitment
        self.ema, self.decay, self.restart = bool(ema), decay, restart
        self.output, self.recon, self.c = output, losses.check_recon(recon, output), c
        self.grid = (self.image_shape[1] // 4, self.image_shape[2] // 4)
        self.encoder = encoder(self.image_shape[0], width, latent_dim)
        self.decoder = decoder(self.image_shape[0], width, latent_dim)
        self.codes = Codebook(codebook, latent_dim, self.ema, decay, restart)

    @property
    def term_weights(self):
        return {"commitment": self.commitment, **({} if self.ema else {"codebook": 1.0})}

    def quantize(self, z_e):
        """(code indices (B, h, w), z_q (B, D, h, w)) of an encoder output (B, D, h, w)."""
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, self.latent_dim)
        index = self.codes.assign(flat)
        z_q = self.codes.vectors[index].view(z_e.shape[0], *self.grid, -1).permute(0, 3, 1, 2)
        return index.view(z_e.shape[0], *self.grid), z_q.to(z_e.dtype)

    def code_indices(self, x):
        """The grid of code indices of images x, (B, h*w) in raster order, in evaluation mode (prior.py)."""
        with torch.no_grad():
            return self.quantize(self.latent(x).view(len(x), self.latent_dim, *self.grid))[0].flatten(1)

    def embed(self, index):
        """Code indices (B, h*w) as the flat code latent() returns, (B, D*h*w)."""
        return self.codes.vectors[index].view(len(index), *self.grid, -1).permute(0, 3, 1, 2).flatten(1)

    def encode(self, x, labels=None):
        """z_q flattened, (B, D*h*w): the code figures and metrics use."""
        return self.quantize(self.encoder(x))[1].flatten(1)

    def decode(self, z, labels=None):
        """Decoder pre-activations of a flat code, each position first snapped to its nearest code vector
        (the decoder saw only code vectors in training)."""
        z = z.view(len(z), self.latent_dim, *self.grid)
        return self.decoder(self.quantize(z)[1])

    def loss(self, input, target, labels=None):
        z_e = self.encoder(input)
        index, z_q = self.quantize(z_e)
        recon = losses.reconstruction(self.recon, self.decoder(straight_through(z_e, z_q)), target, self.output,
                                      self.c).mean()
        out = {"loss": recon, "recon": recon}
        out["commitment"] = (z_e - z_q.detach()).pow(2).flatten(1).sum(1).mean()
        if not self.ema:
            out["codebook"] = (z_e.detach() - z_q).pow(2).flatten(1).sum(1).mean()
        out["loss"] = out["loss"] + sum(w * out[k] for k, w in self.term_weights.items())
        counts = torch.bincount(index.flatten(), minlength=self.codebook).float()
        p = counts / counts.sum()
        out["perplexity"] = torch.exp(-(p * p.clamp_min(1e-12).log()).sum())  # K when all are used alike
        out["used_codes"] = (counts > 0).sum().float()
        if self.training and torch.is_grad_enabled():
            self.codes.update(z_e.detach().permute(0, 2, 3, 1).reshape(-1, self.latent_dim), index.flatten())
        return out

    def test_loss(self, input, target, labels=None):
        """The reconstruction plus KL(q || uniform) = (h*w) log K: the negative ELBO, nats per image."""
        out = self.loss(input, target, labels)
        kl = torch.full_like(out["recon"], self.grid[0] * self.grid[1] * math.log(self.codebook))
        return {"loss": out["recon"] + kl, "recon": out["recon"], "kl": kl,
                "perplexity": out["perplexity"], "used_codes": out["used_codes"]}


if __name__ == "__main__":
    # Runs alone: a few steps on random images, then its terms.
    torch.manual_seed(0)
    model, x = VQVAE((3, 32, 32), width=32, codebook=64), torch.rand(16, 3, 32, 32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(20):
        out = model.loss(x, x)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    print(" ".join(f"{k} {v.item():.3f}" for k, v in out.items()))
