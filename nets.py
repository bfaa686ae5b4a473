"""Network blocks every model builds on, and `Model`, the base class of the model contract.

A model (models.py keeps the registry) is a `Model` with
    OPTIONS                    {option: (type, help)}: its keyword arguments, one train.py flag
                               each; a bad value raises ValueError naming it as name=value
    loss(input, target, labels)       {term: batch mean, nats per image}, "loss" among them
    test_loss(input, target, labels)  the evaluation number (no beta, no penalties)
    parameter_groups(), objectives(out)   which parameters each objective trains (ADAM: a group's betas)
    latent(x, labels), posterior_sample(x, labels), generate(z, labels), reconstruct(x, labels),
    sample(n, generator, labels)
    and encode, decode, nll for a likelihood model (`likelihood` names the decoder's distribution).
The defaults below make the rest optional, so callers never ask what a model is. Imports only torch.
"""
import contextlib
import math

import torch
import torch.nn as nn

ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU}
HIDDEN = (400,)  # the MLP's default hidden widths: pytorch/examples' 784-400-20
ARCHS = ("mlp", "conv", "conv3x3", "conv64")
CONV3X3_WIDTHS = (32, 64, 32)  # the Gaussian-decoder study's CNN
CONV64_WIDTHS = (32, 32, 64, 64)  # disentanglement_lib's, for 64x64 images
BATCHNORM = {"conv": True, "conv3x3": True}  # an arch's default (batchnorm=None); the others have none


@contextlib.contextmanager
def overriding(modules, values):
    """Each module's attributes set to its dict of values (or all to one dict) inside; put back after."""
    values = [values] * len(modules) if isinstance(values, dict) else values
    saved = [{name: getattr(m, name) for name in v} for m, v in zip(modules, values)]

    def put(settings):
        for m, v in zip(modules, settings):
            for name, value in v.items():
                setattr(m, name, value)
    put(values)
    try:
        yield
    finally:
        put(saved)


def evaluating(model):
    """Evaluation mode inside (running batch-norm statistics, no dropout); the modules' own after."""
    return overriding(list(model.modules()), {"training": False})


class Model(nn.Module):
    """The contract's defaults (module docstring)."""
    OPTIONS = {}
    LOSS = "test loss"  # what test_loss's "loss" is, in a few words, for legends and tables
    CODE, UNIT = "code h", "h"  # what latent() returns, and a unit of it, for figure labels
    likelihood = None  # the decoder's distribution (losses.reconstruction), for likelihood models
    term_weights = {}  # what multiplies each logged term in "loss", when not 1
    progress = None  # epochs done, a float the loop sets before each step (KL schedules)
    ADAM = {}  # {parameter group: Adam keywords beside --lr}, e.g. the FactorVAE discriminator's betas

    def activate(self, logits):
        return torch.sigmoid(logits) if self.output == "sigmoid" else torch.tanh(logits)

    def test_loss(self, input, target, labels=None):
        return self.loss(input, target, labels)

    def latent(self, x, labels=None):
        """The code figures and metrics use (a VAE's posterior mean), in evaluation mode; differentiable."""
        with evaluating(self):
            return self.encode(x, labels)

    def posterior_sample(self, x, labels=None):
        """A draw of q(z|x), in evaluation mode; a code with no posterior (the AE's h) is its own draw."""
        return self.latent(x, labels)

    @torch.no_grad()
    def generate(self, z, labels=None):
        """Codes decoded to images in the data's range, in evaluation mode."""
        with evaluating(self):
            return self.activate(self.decode(z, labels))

    @torch.no_grad()
    def reconstruct(self, x, labels=None):
        return self.generate(self.latent(x, labels), labels)

    def sample(self, n, generator=None, labels=None):
        """n images decoded from prior draws (z from `generator`, on the CPU); None: no prior."""
        return None

    def default_labels(self, n):
        """A conditional model's labels when given none, (n,) on its device; None: no labels."""
        return None

    def kl_per_dim(self, x, labels=None):
        """KL(q(z|x) || p(z)) per image and latent dimension (B, D); None without a posterior."""
        return None

    def anomaly_scores(self, input, target, labels=None):
        """{score: (B,)}, higher for a more unusual image; evaluate.py adds its own."""
        return {}

    def before_epoch(self, batches):
        """Called before each epoch with the training batches; a closed-form model (PCA) fits here."""

    def parameter_groups(self):
        return {"model": list(self.parameters())}

    def objectives(self, out):
        return {"model": out["loss"]}


def block(layer, width, batchnorm, act, dropout=0.0, dims=1):
    """[layer, (BatchNorm), act, (Dropout)]; act a name of ACTIVATIONS or a module."""
    bn = [(nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(width)] if batchnorm else []
    return [layer, *bn, ACTIVATIONS[act]() if isinstance(act, str) else act,
            *([nn.Dropout(dropout)] if dropout > 0 else [])]


def mlp_encoder(image_shape, hidden, out_dim, act="relu", dropout=0.0, batchnorm=False):
    """Flatten, then a block per hidden width, then Linear."""
    layers, width = [nn.Flatten()], math.prod(image_shape)
    for h in hidden:
        layers += block(nn.Linear(width, h), h, batchnorm, act, dropout)
        width = h
    return nn.Sequential(*layers, nn.Linear(width, out_dim))


def mlp_decoder(image_shape, hidden, latent_dim, act="relu", batchnorm=False):
    """The encoder's mirror image; returns pre-activations shaped like the image."""
    layers, width = [], latent_dim
    for h in reversed(hidden):
        layers += block(nn.Linear(width, h), h, batchnorm, act)
        width = h
    return nn.Sequential(*layers, nn.Linear(width, math.prod(image_shape)), nn.Unflatten(1, image_shape))


def conv_kernels(image_shape):
    """Kernel sizes of the stride-2 convolutions that take the image to a 4x4 map: kernel 4
    for sides 4 * 2^k (32 -> 16 -> 8 -> 4); 28x28 gets 4, 4, 3 (28 -> 14 -> 7 -> 4), which the
    decoder mirrors back to exactly 28x28 with no padding or cropping."""
    h, w = image_shape[-2:]
    if (h, w) == (28, 28):
        return (4, 4, 3)
    stages = max(0, round(math.log2(h / 4)))
    if h != w or h < 16 or h != 4 * 2 ** stages:
        raise ValueError(f"image_shape={tuple(image_shape)}: the conv arch takes square images of 28 or 4 * 2^k "
                         f"pixels (16, 32, 64, 128, ...); resize them with --image-size, or use arch='mlp'")
    return (4,) * stages


def conv_widths(kernels, first=32, most=512):
    """Channels doubling from `first` up to `most` (a 1024x1024 VAE keeps 31 M parameters, not 362 M)."""
    return [min(first * 2 ** i, most) for i in range(len(kernels))]


def conv_encoder(image_shape, out_dim, act="relu", dropout=0.0, batchnorm=True, widths=None, kernels=None):
    """Stride-2 convolution blocks, by default 32-64-128(-256...) down to 4x4, then a linear layer."""
    kernels = kernels or conv_kernels(image_shape)
    layers, channels, (h, w) = [], image_shape[0], image_shape[-2:]
    for width, k in zip(widths or conv_widths(kernels), kernels):
        layers += block(nn.Conv2d(channels, width, k, stride=2, padding=1), width, batchnorm, act, dropout, 2)
        channels, h, w = width, (h - k) // 2 + 2, (w - k) // 2 + 2  # padding 1: (side + 2 - k) // 2 + 1
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * h * w, out_dim))


def conv_decoder(image_shape, latent_dim, act="relu", batchnorm=True):
    """Linear to the encoder's last 4x4 map, then transposed convolutions mirroring it."""
    kernels = conv_kernels(image_shape)
    widths = conv_widths(kernels)[::-1] + [image_shape[0]]  # e.g. 128, 64, 32, C
    layers = [nn.Linear(latent_dim, widths[0] * 4 * 4), nn.Unflatten(1, (widths[0], 4, 4))]
    for i, k in enumerate(reversed(kernels)):
        up = nn.ConvTranspose2d(widths[i], widths[i + 1], k, stride=2, padding=1)
        layers += block(up, widths[i + 1], batchnorm, act, dims=2) if i < len(kernels) - 1 else [up]
    return nn.Sequential(*layers)


def conv3x3_decoder(image_shape, latent_dim, act="elu", batchnorm=True):
    """The Gaussian-decoder study's CNN decoder: linear to 32x4x4, act (the study prints one there),
    3x3 transposed blocks (output padding makes 4 -> 7 -> 14 -> 28 exact), a 3x3 convolution."""
    sides = [tuple(image_shape[-2:])]
    for _ in range(3):  # each 3x3 stride-2 convolution's sides, from the last: (4, 4), (7, 7), (14, 14), (28, 28)
        sides.insert(0, tuple((s + 1) // 2 for s in sides[0]))
    widths = CONV3X3_WIDTHS[::-1] + CONV3X3_WIDTHS[:1]  # 32, 64, 32, 32
    layers = [nn.Linear(latent_dim, widths[0] * sides[0][0] * sides[0][1]), ACTIVATIONS[act](),
              nn.Unflatten(1, (widths[0], *sides[0]))]
    for i in range(3):
        pad = tuple(out - (2 * s - 1) for out, s in zip(sides[i + 1], sides[i]))  # 0 or 1
        layers += block(nn.ConvTranspose2d(widths[i], widths[i + 1], 3, stride=2, padding=1,
                                           output_padding=pad), widths[i + 1], batchnorm, act, dims=2)
    return nn.Sequential(*layers, nn.Conv2d(widths[-1], image_shape[0], 3, padding=1))


def conv64_decoder(image_shape, latent_dim, act="relu", batchnorm=False):
    """disentanglement_lib's deconv_decoder: linear 256, linear to 64x4x4, 4x4 stride-2 transposed blocks
    64-32-32, then one to the image's channels (4 -> 8 -> 16 -> 32 -> 64)."""
    layers = [*block(nn.Linear(latent_dim, 256), 256, batchnorm, act),
              *block(nn.Linear(256, 64 * 4 * 4), 64 * 4 * 4, batchnorm, act), nn.Unflatten(1, (64, 4, 4))]
    for c_in, c_out in ((64, 64), (64, 32), (32, 32)):
        layers += block(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), c_out, batchnorm, act, dims=2)
    return nn.Sequential(*layers, nn.ConvTranspose2d(32, image_shape[0], 4, stride=2, padding=1))


def build_networks(image_shape, code_dim, latent_dim, arch="mlp", hidden=HIDDEN, act="relu",
                   dropout=0.0, batchnorm=False):
    """Encoder (image -> code_dim numbers) and decoder (latent_dim -> pre-activations)."""
    if arch == "mlp":
        return (mlp_encoder(image_shape, hidden, code_dim, act, dropout, batchnorm),
                mlp_decoder(image_shape, hidden, latent_dim, act, batchnorm))
    if arch == "conv64":  # disentanglement_lib's conv_encoder: 4x4 stride-2 blocks 32-32-64-64, 256, linear
        layers = list(conv_encoder(image_shape, 256, act, dropout, batchnorm, CONV64_WIDTHS, (4,) * 4))
        layers += block(layers.pop(), 256, batchnorm, act, dropout)  # its linear 256 as a hidden block
        return nn.Sequential(*layers, nn.Linear(256, code_dim)), conv64_decoder(image_shape, latent_dim, act,
                                                                                  batchnorm)
    if arch == "conv3x3":  # the encoder: 3x3 stride-2 blocks 32-64-32, then linear
        return (conv_encoder(image_shape, code_dim, act, dropout, batchnorm, CONV3X3_WIDTHS, (3, 3, 3)),
                conv3x3_decoder(image_shape, latent_dim, act, batchnorm))
    return (conv_encoder(image_shape, code_dim, act, dropout, batchnorm),
            conv_decoder(image_shape, latent_dim, act, batchnorm))


NETWORK_OPTIONS = {
    "latent_dim": (int, "size of the code: z for the VAE family, h for the AE"),
    "arch": (str, "mlp; conv (stride-2 convolutions 32-64-128 down to 4x4); conv3x3 (three 3x3 "
                  "stride-2 convolutions 32-64-32, the Gaussian-decoder study's CNN); or conv64 (64x64 "
                  "images: 4x4 stride-2 convolutions 32-32-64-64 then 256, disentanglement_lib's, as "
                  "Kim & Mnih and Locatello et al. on dSprites)"),
    "hidden": (tuple, "mlp hidden widths, comma-separated, e.g. 300,100,10 (default 400; "
                      "vaegan: latent_dim squared, the d^2 of the MNIST VAE-GAN study)"),
    "act": (str, "hidden activation: relu or elu"),
    "dropout": (float, "dropout after each hidden activation of the encoder"),
    "batchnorm": (bool, "batch norm after each hidden layer (default: on for conv, conv3x3 and "
                        "vaegan, off for mlp and conv64); --no-batchnorm removes every batch norm layer"),
    "output": (str, "decoder output: sigmoid ([0, 1] data) or tanh ([-1, 1] data)"),
    "recon": (str, "reconstruction loss: bce, mse or gaussian; vaegan also feature (Larsen's "
                   "error on a discriminator layer) (default: bce for sigmoid, mse for tanh)"),
    "c": (float, "variance c of the gaussian decoder N(x_hat, cI)"),
}


def check_networks(image_shape, latent_dim, arch, hidden, act, dropout, archs=ARCHS):
    """ValueError for options no network can be built with."""
    if arch not in archs:
        raise ValueError(f"arch={arch!r} is unknown; use {', '.join(map(repr, archs))}")
    if arch == "conv":
        conv_kernels(image_shape)
    if arch == "conv64" and tuple(image_shape[-2:]) != (64, 64):
        raise ValueError(f"image_shape={tuple(image_shape)}: the conv64 arch takes 64x64 images; resize them "
                         f"with --image-size 64, or use arch='conv'")
    if arch == "conv3x3" and min(image_shape[-2:]) < 8:
        raise ValueError(f"image_shape={tuple(image_shape)}: the conv3x3 arch needs sides of 8 pixels or more")
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


def at_least(low, **values):
    """ValueError naming the first value that is not a finite number >= low."""
    for name, v in values.items():
        if not (isinstance(v, (int, float)) and low <= v < math.inf):
            raise ValueError(f"{name}={v!r} must be >= {low:g}")


def positive(**values):
    """ValueError naming the first value that is not a finite number > 0."""
    for name, v in values.items():
        if not (isinstance(v, (int, float)) and 0 < v < math.inf):
            raise ValueError(f"{name}={v!r} must be > 0")


def normalizes(model):
    """Whether the model has batch norm layers (they cannot normalize a batch of one image)."""
    return bool(batch_norms(model))


def batch_norms(net):
    """The batch-norm layers of net."""
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
