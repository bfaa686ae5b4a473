"""The model registry, and the contract every model in it follows.

Adding a model is one file, and its line in MODELS below (with its import): train.py,
evaluate.py, the benchmarks and the tests build every model from here, and nothing
outside a model asks what type it is. cvae.py is a worked example (a VAE conditioned on
the label).

The contract
------------
Model(image_shape, num_classes=None, **options)
    image_shape (C, H, W) and num_classes (None for unlabelled data) come from the
    dataset; the options are the model's own keyword arguments. Their defaults are the
    constructor's (a subclass may set some and pass the rest on with **options), and
    OPTIONS = {name: (type, help)} lists them: train.py makes one flag of each (--name).
    A bad value raises ValueError naming the argument as `name=value`; train.py prints
    that as the one-line flag error (`--name value`). After construction every option is
    an attribute of the same name holding the resolved value (a None default made
    concrete), which config.json records. Every model has latent_dim (the code's size)
    and output ('sigmoid' for [0, 1] data, 'tanh' for [-1, 1]): the loop scales the data
    and the figures by it.

loss(input, target, labels) -> {term: tensor}
    One forward pass in training mode. Every term is a batch mean of per-image values,
    in nats per image (losses.py). "loss" is the number reported as the training loss;
    term_weights says what multiplies each other term in it ({"kl": beta}), so the
    logged terms add up. Terms named skips_* are counts per step (summed, not averaged).
    labels (B,) may be ignored. progress (an attribute) is the epochs done, a float the loop
    sets before each step, for schedules (the KL warm-up); None outside training.
parameter_groups() -> {name: [parameters]}
    One optimizer per group: {"model": all} for a VAE or AE; {"encoder", "decoder",
    "discriminator"} for the VAE-GAN (a group named "discriminator" takes --lr-disc).
objectives(out) -> {name: loss}
    Which loss each group descends this step, from the terms of one forward pass. Each
    loss is backpropagated into its own group's parameters only. A group left out is not
    updated this step (the VAE-GAN's equilibrium gating); objectives may add its decisions
    to out as skips_* terms. `gated` says whether it decides from the step's numbers (a
    host sync each step; refused under torchrun, where each process would decide alone).
test_loss(input, target, labels) -> {term: tensor}
    The evaluation number in evaluation mode, without beta or penalties: "loss" is the
    negative ELBO for a VAE, the reconstruction term for an AE. LOSS (a class attribute)
    says in a few words what that number is ("negative ELBO"), for legends and tables.
latent(x, labels=None) -> (B, D)
    The code figures, the probe and the metrics use: the posterior mean mu for a VAE,
    h for an AE. generate(z, labels=None) decodes codes to images in the data's range;
    reconstruct(x, labels=None) is generate(latent(x)). Neither changes batch-norm
    statistics, whatever the mode.
anomaly_scores(input, target, labels) -> {name: (B,)}
    The model's own per-image scores of how unusual each image is, higher for the more
    unusual (the VAE's negative ELBO, the VAE-GAN's discriminator); {} when it has none.
    evaluate.py adds the reconstruction error and the code's distance to the training codes.
closed_form (a class attribute)
    True for a model fitted in one pass instead of optimised (PCA): train.py calls
    fit(batches of training inputs) once, in its single epoch, and builds no optimizer; its
    parameter_groups() and objectives() are empty.
variational, can_sample, conditional (class attributes)
    A variational model also has encode(x, labels) -> (mu, logvar), decode(z, labels)
    -> logits, nll(logits, target) -> (B,), or (n, B) for logits (n, B, ...) holding n
    decodes of each target image, `likelihood`, the name of the decoder's distribution nll
    uses (losses.reconstruction), and c, a Gaussian decoder's variance, for the
    importance-sampled likelihood. A model with can_sample has sample(n, labels=None); a conditional one uses the labels.

train.py owns the optimisation for every model alike (the step, clipping, L1, AMP,
DistributedDataParallel, checkpoints, resume): no model file knows about them.
"""
import contextlib
import inspect

import torch

from ae import AE
from btcvae import BetaTCVAE
from cvae import CVAE
from pca import PCA
from vae import VAE
from vaegan import VAEGAN

MODELS = {"vae": VAE, "ae": AE, "vaegan": VAEGAN, "cvae": CVAE, "btcvae": BetaTCVAE, "pca": PCA}


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
