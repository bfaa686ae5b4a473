"""The VAE (Kingma & Welling 2014) and beta-VAE (Higgins et al. 2017), MLP and conv.

Imports only torch and losses.py, so it can be copied into a notebook and run alone:

    from vae import VAE
    model = VAE(image_shape=(1, 28, 28), latent_dim=20)         # pytorch/examples' 784-400-20
    out = model.loss(x, x)          # x: (B, 1, 28, 28) in [0, 1]; out["loss"].backward()
    images = model.sample(64)       # (64, 1, 28, 28) in [0, 1]
"""
import math

import torch
import torch.nn as nn

import losses

ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU}


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
    """Kernel sizes of the three stride-2 convolutions, chosen so the code map is 4x4.

    32x32 (reference 000): 4, 4, 4 gives 32 -> 16 -> 8 -> 4 and back exactly.
    28x28: 4, 4, 3 gives 28 -> 14 -> 7 -> 4; the decoder mirrors it (3, 4, 4 transposed)
    to 4 -> 7 -> 14 -> 28, so the output is exactly 28x28 with no padding or cropping.
    """
    if tuple(image_shape[-2:]) == (32, 32):
        return (4, 4, 4)
    if tuple(image_shape[-2:]) == (28, 28):
        return (4, 4, 3)
    raise ValueError(f"conv arch supports 28x28 and 32x32 images, "
                     f"got {image_shape[-2]}x{image_shape[-1]}")


def conv_encoder(image_shape, out_dim, act="relu", dropout=0.0, batchnorm=True):
    """Three stride-2 convolutions 32-64-128, each with (BatchNorm), act, (Dropout)."""
    layers, channels = [], image_shape[0]
    for width, k in zip((32, 64, 128), conv_kernels(image_shape)):
        layers += [nn.Conv2d(channels, width, k, stride=2, padding=1)]
        layers += [nn.BatchNorm2d(width)] if batchnorm else []
        layers += [ACTIVATIONS[act]()]
        layers += [nn.Dropout(dropout)] if dropout > 0 else []
        channels = width
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(128 * 4 * 4, out_dim))


def conv_decoder(image_shape, latent_dim, act="relu", batchnorm=True):
    """Linear back to 128x4x4, then transposed convolutions 128-64-32-channels."""
    k1, k2, k3 = reversed(conv_kernels(image_shape))
    layers = [nn.Linear(latent_dim, 128 * 4 * 4), nn.Unflatten(1, (128, 4, 4))]
    for c_in, c_out, k in ((128, 64, k1), (64, 32, k2)):
        layers += [nn.ConvTranspose2d(c_in, c_out, k, stride=2, padding=1)]
        layers += [nn.BatchNorm2d(c_out)] if batchnorm else []
        layers += [ACTIVATIONS[act]()]
    layers += [nn.ConvTranspose2d(32, image_shape[0], k3, stride=2, padding=1)]
    return nn.Sequential(*layers)


def build_networks(image_shape, code_dim, latent_dim, arch="mlp", hidden=(400,), act="relu",
                   dropout=0.0, batchnorm=None):
    """Encoder (image -> code_dim numbers) and decoder (latent_dim -> pre-activations).

    batchnorm=None means the default for the arch: on for conv, off for mlp.
    """
    image_shape = tuple(image_shape)
    if arch == "mlp":
        bn = bool(batchnorm)
        return (mlp_encoder(image_shape, hidden, code_dim, act, dropout, bn),
                mlp_decoder(image_shape, hidden, latent_dim, act, bn))
    if arch == "conv":
        bn = batchnorm is None or batchnorm
        return (conv_encoder(image_shape, code_dim, act, dropout, bn),
                conv_decoder(image_shape, latent_dim, act, bn))
    raise ValueError(f"unknown arch {arch!r}; use mlp or conv")


class VAE(nn.Module):
    """q(z|x) = N(mu(x), diag sigma^2(x)), p(z) = N(0, I), p(x|z) from the decoder.

    recon: "bce" (Bernoulli decoder, sigmoid output), "mse", or "gaussian" (N(x_hat, cI)).
    output: "sigmoid" for [0, 1] data, "tanh" for [-1, 1] data.
    beta weights the KL term (beta-VAE); beta = 1 is the plain VAE and the ELBO.
    """

    def __init__(self, image_shape=(1, 28, 28), latent_dim=20, arch="mlp", hidden=(400,),
                 act="relu", dropout=0.0, batchnorm=None, output="sigmoid", recon="bce",
                 beta=1.0, c=0.05):
        super().__init__()
        if output not in ("sigmoid", "tanh"):
            raise ValueError(f"unknown output {output!r}; use sigmoid or tanh")
        if recon == "bce" and output != "sigmoid":
            raise ValueError("bce needs a sigmoid output on [0, 1] data; use --recon mse or gaussian")
        self.image_shape, self.latent_dim = tuple(image_shape), latent_dim
        self.output, self.recon, self.beta, self.c = output, recon, beta, c
        self.encoder, self.decoder = build_networks(
            image_shape, 2 * latent_dim, latent_dim, arch, hidden, act, dropout, batchnorm)

    def encode(self, x):
        h = self.encoder(x)
        mu, logvar = h.to(torch.promote_types(h.dtype, torch.float32)).chunk(2, dim=1)  # (B, D)
        # at least float32 (under --amp the networks run in bfloat16): the KL sums in full precision
        return mu, logvar

    def reparameterize(self, mu, logvar):
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)  # z = mu + sigma * eps

    def decode(self, z):
        return self.decoder(z)  # (B, C, H, W) logits (sigmoid) or pre-activations (tanh)

    def activate(self, logits):
        return torch.sigmoid(logits) if self.output == "sigmoid" else torch.tanh(logits)

    def forward(self, x):
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar

    @torch.no_grad()
    def sample(self, n):
        z = torch.randn(n, self.latent_dim, device=next(self.parameters()).device)
        return self.activate(self.decode(z))

    @torch.no_grad()
    def reconstruct(self, x):
        return self.activate(self.decode(self.encode(x)[0]))  # decode z = mu

    def loss(self, input, target, beta=None):
        """Batch means of the per-image terms: loss = recon + beta * kl (nats per image)."""
        beta = self.beta if beta is None else beta
        logits, mu, logvar = self(input)
        recon = losses.reconstruction(self.recon, logits, target, self.output, self.c).mean()
        kl = losses.kl_normal(mu, logvar).mean()
        return {"loss": recon + beta * kl, "recon": recon, "kl": kl}

    def test_loss(self, input, target):
        """The negative ELBO per image: beta = 1 whatever the training beta."""
        return self.loss(input, target, beta=1.0)


if __name__ == "__main__":
    # Runs alone: builds each network and pushes a random batch through it.
    for shape in ((1, 28, 28), (3, 32, 32)):
        for arch in ("mlp", "conv"):
            model = VAE(shape, latent_dim=20, arch=arch)
            x = torch.rand(8, *shape)
            out = model.loss(x, x)
            params = sum(p.numel() for p in model.parameters())
            print(f"{arch:4s} {shape}: {params:,} parameters, sample {tuple(model.sample(4).shape)}, "
                  f"loss {out['loss'].item():.1f} = recon {out['recon'].item():.1f} "
                  f"+ kl {out['kl'].item():.2f} nats/image")
