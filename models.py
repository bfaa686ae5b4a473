"""The model registry (GUIDE.md, "Adding a model"): every model follows nets.Model's contract, and
nothing outside a model asks its type. Model(image_shape, num_classes=None, **options); after
construction each option is an attribute holding its resolved value (config.json keeps them).
"""
import contextlib
import inspect

import torch

from ae import AE
from btcvae import BetaTCVAE
from cvae import CVAE
from factorvae import FactorVAE
from pca import PCA
from prior import Prior
from vae import VAE
from vqvae import VQVAE
from vaegan import VAEGAN

MODELS = {"vae": VAE, "ae": AE, "vaegan": VAEGAN, "cvae": CVAE, "btcvae": BetaTCVAE, "factorvae": FactorVAE,
          "pca": PCA, "vqvae": VQVAE, "prior": Prior}


def defaults(cls):
    """{option: default} from the constructors of cls and of the classes it extends."""
    found = {}
    for klass in reversed(cls.__mro__):
        if "__init__" in vars(klass):
            for p in inspect.signature(klass.__init__).parameters.values():
                if p.default is not p.empty:
                    found[p.name] = p.default
    return {name: found[name] for name in cls.OPTIONS}


def build(name, image_shape, num_classes=None, options=None, device=None):
    """MODELS[name] with these options; device="meta" checks the options and counts the
    parameters without allocating any weights."""
    cls = MODELS[name]
    unknown = set(options or {}) - set(cls.OPTIONS)
    if unknown:
        raise ValueError(f"{', '.join(sorted(unknown))}: not an option of the {name} model; its "
                         f"options are {', '.join(cls.OPTIONS)}")
    with torch.device(device) if device else contextlib.nullcontext():
        return cls(tuple(image_shape), num_classes, **(options or {}))


def from_config(cfg, device=None):
    """The model a run's config describes (train.py's config.json)."""
    return build(cfg["model"], cfg["image_shape"], cfg["num_classes"],
                 {k: cfg[k] for k in MODELS[cfg["model"]].OPTIONS if k in cfg}, device)


def resolved(model):
    """The model's options as resolved: {option: value}, as config.json keeps them."""
    return {name: list(v) if isinstance(v, tuple) else v
            for name, v in ((n, getattr(model, n)) for n in model.OPTIONS)}


def describe(model):
    """A model's main options in a few words: 'mlp 400, latent 20, bce'."""
    options = resolved(model)
    words = [options.get("arch", "") + (" " + "-".join(map(str, options["hidden"]))
                                        if options.get("hidden") else ""),
             f"latent {options['latent_dim']}" if "latent_dim" in options else ""]
    words = [w for w in words if w]
    if "recon" in options:
        words.append(options["recon"] + (f" c={options['c']:g}" if options["recon"] == "gaussian" else ""))
    if options.get("beta", 1) != 1:
        words.append(f"beta {options['beta']:g}")
    return ", ".join(words)
