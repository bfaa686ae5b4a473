"""The conditional VAE (Sohn, Lee & Yan 2015, "Learning Structured Output Representation using Deep
Conditional Generative Models"): vae.py's VAE with a one-hot class label y also given to the
encoder (beside the flattened image, or as constant extra channels) and to the decoder (beside z).
    from cvae import CVAE
    model = CVAE((1, 28, 28), num_classes=10, latent_dim=5)
    out = model.loss(x, x, labels)                       # labels: (B,) class indices
    sevens = model.sample(8, labels=torch.full((8,), 7))
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from vae import VAE


class CVAE(VAE):
    """The VAE's networks and options; what encodes or decodes takes labels (default_labels if None)."""
    LOSS = "negative ELBO of x given its label"

    def __init__(self, image_shape=(1, 28, 28), num_classes=10, latent_dim=5, **options):
        # latent_dim 5: larger codes' samples keep less to their class (RESULTS.md: 99.6% at 2, 67% at 20)
        if not (isinstance(num_classes, int) and num_classes >= 2):
            raise ValueError(f"num_classes={num_classes!r}: the conditional VAE needs labelled "
                             f"data with 2 or more classes")
        self.num_classes = num_classes  # networks(), called by VAE.__init__, needs it
        super().__init__(image_shape, num_classes, latent_dim=latent_dim, **options)

    def networks(self):
        nets, k = super().networks(), self.num_classes
        enc, dec = nets["encoder"], nets["decoder"]
        if self.arch == "mlp":  # Flatten, Linear(pixels, hidden), ...
            enc[1] = nn.Linear(enc[1].in_features + k, enc[1].out_features)
        else:  # Conv2d(channels, 32, ...), ...
            c = enc[0]
            enc[0] = nn.Conv2d(c.in_channels + k, c.out_channels, c.kernel_size, c.stride, c.padding)
        dec[0] = nn.Linear(dec[0].in_features + k, dec[0].out_features)  # Linear(latent_dim, ...)
        return nets

    def default_labels(self, n):
        return torch.arange(n, device=next(self.parameters()).device) % self.num_classes

    def one_hot(self, labels, like):
        labels = self.default_labels(len(like)) if labels is None else labels
        return F.one_hot(labels, self.num_classes).to(like.dtype)  # (B, K)

    def encode(self, x, labels=None):
        y = self.one_hot(labels, x)
        if self.arch == "mlp":
            h = self.encoder[1:](torch.cat([x.flatten(1), y], dim=1))
        else:  # the label as K constant planes beside the image's channels
            planes = y[:, :, None, None].expand(-1, -1, *x.shape[2:])
            h = self.encoder(torch.cat([x, planes], dim=1))
        return self.posterior(h)

    def decode(self, z, labels=None):
        return self.decoder(torch.cat([z, self.one_hot(labels, z)], dim=1))


if __name__ == "__main__":
    # Runs alone: one batch through each network, and a sample of every class.
    for shape in ((1, 28, 28), (3, 32, 32)):
        for arch in ("mlp", "conv"):
            model = CVAE(shape, num_classes=10, latent_dim=8, arch=arch)
            x, y = torch.rand(8, *shape), torch.arange(8)
            out = model.loss(x, x, y)
            print(f"{arch:4s} {shape}: loss {out['loss'].item():.1f} nats/image, samples of "
                  f"classes 0-9 {tuple(model.sample(10).shape)}")
