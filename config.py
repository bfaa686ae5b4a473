"""A command line resolved into a run's config, every value checked before any work (ValueError, one line saying
what to do), with --resume against the saved config and checkpoint; and the check of a saved config.json."""
import importlib.util
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
from flags import defaults, explicit_flags, split_size

# Flags that may differ from the saved config when resuming; anything else is refused.
RESUME_SAFE = {"epochs", "device", "log_interval", "data_root", "download", "resume",
               "compile", "channels_last", "data_budget", "tensorboard"}
ADDED = {"image_size": None, "channels": None, "val_split": 0, "skip_bad_images": False,
         "train_classes": None, "exclude_classes": None, "tensorboard": False}  # run-level flags added after format 2
MODEL_ADDED = {"kl_warmup": 0.0, "kl_cycle": 0.0, "free_bits": 0.0, "capacity": 0.0,
               "capacity_epochs": 0.0}  # model options added after format 2, at their "off"
OPTIMISATION = {"lr", "lr_disc", "batch_size", "weight_decay", "l1", "augment", "hflip", "crop",
                "scheduler", "step_size", "lr_gamma", "grad_clip", "amp", "compile",
                "channels_last"}  # flags of the training loop: a closed-form model has none
INF = float("inf")
RANGES = [  # (flags, test of a value given, what the flag must be); None is each one's "unset"
    (("image_size",), lambda v: 16 <= v <= 1024, "be in [16, 1024]"),
    (("weight_decay", "l1"), lambda v: 0 <= v < INF, "be >= 0"),
    (("lr", "lr_gamma", "lr_disc", "grad_clip", "data_budget"), lambda v: 0 < v < INF, "be > 0"),
    (("epochs", "batch_size", "step_size", "log_interval"), lambda v: v >= 1, "be >= 1"),
    (("seed",), lambda v: 0 <= v < 2**63, "be in [0, 2^63)")]


def flag(name):
    """A config key as the flag a user types: batch_size -> --batch-size."""
    return "--" + name.replace("_", "-")


def fill_added(saved):
    """An older version's saved config (or checkpoint's) with the flags added since, at what that version did."""
    options = models.MODELS[saved["model"]].OPTIONS if saved.get("model") in models.MODELS else {}
    for key, value in [*ADDED.items(), *((k, v) for k, v in MODEL_ADDED.items() if k in options)]:
        saved.setdefault(key, value)
    return saved


def saved_config(run_dir, parser):
    """A run folder's config.json, checked against train.py's parser: this code's format, every flag and
    option there and of its type."""
    path = os.path.join(run_dir, "config.json")
    saved = runs.load_config(run_dir)
    model = saved.get("model") if isinstance(saved, dict) else None
    if model not in models.MODELS:
        raise ValueError(f"{run_dir}: config.json is not a train.py run of {', '.join(models.MODELS)} "
                         f"(model {model!r}); pass a folder written by train.py")
    runs.check_format(saved, path)
    fill_added(saved)  # flags and options added since format 2: older runs did without
    missing = sorted((set(defaults(parser)) | {"image_shape", "num_classes"}
                      | set(models.MODELS[model].OPTIONS)) - set(saved))
    if missing:
        raise ValueError(f"{path} is not a complete train.py config (it lacks {', '.join(missing)})")
    is_a = {tuple: lambda v: isinstance(v, list) and all(type(w) is int for w in v),
            float: lambda v: type(v) in (int, float)}
    for name, (kind, none_ok) in saved_types(model, parser).items():
        value = saved[name]
        if not (value is None and none_ok or is_a.get(kind, lambda v: type(v) is kind)(value)):
            what = {tuple: "a list of integers", float: "a number", int: "an integer",
                    bool: "true or false", str: "a string"}[kind]
            raise ValueError(f"{path}: {name} is {json.dumps(value)}, not {what}; undo the edit, "
                             f"or start a new run")
    seen = saved.get("data")  # runs.check_data's record of the data
    if seen is not None and not (isinstance(seen, dict) and all(
            isinstance(seen.get(k), list) and len(seen[k]) == 2 for k in ("train", "test"))):
        raise ValueError(f"{path}: data is {json.dumps(seen)[:60]}, not train.py's record of the "
                         f"data (train and test: [images, hash]); undo the edit, or remove the key")
    return saved


def saved_types(model, parser):
    """{config key: (type, whether null is allowed)} for every flag and option of a run."""
    types, run_level = {}, defaults(parser)
    for a in parser._actions:
        if a.dest in run_level:
            kind = bool if a.nargs == 0 else {int: int, float: float, split_size: float}.get(a.type, str)
            kind = tuple if a.dest in ("train_classes", "exclude_classes") else kind  # saved resolved
            types[a.dest] = (kind, a.default is None)
    cls = models.MODELS[model]
    for name, default in models.defaults(cls).items():
        types[name] = (cls.OPTIONS[name][0], default is None)
    return types


def check_model(cfg, given=()):
    """Build the model on the meta device (no memory) for its checks, in flag words; its options go in cfg."""
    cls = models.MODELS[cfg["model"]]
    foreign = sorted(n for n in given if n not in cls.OPTIONS  # another model's option
                     and any(n in other.OPTIONS for other in models.MODELS.values()))
    if foreign:
        owners = [m for m, c in models.MODELS.items() if foreign[0] in c.OPTIONS]
        raise ValueError(f"{flag(foreign[0])} is not an option of --model {cfg['model']}; it belongs "
                         f"to {', '.join(owners)}")
    try:
        model = models.from_config(cfg, device="meta")
    except ValueError as e:  # the model's `name=value` words as the command line's `--name value`
        pattern = r"\b(" + "|".join(map(re.escape, cls.OPTIONS)) + r")=('?)([^',;)\s]*)\2"
        raise ValueError(re.sub(pattern, lambda m: f"{flag(m[1])} {m[3]}", str(e))) from None
    cfg.update(models.resolved(model))
    if not model.parameter_groups():  # fitted in closed form (PCA): one pass, no optimiser
        useless = sorted(given & OPTIMISATION) + (["epochs"] if "epochs" in given and cfg["epochs"] != 1 else [])
        if useless:
            raise ValueError(f"--model {cfg['model']} is fitted in closed form in one pass; drop "
                             f"{flag(useless[0])}")
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
    for names, ok, must in RANGES:
        for name in names:
            if cfg[name] is not None and not ok(cfg[name]):
                raise ValueError(f"{flag(name)} must {must}, got {cfg[name]}")
    if cfg["channels"] not in (None, 1, 3):
        raise ValueError(f"--channels must be 1 (grey) or 3 (colour), got {cfg['channels']}")
    if cfg["scheduler"] not in ("none", "step"):
        raise ValueError(f"unknown --scheduler {cfg['scheduler']!r}; use none or step")
    shape, classes = data.describe(cfg["dataset"], cfg["image_size"], cfg["channels"], cfg["val_split"])
    cfg["image_shape"], cfg["classes"] = list(shape), classes
    cfg["num_classes"] = len(classes) if classes else None
    for name, flag_ in (("train_classes", "--classes"), ("exclude_classes", "--exclude-classes")):
        if cfg[name] is not None:
            cfg[name] = class_indices(cfg[name], classes, flag_, cfg["dataset"])
    if cfg["train_classes"] is not None and cfg["exclude_classes"] is not None:
        raise ValueError("give --classes or --exclude-classes, not both")
    if cfg["exclude_classes"] is not None and len(cfg["exclude_classes"]) == len(classes):
        raise ValueError("--exclude-classes leaves no class to train on")
    if cfg["train_classes"] is not None and len(cfg["train_classes"]) == len(classes):
        raise ValueError("--classes names every class; leave it out to train on all of them")
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
    names, found = {c.lower(): i for i, c in enumerate(classes)}, []
    for t in tokens:  # a class's name first (folder classes may be named "1", "2"), then an index
        i = names.get(str(t).lower(), int(t) if isinstance(t, int) or str(t).isdigit() else -1)
        if not 0 <= i < len(classes):
            raise ValueError(f"{flag}: {t!r} is not a class of {dataset}; give indices 0 to "
                             f"{len(classes) - 1} or names ({', '.join(classes[:10])}"
                             f"{', ...' if len(classes) > 10 else ''})")
        found.append(i)
    return sorted(set(found))


def check_resources(cfg):
    """What the machine must allow: the device, the batch per process, the model's memory, a compiler."""
    processes = parallel.world()[1]
    if parallel.active() and cfg["batch_size"] % processes:
        raise ValueError(f"--batch-size {cfg['batch_size']} is the global batch; make it "
                         f"a multiple of the {processes} processes")
    model = models.from_config(cfg, device="meta")  # no memory: for its checks only
    device = pick_device(cfg["device"])
    missing = cfg["compile"] and parallel.missing_compiler(device)
    if cfg["tensorboard"] and importlib.util.find_spec("tensorboard") is None:
        missing = "--tensorboard needs the tensorboard package: pip install tensorboard (or leave the flag out)"
    if missing:
        raise ValueError(missing)
    if cfg["batch_size"] // processes < 2 and nets.normalizes(model):
        raise ValueError(f"--batch-size {cfg['batch_size']}{f' over {processes} processes' if processes > 1 else ''} "
                         f"gives batches of one image, which batch norm cannot normalize; use "
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
    """--device as a torch.device that exists here (auto: cuda, then mps, then cpu)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown --device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and (not torch.cuda.is_available()
                                  or (device.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"--device {name}: no such CUDA device here; use --device cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps: MPS is not available here; use --device cpu or auto")
    return device


def check_out_dir(path):
    """--out must name a folder that a new run may take (unstarted) and whose parent is writable."""
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


def resolve(argv, parser):
    """train.py's words and parser -> (config dict, checkpoint or None); raises ValueError for any bad input."""
    args = parser.parse_args(argv)
    given, command = explicit_flags(parser, argv), shlex.join(["train.py"] + argv)
    if args.resume is None:
        cfg = check(vars(args), given)
        cfg["format"], cfg["command"] = runs.FORMAT, command
        if cfg["out"] is None:
            cfg["out"] = os.path.join("runs", f"{cfg['model']}-{cfg['dataset']}-{time.strftime('%Y%m%d-%H%M%S')}")
        check_out_dir(cfg["out"])
        return cfg, None
    run, ckpt_path = args.resume, os.path.join(args.resume, "checkpoint.pt")
    cfg_path = os.path.join(run, "config.json")
    if os.path.isfile(cfg_path) and not os.path.isfile(ckpt_path) and runs.unstarted(run):
        raise ValueError(f"--resume {run}: it stopped before saving anything (no checkpoint.pt); "
                         f"start it again with --out {run} (the folder may be reused) and its "
                         f"flags (config.json, \"command\")")
    if not os.path.isfile(cfg_path) or not os.path.isfile(ckpt_path):
        raise ValueError(f"--resume {run!r}: no config.json and checkpoint.pt there; pass a run "
                         f"folder written by train.py")
    cfg = saved_config(run, parser)
    typed = {k: getattr(args, k) for k in given}
    try:
        new = check({**cfg, **typed}, given)
    except ValueError:  # say first which typed flag differs, if one does
        new = None
    for name in sorted(given - RESUME_SAFE):
        value = new[name] if new else list(typed[name]) if isinstance(typed[name], tuple) else typed[name]
        if value != cfg.get(name):
            safe = ", ".join(sorted(a.option_strings[0] for a in parser._actions if a.dest in RESUME_SAFE))
            raise ValueError(f"{flag(name)} differs from the saved run ({cfg.get(name)!r}); only "
                             f"{safe} may change with --resume: start a new run (--out) for another value")
    cfg.update({k: getattr(args, k) for k in given & RESUME_SAFE})
    cfg["out"] = run  # the folder as it is now: it may have been moved or copied
    cfg["resume_commands"] = cfg.get("resume_commands", []) + [command]
    check(cfg, given)  # with new None, raises its own message
    ckpt = runs.load_checkpoint(ckpt_path)
    fill_added(ckpt["config"])  # a checkpoint of an older version lacks them too
    runs.check_pair(ckpt, cfg, ckpt_path, ignore=RESUME_SAFE | {"classes"})  # derived
    done = ckpt["epoch"] + (ckpt["mid_epoch"] is not None)  # an unfinished epoch counts
    if cfg["epochs"] < done:
        raise ValueError(f"--epochs {cfg['epochs']} is below the {done} epoch(s) {run} has started; "
                         f"pass --epochs {done} or more")
    return cfg, ckpt
