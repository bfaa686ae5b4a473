"""PCA as a model, the baseline an autoencoder is measured against ("a non-linear PCA"):
    code  h = W^T (x - m)          W (P, D): the top `latent_dim` eigenvectors of the covariance
    decode x_hat = m + W h          m: the mean image
Fitted in closed form in before_epoch (no parameters to optimise). Its loss, the squared error
per image, equals the discarded eigenvalues' sum on the training split, the least any linear
code of this size can reach. Imports only torch and nets.py.
"""
import math

import torch

from nets import Model

MAX_PIXELS = 16384  # the covariance is P x P in float64: 2 GB at this size


class PCA(Model):
    OPTIONS = {"latent_dim": (int, "the number of principal components (the code's size)"),
               "output": (str, "decoder output: sigmoid ([0, 1] data) or tanh ([-1, 1] data)")}
    LOSS = "squared error per image"
    ARCHS, RECONS = (), ()

    def __init__(self, image_shape=(1, 28, 28), num_classes=None, latent_dim=20, output="sigmoid"):
        super().__init__()
        self.image_shape, pixels = tuple(image_shape), math.prod(image_shape)
        if not (isinstance(latent_dim, int) and 1 <= latent_dim <= pixels):
            raise ValueError(f"latent_dim={latent_dim!r} must be in 1..{pixels} (the pixels of an image)")
        if pixels > MAX_PIXELS:
            raise ValueError(f"pca needs the {pixels} x {pixels} covariance of the pixels; give "
                             f"images of at most {MAX_PIXELS} values (--image-size)")
        if output not in ("sigmoid", "tanh"):
            raise ValueError(f"output={output!r} is unknown; use 'sigmoid' or 'tanh'")
        self.latent_dim, self.output = latent_dim, output
        self.register_buffer("mean", torch.zeros(pixels))
        self.register_buffer("components", torch.eye(pixels, latent_dim))  # (P, D)
        self.register_buffer("eigenvalues", torch.zeros(pixels))  # all of them, descending

    @torch.no_grad()
    def before_epoch(self, batches):
        """The mean and covariance (over N) of every image in `batches`, in float64; its top eigenvectors."""
        total, outer, n = 0, 0, 0
        for x in batches:
            x = x.flatten(1).double()
            total, outer, n = total + x.sum(0), outer + x.T @ x, n + len(x)
        mean = total / n
        values, vectors = torch.linalg.eigh(outer / n - torch.outer(mean, mean))  # ascending
        self.mean.copy_(mean)
        self.eigenvalues.copy_(values.flip(0).clamp_min(0))
        self.components.copy_(vectors.flip(1)[:, :self.latent_dim])

    def encode(self, x, labels=None):
        return (x.flatten(1) - self.mean) @ self.components  # (B, D)

    def decode(self, h, labels=None):
        return (self.mean + h @ self.components.T).view(-1, *self.image_shape)

    def generate(self, h, labels=None):
        return self.decode(h)

    def reconstruct(self, x, labels=None):
        return self.decode(self.encode(x))

    def loss(self, input, target, labels=None):
        """The squared error ||target - x_hat||^2 per image, batch mean (the data's range)."""
        recon = (self.reconstruct(input) - target).pow(2).flatten(1).sum(1).mean()
        return {"loss": recon, "recon": recon}

    def parameter_groups(self):
        return {}

    def objectives(self, out):
        return {}


if __name__ == "__main__":
    # Runs alone: fits 2,000 random images and checks the training error against the eigenvalues.
    x = torch.rand(2000, 1, 28, 28) ** 3
    model = PCA((1, 28, 28), latent_dim=20)
    model.before_epoch(x.split(500))
    error = model.loss(x, x)["loss"].item()
    print(f"squared error {error:.4f} per image; discarded eigenvalues {model.eigenvalues[20:].sum():.4f}")
