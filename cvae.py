"""The conditional VAE (Sohn, Lee & Yan 2015, "Learning Structured Output Representation
using Deep Conditional Generative Models"): q(z|x, y), p(x|z, y) and p(z) = N(0, I), for
a class label y.

Follows the model contract of models.py: the VAE of vae.py with the label, one-hot,
appended to the input of the encoder's last layer and of the decoder's first. Copy it
with vae.py and losses.py.

    from cvae import CVAE
    model = CVAE((1, 28, 28), num_classes=10, latent_dim=20)
    out = model.loss(x, x, labels)                       # labels: (B,) class indices
    sevens = model.sample(8, labels=torch.full((8,), 7))
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from vae import VAE


class CVAE(VAE):
    """The VAE's networks and options; every method that encodes or decodes takes labels."""
    conditional = True

    def __init__(self, image_shape=(1, 28, 28), num_classes=10, **options):
        if not (isinstance(num_classes, int) and num_classes >= 2):
            raise ValueError(f"num_classes={num_classes!r}: the conditional VAE needs labelled "
                             f"data with 2 or more classes")
        self.num_classes = num_classes  # networks(), called by VAE.__init__, needs it
        super().__init__(image_shape, num_classes, **options)

    def networks(self):
        nets = super().networks()
        last = nets["encoder"][-1]  # Linear(features, 2 * latent_dim)
        nets["encoder"][-1] = nn.Linear(last.in_features + self.num_classes, last.out_features)
        first = nets["decoder"][0]  # Linear(latent_dim, width)
        nets["decoder"][0] = nn.Linear(first.in_features + self.num_classes, first.out_features)
        return nets

    def with_label(self, h, labels):
        """h (B, F) and the labels one-hot (B, K), side by side: (B, F + K)."""
        if labels is None:
            raise ValueError("the conditional VAE encodes and decodes with labels; pass "
                             "labels=(B,) class indices")
        return torch.cat([h, F.one_hot(labels, self.num_classes).to(h.dtype)], dim=1)

    def encode(self, x, labels=None):
        h = self.encoder[-1](self.with_label(self.encoder[:-1](x), labels))
        mu, logvar = h.to(torch.promote_types(h.dtype, torch.float32)).chunk(2, dim=1)  # (B, D)
        return mu, logvar

    def decode(self, z, labels=None):
        return self.decoder(self.with_label(z, labels))

    @torch.no_grad()
    def sample(self, n, labels=None):
        """n decodes of z ~ N(0, I) for the given labels (B,); by default 0, 1, ..., K-1, 0, ..."""
        device = next(self.parameters()).device
        labels = torch.arange(n, device=device) % self.num_classes if labels is None else labels
        return self.generate(torch.randn(n, self.latent_dim, device=device), labels.to(device))


if __name__ == "__main__":
    # Runs alone: one batch through each network, and a sample of every class.
    for shape in ((1, 28, 28), (3, 32, 32)):
        for arch in ("mlp", "conv"):
            model = CVAE(shape, num_classes=10, latent_dim=8, arch=arch)
            x, y = torch.rand(8, *shape), torch.arange(8)
            out = model.loss(x, x, y)
            print(f"{arch:4s} {shape}: loss {out['loss'].item():.1f} nats/image, samples of "
                  f"classes 0-9 {tuple(model.sample(10).shape)}")
