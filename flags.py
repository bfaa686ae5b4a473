"""The command line of train.py: every flag, checked and resolved before any work starts.

`resolve(argv)` turns a command line into the run's config (and, with --resume, its
checkpoint), or raises ValueError with a one-line message saying what to do.
"""
import argparse
import os
import shlex
import time

import torch

import data
import runs

MODELS = ("vae", "ae", "vaegan")
# Flags that may differ from the saved config when resuming; anything else is refused.
RESUME_SAFE = {"epochs", "device", "log_interval", "data_root", "download", "resume",
               "compile", "channels_last", "data_budget"}


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, instead of usage + error
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser():
    p = Parser(prog="train.py", description="Train an autoencoder, VAE or VAE-GAN.",
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--model", default="vae", help=f"model family: {', '.join(MODELS)}")
    a("--dataset", default="mnist", help="mnist, fashion-mnist (or fashionmnist), cifar10")
    a("--data-root", default="./data", help="folder holding the datasets (torchvision layout)")
    a("--no-download", dest="download", action="store_false",
      help="never download; fail with a message if the files are missing")
    a("--arch", default="mlp", help="mlp or conv (three stride-2 convolutions 32-64-128)")
    a("--latent-dim", type=int, default=20, help="size of the latent code z")
    a("--hidden", default=None, help="mlp hidden widths, comma-separated, e.g. 300,100,10 "
      "(default 400; vaegan: latent_dim squared, reference 001's d^2)")
    a("--act", default="relu", help="hidden activation: relu or elu")
    a("--output", default="sigmoid", help="decoder output: sigmoid ([0, 1] data) or tanh ([-1, 1])")
    a("--recon", default=None, help="reconstruction loss: bce, mse or gaussian; vaegan also "
      "feature (Larsen's error on a discriminator layer) (default: bce for sigmoid output, "
      "mse for tanh)")
    a("--c", type=float, default=0.05, help="variance c of the gaussian decoder N(x_hat, cI)")
    a("--beta", type=float, default=1.0, help="weight of the KL term (beta-VAE); 1 is the ELBO")
    a("--sparsity", type=float, default=0.0, help="ae: weight L of the sparsity penalty, "
      "L * sum|h| (or the KL form with --sparsity-target)")
    a("--sparsity-target", type=float, default=None, help="ae: target mean activation rho of "
      "a sigmoid code; the penalty becomes L * sum_j KL(rho || rho_hat_j)")
    a("--code", default="linear", help="ae: the code's activation, linear, relu or sigmoid "
      "(relu for L1 sparsity; --sparsity-target implies sigmoid)")
    a("--contractive", type=float, default=0.0, help="ae: weight L of the contractive "
      "penalty L * ||dh/dx||_F^2 per image")
    a("--dropout", type=float, default=0.0, help="dropout after each hidden activation of the encoder")
    a("--batchnorm", action=argparse.BooleanOptionalAction, default=None,
      help="batch norm after each hidden layer (default: on for conv and for vaegan, off for "
      "vae and ae mlp); --no-batchnorm removes every batch norm layer")
    a("--weight-decay", type=float, default=0.0, help="L2 penalty, as Adam's weight_decay")
    a("--l1", type=float, default=0.0, help="L1 weight penalty: adds L1 * sum|w| to the loss")
    a("--augment", action="store_true", help="--hflip and --crop together")
    a("--hflip", action="store_true", help="random horizontal flips of training images")
    a("--crop", action="store_true", help="random crops with 4-pixel zero padding (training only)")
    a("--noise", default="", help="denoising: corrupt the input only, e.g. gaussian:0.5, "
      "saltpepper:0.2, mask:0.3 (fixed-seed corruption on the test split)")
    a("--epochs", type=int, default=10, help="number of epochs (raise it with --resume to extend)")
    a("--batch-size", type=int, default=128, help="images per training step")
    a("--lr", type=float, default=1e-3, help="Adam learning rate (vaegan: encoder and decoder)")
    a("--lr-disc", type=float, default=None, help="vaegan: the discriminator's learning rate "
      "(default: --lr)")
    a("--gamma", type=float, default=1.0, help="vaegan: weight of the reconstruction in the "
      "decoder's loss, gamma * recon + adversarial (both nats per image)")
    a("--feature-layer", type=int, default=None, help="vaegan --recon feature: the "
      "discriminator block whose output is compared: 1 for mlp, 1-3 for conv (default: the last)")
    a("--equilibrium", type=float, default=None, help="vaegan: gate updates around this "
      "discriminator loss (Larsen: 0.68); off by default")
    a("--margin", type=float, default=0.35, help="vaegan --equilibrium: skip the discriminator "
      "update below equilibrium - margin, the decoder's adversarial term above + margin")
    a("--grad-clip", type=float, default=None, help="clip the gradient norm (each VAE-GAN "
      "network's own) to this value; the norm before clipping is logged as grad_*")
    a("--scheduler", default="none", help="learning-rate schedule: none or step (StepLR)")
    a("--step-size", type=int, default=10, help="StepLR: epochs between decays")
    a("--lr-gamma", type=float, default=0.5, help="StepLR: factor applied to the learning rate")
    a("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    a("--data-budget", type=float, default=None, help="GB of training images allowed in device "
      "memory; a larger split stays in host memory and is copied a batch at a time (default: "
      "half the GPU's free memory; unlimited on a CPU)")
    a("--amp", action="store_true", help="bfloat16 autocast for the networks (losses stay "
      "float32) on CUDA and on CPUs with AMX; elsewhere ignored, with a note")
    a("--compile", action="store_true", help="torch.compile the model's loss (first steps are "
      "slow while it compiles)")
    a("--channels-last", action="store_true", help="conv arch: channels-last memory format for "
      "weights and batches (faster convolutions on recent GPUs)")
    a("--seed", type=int, default=1, help="seeds torch: weights, data order, z samples, dropout, "
      "augmentation (the test-split noise has its own fixed seed)")
    a("--out", default=None, help="run folder (default runs/<model>-<dataset>-<time>)")
    a("--resume", default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR")
    a("--log-interval", type=int, default=100, help="steps between progress lines")
    return p


def defaults():
    """Every flag at its default; fills the flags a saved run's config predates."""
    return vars(build_parser().parse_args([]))


def saved_config(run_dir):
    """A run folder's config.json, with defaults for flags added since it was written."""
    saved = runs.load_config(run_dir)
    if "lr_gamma" not in saved and "gamma" in saved:  # before the VAE-GAN, --gamma was StepLR's
        saved["lr_gamma"] = saved.pop("gamma")
    return {**defaults(), **saved}


def explicit_flags(parser, argv):
    """The dests of the flags actually typed on the command line."""
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_known_args(argv)[0]))


def default_hidden(cfg):
    """400 (pytorch/examples); the VAE-GAN's mlp has d^2 for latent size d (reference 001)."""
    return str(cfg["latent_dim"] ** 2) if cfg["model"] == "vaegan" and cfg["arch"] == "mlp" else "400"


def parse_hidden(spec):
    try:
        widths = tuple(int(w) for w in spec.split(","))
    except ValueError:
        widths = ()
    if not widths or min(widths) < 1:
        raise ValueError(f"bad --hidden {spec!r}; use positive widths, comma-separated, e.g. 400 "
                         f"or 300,100,10")
    return widths


def check(cfg, given):
    """Resolve defaults and reject bad values and combinations, before any work starts."""
    if cfg["model"] not in MODELS:
        raise ValueError(f"unknown --model {cfg['model']!r}; use {', '.join(MODELS)}")
    cfg["dataset"] = data.canonical_name(cfg["dataset"])
    for name, choices in (("arch", ("mlp", "conv")), ("act", ("relu", "elu")),
                          ("output", ("sigmoid", "tanh")), ("scheduler", ("none", "step"))):
        if cfg[name] not in choices:
            raise ValueError(f"unknown --{name} {cfg[name]!r}; use {' or '.join(choices)}")
    cfg["recon"] = cfg["recon"] or ("bce" if cfg["output"] == "sigmoid" else "mse")
    if cfg["recon"] == "feature" and cfg["model"] != "vaegan":
        raise ValueError("--recon feature compares discriminator features; use it with "
                         "--model vaegan")
    if cfg["recon"] not in ("bce", "mse", "gaussian", "feature"):
        raise ValueError(f"unknown --recon {cfg['recon']!r}; use bce, mse or gaussian "
                         f"(vaegan: also feature)")
    if cfg["recon"] == "bce" and cfg["output"] == "tanh":
        raise ValueError("--recon bce needs [0, 1] data and a sigmoid output; with --output tanh "
                         "use --recon mse or gaussian")
    if not 0 <= cfg["dropout"] < 1:
        raise ValueError(f"--dropout must be in [0, 1), got {cfg['dropout']}")
    for name in ("beta", "weight_decay", "l1"):
        if not 0 <= cfg[name] < float("inf"):
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {cfg[name]}")
    for name in ("lr", "c", "lr_gamma", "gamma", "lr_disc", "equilibrium", "grad_clip",
                 "data_budget"):
        if cfg[name] is not None and not 0 < cfg[name] < float("inf"):
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {cfg[name]}")
    if not 0 <= cfg["margin"] < float("inf"):
        raise ValueError(f"--margin must be >= 0, got {cfg['margin']}")
    for name in ("gamma", "lr_disc", "feature_layer", "equilibrium", "margin"):
        if name in given and cfg["model"] != "vaegan":
            hint = " (StepLR's factor is --lr-gamma)" if name == "gamma" else ""
            raise ValueError(f"--{name.replace('_', '-')} is a VAE-GAN setting; use it with "
                             f"--model vaegan{hint}")
    if "margin" in given and cfg["equilibrium"] is None:
        raise ValueError("--margin sets the width of equilibrium gating; add --equilibrium "
                         "(e.g. 0.68)")
    if cfg["feature_layer"] is not None:
        blocks = 3 if cfg["arch"] == "conv" else 1
        if cfg["recon"] != "feature":
            raise ValueError("--feature-layer picks the layer of --recon feature; add "
                             "--recon feature")
        if not 1 <= cfg["feature_layer"] <= blocks:
            raise ValueError(f"--feature-layer must be in 1..{blocks} for the {cfg['arch']} "
                             f"discriminator, got {cfg['feature_layer']}")
    for name in ("latent_dim", "epochs", "batch_size", "step_size", "log_interval"):
        if cfg[name] < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {cfg[name]}")
    for name in ("sparsity", "contractive"):
        if not 0 <= cfg[name] < float("inf"):
            raise ValueError(f"--{name} must be >= 0, got {cfg[name]}")
        if cfg[name] and cfg["model"] != "ae":
            raise ValueError(f"--{name} penalizes a deterministic code; use it with --model ae")
    if cfg["sparsity_target"] is not None:
        if not 0 < cfg["sparsity_target"] < 1 or not cfg["sparsity"]:
            raise ValueError(f"--sparsity-target must be in (0, 1) and needs --sparsity L > 0, "
                             f"got {cfg['sparsity_target']}")
    if cfg["code"] not in ("linear", "relu", "sigmoid"):
        raise ValueError(f"unknown --code {cfg['code']!r}; use linear, relu or sigmoid")
    if "code" in given and cfg["model"] != "ae":
        raise ValueError("--code sets the ae's code activation; use it with --model ae")
    if cfg["sparsity_target"] is not None:
        if "code" in given and cfg["code"] != "sigmoid":
            raise ValueError("--sparsity-target needs a sigmoid code (rho_hat in (0, 1)); "
                             "drop --code or use --code sigmoid")
        cfg["code"] = "sigmoid"
    if cfg["model"] == "ae" and "beta" in given:
        raise ValueError("--beta weights the VAE's KL term; the ae has none (use --model vae)")
    if cfg["arch"] == "conv" and "hidden" in given:
        raise ValueError("--hidden sets mlp widths; the conv arch's channels are fixed")
    cfg["hidden"] = cfg["hidden"] or default_hidden(cfg)
    cfg["hidden"] = ",".join(map(str, parse_hidden(cfg["hidden"])))
    data.parse_noise(cfg["noise"])
    if cfg["augment"]:
        cfg["hflip"] = cfg["crop"] = True
    if cfg["batchnorm"] is None:
        cfg["batchnorm"] = cfg["arch"] == "conv" or cfg["model"] == "vaegan"
    return cfg


def pick_device(name):
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else (
            "mps" if torch.backends.mps.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown --device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and (not torch.cuda.is_available()
                                  or (device.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"--device {name}: no such CUDA device here; use --device cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps: MPS is not available here; use --device cpu or auto")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown --device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


def check_out_dir(path):
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise ValueError(f"--out {path} already exists; use --resume {path} or another --out")
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"--out {path}: {parent} is a file, not a folder; choose another --out")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"--out {path}: {parent} is not writable; choose another --out")


def resolve(argv):
    """argv -> (config dict, checkpoint or None); raises ValueError for any bad input."""
    args = build_parser().parse_args(argv)
    given = explicit_flags(build_parser(), argv)
    if args.resume:
        ckpt_path = os.path.join(args.resume, "checkpoint.pt")
        cfg_path = os.path.join(args.resume, "config.json")
        if not os.path.isfile(cfg_path) or not os.path.isfile(ckpt_path):
            raise ValueError(f"--resume {args.resume}: no config.json and checkpoint.pt there; "
                             f"pass a run folder written by train.py")
        cfg = saved_config(args.resume)
        cfg["out"] = args.resume  # the folder as it is now: it may have been moved or copied
        new = check(dict(vars(args)), given)
        for name in sorted(given - RESUME_SAFE):
            if new[name] != cfg.get(name):
                raise ValueError(f"--{name.replace('_', '-')} differs from the saved run "
                                 f"({cfg.get(name)!r}); only {', '.join(sorted(RESUME_SAFE))} "
                                 f"may change with --resume")
        cfg.update({k: getattr(args, k) for k in given & RESUME_SAFE})
        cfg["resume_commands"] = cfg.get("resume_commands", []) + [shlex.join(["train.py"] + argv)]
        check(cfg, set())
        return cfg, runs.load_checkpoint(ckpt_path)
    cfg = check(vars(args), given)
    cfg["command"] = shlex.join(["train.py"] + argv)
    if cfg["out"] is None:
        cfg["out"] = os.path.join("runs", f"{cfg['model']}-{cfg['dataset']}-"
                                          f"{time.strftime('%Y%m%d-%H%M%S')}")
    check_out_dir(cfg["out"])
    return cfg, None
