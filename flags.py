"""The command line of train.py: every flag, checked and resolved before any work starts.

Run-level flags (data, epochs, optimizer, device, output) are declared here; each model
declares its own options (models.py's contract), and they become flags here too, checked
by the model itself. `resolve(argv)` turns a command line into the run's config (and,
with --resume, its checkpoint), or raises ValueError with a one-line message saying
what to do.
"""
import argparse
import json
import os
import re
import shlex
import time

import torch

import data
import models
import nets
import parallel
import runs

# Flags that may differ from the saved config when resuming; anything else is refused.
RESUME_SAFE = {"epochs", "device", "log_interval", "data_root", "download", "resume",
               "compile", "channels_last", "data_budget"}


ADDED = {"image_size": None, "channels": None, "val_split": 0, "skip_bad_images": False,
         "train_classes": None, "exclude_classes": None}  # run-level flags added after format 2
MODEL_ADDED = {"kl_warmup": 0.0, "kl_cycle": 0.0, "free_bits": 0.0, "capacity": 0.0,
               "capacity_epochs": 0.0}  # model options added after format 2, at their "off"


OPTIMISATION = {"lr", "lr_disc", "batch_size", "weight_decay", "l1", "augment", "hflip", "crop",
                "scheduler", "step_size", "lr_gamma", "grad_clip", "amp", "compile",
                "channels_last"}  # flags of the training loop: a closed-form model has none


def fill_added(saved):
    """A saved config (or a checkpoint's) of an older version with the flags and the model
    options added since, at the values that reproduce what that version did."""
    options = models.MODELS[saved["model"]].OPTIONS if saved.get("model") in models.MODELS else {}
    for key, value in [*ADDED.items(), *((k, v) for k, v in MODEL_ADDED.items() if k in options)]:
        saved.setdefault(key, value)
    return saved


class Help(argparse.HelpFormatter):
    """--help that says each flag's default once: "(default: X)" after its help, unless the
    help already says it, and never for a switch (off unless given) or a flag that is unset
    by default (its help says what happens then)."""
    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or not action.option_strings or action.nargs == 0
                or action.default in (None, "", argparse.SUPPRESS)):
            return text
        return text + " (default: %(default)s)"


def description(doc):
    """A script's first docstring paragraph on one line: its --help description."""
    return " ".join(doc.strip().split("\n\n")[0].split())


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, instead of usage + error
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def split_size(text):
    """--val-split: a count of images (0, 5000) or a fraction in (0, 1) (0.1)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if 0 < value < 1:
        return value
    if 0 <= value < 2**63 and value == int(value):
        return int(value)
    raise argparse.ArgumentTypeError(f"{text!r}: give a count of images (5000) or a fraction "
                                     f"in (0, 1) (0.1)")


def widths(text):
    """'300,100' -> (300, 100)."""
    try:
        values = tuple(int(w) for w in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"bad widths {text!r}; use positive integers, "
                                         f"comma-separated, e.g. 400 or 300,100,10")
    return values


def model_flags(p):
    """One flag per model option (the union over MODELS), with its models and its default
    per model in the help (unless the help says it)."""
    seen = {}
    for name, cls in models.MODELS.items():
        for option, (kind, text) in cls.OPTIONS.items():
            seen.setdefault(option, (kind, text, {}))[2][name] = models.defaults(cls)[option]
    group = p.add_argument_group("model options", "declared by each model (models.py); a "
                                 "flag of another model than --model is refused")
    for option, (kind, text, by_model) in seen.items():
        if len(by_model) < len(models.MODELS):
            text = f"{'/'.join(by_model)}: {text}"
        given = {m: v for m, v in by_model.items() if v is not None}
        if given and "default" not in text:
            same = len({repr(v) for v in by_model.values()}) == 1
            text += (f" (default: {next(iter(given.values()))})" if same else " (default: " +
                     ", ".join(f"{m} {v}" for m, v in given.items()) + ")")
        elif "default" not in text:
            text += " (default: none)"
        flag, extra = "--" + option.replace("_", "-"), {"default": argparse.SUPPRESS, "help": text}
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **extra)
        else:
            group.add_argument(flag, type=widths if kind is tuple else kind, **extra)


def build_parser():
    p = Parser(prog="train.py",
               description="Train an autoencoder, a VAE, a VAE-GAN or a conditional VAE.",
               formatter_class=Help)
    a = p.add_argument
    a("--model", default="vae", help=f"model family: {', '.join(models.MODELS)} (models.py)")
    a("--dataset", default="mnist", help="mnist, fashion-mnist (or fashionmnist), cifar10, celeba, "
      "npz:FILE[,TEST_FILE] (arrays x, y) or folder:PATH (image files; class subfolders)")
    a("--image-size", type=int, default=None, help="resize (shorter side) and centre-crop "
      "every image to SIZE x SIZE (16 to 1024); the conv arch takes 28 or 16, 32, 64, 128, ...")
    a("--channels", type=int, default=None, help="1 (grey) or 3 (colour): convert the images "
      "(default: the dataset's own)")
    a("--skip-bad-images", action="store_true", help="folder: and celeba: leave out image "
      "files that do not decode (counted), instead of stopping")
    a("--data-root", default="./data", help="folder holding the datasets (torchvision layout)")
    a("--no-download", dest="download", action="store_false",
      help="never download; fail with a message if the files are missing")
    a("--val-split", type=split_size, default=0, help="hold out this many training images "
      "(or this fraction, below 1) as a validation split, the same in every run: best.pt is "
      "chosen on it (0: none, and no best.pt; the test split is never used to choose)")
    a("--classes", dest="train_classes", default=None, help="train only on these classes, by "
      "index or name, comma-separated (3, or 0,1,2, or Trouser): one-class training for "
      "anomaly detection; the test split stays whole (default: every class)")
    a("--exclude-classes", default=None, help="train on every class but these (as --classes)")
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
    a("--lr-disc", type=float, default=None, help="a discriminator's learning rate (vaegan; "
      "default: --lr)")
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
    model_flags(p)
    return p


def words(name, value, source):
    """A flag given by name and value (sweep.py's --vary, train.fit's keywords) as train.py's
    words: ("lr", "0.01") -> ['--lr=0.01'], ("batchnorm", "false") -> ['--no-batchnorm'],
    ("augment", "false") -> []. source names the caller in errors."""
    action = next((a for a in build_parser()._actions if a.dest == name.replace("-", "_")), None)
    if action is None:
        raise ValueError(f"{source} {name}: train.py has no such flag")
    if action.nargs != 0:  # one word, so that a value may start with "-" (--lr=-1 is refused
        return [f"{action.option_strings[0]}={value}"]  # by train.py, not misread by argparse)
    if str(value).lower() not in ("true", "false"):
        raise ValueError(f"{source} {name}={value}: an on/off flag takes true or false")
    on = str(value).lower() == "true"
    if isinstance(action, argparse.BooleanOptionalAction):  # --batchnorm / --no-batchnorm
        return [action.option_strings[0] if on else action.option_strings[1]]
    if isinstance(action, argparse._StoreFalseAction):  # --no-download: present when false
        return [] if on else [action.option_strings[0]]
    return [action.option_strings[0]] if on else []  # --augment: present or absent


def safe_flags():
    """RESUME_SAFE as the flags a user types."""
    flags = [a.option_strings[0] for a in build_parser()._actions if a.dest in RESUME_SAFE]
    return ", ".join(sorted(flags))


def defaults():
    """Every run-level flag at its default."""
    return vars(build_parser().parse_args([]))


def saved_config(run_dir):
    """A run folder's config.json, checked: the format this code reads, and every option of
    its model valid (ValueError otherwise)."""
    path = os.path.join(run_dir, "config.json")
    saved = runs.load_config(run_dir)
    model = saved.get("model") if isinstance(saved, dict) else None
    if model not in models.MODELS:
        raise ValueError(f"{run_dir}: config.json is not a train.py run of "
                         f"{', '.join(models.MODELS)} (model {model!r}); pass a folder written "
                         f"by train.py")
    runs.check_format(saved, path)
    fill_added(saved)  # flags and options added since format 2: older runs did without
    missing = sorted((set(defaults()) | {"image_shape", "num_classes"}
                      | set(models.MODELS[model].OPTIONS)) - set(saved))
    if missing:
        raise ValueError(f"{path} is not a complete train.py config (it lacks "
                         f"{', '.join(missing)})")
    is_a = {tuple: lambda v: isinstance(v, list) and all(type(w) is int for w in v),
            float: lambda v: type(v) in (int, float)}
    for name, (kind, none_ok) in saved_types(model).items():
        value = saved[name]
        if not (value is None and none_ok or is_a.get(kind, lambda v: type(v) is kind)(value)):
            what = {tuple: "a list of integers", float: "a number", int: "an integer",
                    bool: "true or false", str: "a string"}[kind]
            raise ValueError(f"{path}: {name} is {json.dumps(value)}, not {what}; undo the edit, "
                             f"or start a new run")
    seen = saved.get("data")  # train.check_data's record of the data
    if seen is not None and not (isinstance(seen, dict) and all(
            isinstance(seen.get(k), list) and len(seen[k]) == 2 for k in ("train", "test"))):
        raise ValueError(f"{path}: data is {json.dumps(seen)[:60]}, not train.py's record of the "
                         f"data (train and test: [images, hash]); undo the edit, or remove the key")
    return saved


def saved_types(model):
    """{config key: (type, whether null is allowed)} for every flag and option of a run."""
    types, run_level = {}, defaults()
    for a in build_parser()._actions:
        if a.dest in run_level:
            kind = bool if a.nargs == 0 else {int: int, float: float, split_size: float}.get(a.type, str)
            if a.dest in ("train_classes", "exclude_classes"):
                kind = tuple  # saved resolved: a list of class indices
            types[a.dest] = (kind, a.default is None)
    cls = models.MODELS[model]
    for name, default in models.defaults(cls).items():
        types[name] = (cls.OPTIONS[name][0], default is None)
    return types


def explicit_flags(parser, argv):
    """The dests of the flags actually typed on the command line."""
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_known_args(argv)[0]))


def in_flag_words(message, names):
    """A model's `name=value` words as the command line's `--name value`."""
    pattern = r"\b(" + "|".join(map(re.escape, names)) + r")=('?)([^',;)\s]*)\2"
    return re.sub(pattern, lambda m: f"--{m[1].replace('_', '-')} {m[3]}", message)


def check_model(cfg, given=()):
    """Build the model on the meta device (no memory): its own checks, in flag words;
    then record its resolved options in cfg. Returns the model."""
    cls, run_level = models.MODELS[cfg["model"]], defaults()
    foreign = sorted(n for n in given if n not in cls.OPTIONS and n not in run_level)
    if foreign:
        owners = [m for m, c in models.MODELS.items() if foreign[0] in c.OPTIONS]
        raise ValueError(f"--{foreign[0].replace('_', '-')} is not an option of --model "
                         f"{cfg['model']}; it belongs to {', '.join(owners)}")
    try:
        model = models.from_config(cfg, device="meta")
    except ValueError as e:
        raise ValueError(in_flag_words(str(e), cls.OPTIONS)) from None
    cfg.update(models.resolved(model))
    if not model.parameter_groups():  # fitted in closed form (PCA): one pass, no optimiser
        useless = sorted(given & OPTIMISATION) + (["epochs"] if "epochs" in given and cfg["epochs"] != 1 else [])
        if useless:
            raise ValueError(f"--model {cfg['model']} is fitted in closed form in one pass; drop "
                             f"--{useless[0].replace('_', '-')}")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun's processes
            raise ValueError(f"--model {cfg['model']} is fitted in one process; run it without torchrun")
        cfg["epochs"] = 1
    if cfg["lr_disc"] is not None and "discriminator" not in model.parameter_groups():
        raise ValueError(f"--lr-disc sets a discriminator's learning rate; the {cfg['model']} "
                         f"model has none")
    return model


def check(cfg, given):
    """Resolve defaults and reject bad values and combinations, before any work starts."""
    if cfg["model"] not in models.MODELS:
        raise ValueError(f"unknown --model {cfg['model']!r}; use {', '.join(models.MODELS)}")
    cfg["dataset"] = data.canonical_name(cfg["dataset"])
    if cfg["image_size"] is not None and not 16 <= cfg["image_size"] <= 1024:
        raise ValueError(f"--image-size must be in [16, 1024], got {cfg['image_size']}")
    if cfg["channels"] not in (None, 1, 3):
        raise ValueError(f"--channels must be 1 (grey) or 3 (colour), got {cfg['channels']}")
    shape, classes = data.describe(cfg["dataset"], cfg["image_size"], cfg["channels"], cfg["val_split"])
    cfg["image_shape"], cfg["classes"] = list(shape), classes
    cfg["num_classes"] = len(classes) if classes else None
    for name, flag in (("train_classes", "--classes"), ("exclude_classes", "--exclude-classes")):
        if cfg[name] is not None:
            cfg[name] = class_indices(cfg[name], classes, flag, cfg["dataset"])
    if cfg["train_classes"] is not None and cfg["exclude_classes"] is not None:
        raise ValueError("give --classes or --exclude-classes, not both")
    if cfg["exclude_classes"] is not None and len(cfg["exclude_classes"]) == len(classes):
        raise ValueError("--exclude-classes leaves no class to train on")
    if cfg["train_classes"] is not None and len(cfg["train_classes"]) == len(classes):
        raise ValueError("--classes names every class; leave it out to train on all of them")
    if cfg["scheduler"] not in ("none", "step"):
        raise ValueError(f"unknown --scheduler {cfg['scheduler']!r}; use none or step")
    for name in ("weight_decay", "l1"):
        if not 0 <= cfg[name] < float("inf"):
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {cfg[name]}")
    for name in ("lr", "lr_gamma", "lr_disc", "grad_clip", "data_budget"):
        if cfg[name] is not None and not 0 < cfg[name] < float("inf"):
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {cfg[name]}")
    for name in ("epochs", "batch_size", "step_size", "log_interval"):
        if cfg[name] < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {cfg[name]}")
    if not 0 <= cfg["seed"] < 2**63:
        raise ValueError(f"--seed must be in [0, 2^63), got {cfg['seed']}")
    data.parse_noise(cfg["noise"])
    if cfg["augment"]:
        cfg["hflip"] = cfg["crop"] = True
    check_model(cfg, given)
    return cfg


def class_indices(value, classes, flag, dataset):
    """--classes '0,1' or 'Trouser,Bag' (or a saved list) -> sorted class indices."""
    if not classes:
        raise ValueError(f"{flag} needs labelled data; {dataset} has no labels")
    tokens = value if isinstance(value, list) else [t.strip() for t in str(value).split(",")]
    names = {c.lower(): i for i, c in enumerate(classes)}
    found = []
    for t in tokens:  # a class's name first (folder classes may be named "1", "2"), then an index
        i = names.get(str(t).lower(), int(t) if isinstance(t, int) or str(t).isdigit() else -1)
        if not 0 <= i < len(classes):
            raise ValueError(f"{flag}: {t!r} is not a class of {dataset}; give indices 0 to "
                             f"{len(classes) - 1} or names ({', '.join(classes[:10])}"
                             f"{', ...' if len(classes) > 10 else ''})")
        found.append(i)
    return sorted(set(found))


def check_resources(cfg):
    """What the machine must allow before any work: the device, the batch per process, the
    model's memory, a compiler for --compile."""
    processes = parallel.world()[1]
    if parallel.active() and cfg["batch_size"] % processes:
        raise ValueError(f"--batch-size {cfg['batch_size']} is the global batch; make it "
                         f"a multiple of the {processes} processes")
    model = models.from_config(cfg, device="meta")  # no memory: for its checks only
    device = pick_device(cfg["device"])
    missing = cfg["compile"] and parallel.missing_compiler(device)
    if missing:
        raise ValueError(missing)
    if cfg["batch_size"] // processes < 2 and nets.normalizes(model):
        raise ValueError(f"--batch-size {cfg['batch_size']}"
                         f"{f' over {processes} processes' if processes > 1 else ''} gives "
                         f"batches of one image, which batch norm cannot normalize; use "
                         f"--batch-size {2 * processes} or more, or --no-batchnorm")
    params = sum(p.numel() for p in model.parameters())  # weights, gradients, Adam's 2 moments
    if device.type == "cuda":
        have = torch.cuda.mem_get_info(device)[0]
    else:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    if have and 16 * params > have:
        raise ValueError(f"the {cfg['model']} model has {params:,} parameters: {16 * params / 2**30:,.1f} "
                         f"GB with their gradients and Adam's state, over the {have / 2**30:.1f} GB "
                         f"of {device}; lower --hidden or --latent-dim")


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
    if not path:
        raise ValueError("--out '' names no folder; give a folder name")
    if os.path.exists(path) and (not os.path.isdir(path) or not runs.unstarted(path)):
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
    if args.resume is not None:
        ckpt_path = os.path.join(args.resume, "checkpoint.pt")
        cfg_path = os.path.join(args.resume, "config.json")
        if os.path.isfile(cfg_path) and not os.path.isfile(ckpt_path) and runs.unstarted(args.resume):
            raise ValueError(f"--resume {args.resume}: it stopped before saving anything (no "
                             f"checkpoint.pt); start it again with --out {args.resume} (the "
                             f"folder may be reused) and its flags (config.json, \"command\")")
        if not os.path.isfile(cfg_path) or not os.path.isfile(ckpt_path):
            raise ValueError(f"--resume {args.resume!r}: no config.json and checkpoint.pt there; "
                             f"pass a run folder written by train.py")
        cfg = saved_config(args.resume)
        typed = {k: getattr(args, k) for k in given}
        try:
            new = check({**cfg, **typed}, given)
        except ValueError:  # say first which typed flag differs, if one does
            new = None
        for name in sorted(given - RESUME_SAFE):
            value = new[name] if new else (list(typed[name]) if isinstance(typed[name], tuple)
                                           else typed[name])
            if value != cfg.get(name):
                raise ValueError(f"--{name.replace('_', '-')} differs from the saved run "
                                 f"({cfg.get(name)!r}); only {safe_flags()} may change with "
                                 f"--resume: start a new run (--out) for another value")
        if new is None:
            check({**cfg, **typed}, given)  # its own message
        cfg.update({k: getattr(args, k) for k in given & RESUME_SAFE})
        cfg["out"] = args.resume  # the folder as it is now: it may have been moved or copied
        cfg["resume_commands"] = cfg.get("resume_commands", []) + [shlex.join(["train.py"] + argv)]
        check(cfg, set())
        ckpt = runs.load_checkpoint(ckpt_path)
        fill_added(ckpt["config"])  # a checkpoint of an older version lacks them too
        runs.check_pair(ckpt, cfg, ckpt_path, ignore=RESUME_SAFE | {"classes"})  # derived
        done = ckpt["epoch"] + (ckpt["mid_epoch"] is not None)  # an unfinished epoch counts
        if cfg["epochs"] < done:
            raise ValueError(f"--epochs {cfg['epochs']} is below the {done} epoch(s) "
                             f"{args.resume} has started; pass --epochs {done} or more")
        return cfg, ckpt
    cfg = check(vars(args), given)
    cfg["format"] = runs.FORMAT
    cfg["command"] = shlex.join(["train.py"] + argv)
    if cfg["out"] is None:
        cfg["out"] = os.path.join("runs", f"{cfg['model']}-{cfg['dataset']}-"
                                          f"{time.strftime('%Y%m%d-%H%M%S')}")
    check_out_dir(cfg["out"])
    return cfg, None
