"""train.py's flags and --help: the run-level ones (data, epochs, optimizer, device, output) declared here,
and one per model option (each model's OPTIONS); config.py checks and resolves what they give.
"""
import argparse

import models


class Help(argparse.HelpFormatter):
    """--help saying each flag's default once, after its help, unless the help says it, and never for a
    switch (off unless given) or a flag unset by default (its help says what happens then)."""
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
    if 0 < value < 1 or 0 <= value < 2**63 and value == int(value):
        return value if 0 < value < 1 else int(value)
    raise argparse.ArgumentTypeError(f"{text!r}: give a count of images (5000) or a fraction in (0, 1) (0.1)")


def widths(text):
    """'300,100' -> (300, 100)."""
    try:
        values = tuple(int(w) for w in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"bad widths {text!r}; use positive integers, comma-separated, "
                                         f"e.g. 400 or 300,100,10")
    return values


def model_flags(p):
    """One flag per model option (the union over MODELS), naming its models and each one's default."""
    seen = {}
    for name, cls in models.MODELS.items():
        for option, (kind, text) in cls.OPTIONS.items():
            seen.setdefault(option, (kind, text, {}))[2][name] = models.defaults(cls)[option]
    group = p.add_argument_group("model options", "declared by each model (models.py); a flag of another "
                                 "model than --model is refused")
    for option, (kind, text, by_model) in seen.items():
        if len(by_model) < len(models.MODELS):
            text = f"{'/'.join(by_model)}: {text}"
        given = {m: v for m, v in by_model.items() if v is not None}
        if "default" not in text:
            same = len({repr(v) for v in by_model.values()}) == 1
            text += (" (default: none)" if not given else f" (default: {next(iter(given.values()))})" if same
                     else " (default: " + ", ".join(f"{m} {v}" for m, v in given.items()) + ")")
        kw = {"action": argparse.BooleanOptionalAction} if kind is bool else {"type": {tuple: widths}.get(kind, kind)}
        group.add_argument("--" + option.replace("_", "-"), default=argparse.SUPPRESS, help=text, **kw)


def build_parser():
    """train.py's parser: the run-level flags, then the model options."""
    p = Parser(prog="train.py", description="Train an autoencoder, a VAE, a VAE-GAN or a conditional VAE.",
               formatter_class=Help)
    a = p.add_argument
    a("--model", default="vae", help=f"model family: {', '.join(models.MODELS)} (models.py)")
    a("--dataset", default="mnist", help="mnist, fashion-mnist (or fashionmnist), cifar10, celeba, "
      "npz:FILE[,TEST_FILE] (arrays x, y) or folder:PATH (image files; class subfolders)")
    a("--image-size", type=int, default=None, help="resize (shorter side) and centre-crop every image to "
      "SIZE x SIZE (16 to 1024); the conv arch takes 28 or 16, 32, 64, 128, ...")
    a("--channels", type=int, default=None, help="1 (grey) or 3 (colour): convert the images "
      "(default: the dataset's own)")
    a("--skip-bad-images", action="store_true", help="folder: and celeba: leave out image files that do "
      "not decode (counted), instead of stopping")
    a("--data-root", default="./data", help="folder holding the datasets (torchvision layout)")
    a("--no-download", dest="download", action="store_false",
      help="never download; fail with a message if the files are missing")
    a("--val-split", type=split_size, default=0, help="hold out this many training images (or this "
      "fraction, below 1) as a validation split, the same in every run: best.pt is chosen on it (0: "
      "none, and no best.pt; the test split is never used to choose)")
    a("--classes", dest="train_classes", default=None, help="train only on these classes, by index or "
      "name, comma-separated (3, or 0,1,2, or Trouser): one-class training for anomaly detection; the "
      "test split stays whole (default: every class)")
    a("--exclude-classes", default=None, help="train on every class but these (as --classes)")
    a("--weight-decay", type=float, default=0.0, help="L2 penalty, as Adam's weight_decay")
    a("--l1", type=float, default=0.0, help="L1 weight penalty: adds L1 * sum|w| to the loss")
    a("--augment", action="store_true", help="--hflip and --crop together")
    a("--hflip", action="store_true", help="random horizontal flips of training images")
    a("--crop", action="store_true", help="random crops with 4-pixel zero padding (training only)")
    a("--noise", default="", help="denoising: corrupt the input only, e.g. gaussian:0.5, saltpepper:0.2, "
      "mask:0.3 (fixed-seed corruption on the test split)")
    a("--epochs", type=int, default=10, help="number of epochs (raise it with --resume to extend)")
    a("--batch-size", type=int, default=128, help="images per training step")
    a("--lr", type=float, default=1e-3, help="Adam learning rate (vaegan: encoder and decoder)")
    a("--lr-disc", type=float, default=None, help="a discriminator's learning rate (vaegan; default: --lr)")
    a("--grad-clip", type=float, default=None, help="clip the gradient norm (each VAE-GAN network's own) "
      "to this value; the norm before clipping is logged as grad_*")
    a("--scheduler", default="none", help="learning-rate schedule: none or step (StepLR)")
    a("--step-size", type=int, default=10, help="StepLR: epochs between decays")
    a("--lr-gamma", type=float, default=0.5, help="StepLR: factor applied to the learning rate")
    a("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    a("--data-budget", type=float, default=None, help="GB of training images allowed in device memory; a "
      "larger split stays in host memory and is copied a batch at a time (default: half the GPU's free "
      "memory; unlimited on a CPU)")
    a("--amp", action="store_true", help="bfloat16 autocast for the networks (losses stay float32) on "
      "CUDA and on CPUs with AMX; elsewhere ignored, with a note")
    a("--compile", action="store_true", help="torch.compile the model's loss (first steps are slow while "
      "it compiles)")
    a("--channels-last", action="store_true", help="conv arch: channels-last memory format for weights "
      "and batches (faster convolutions on recent GPUs)")
    a("--seed", type=int, default=1, help="seeds torch: weights, data order, z samples, dropout, "
      "augmentation (the test-split noise has its own fixed seed)")
    a("--out", default=None, help="run folder (default runs/<model>-<dataset>-<time>)")
    a("--resume", default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR")
    a("--log-interval", type=int, default=100, help="steps between progress lines")
    model_flags(p)
    return p


def words(name, value, source):
    """A flag by name and value (sweep.py's --vary, train.fit's keywords) as train.py's words: ("lr",
    "0.01") -> ['--lr=0.01'], ("batchnorm", "false") -> ['--no-batchnorm'], ("augment", "false") -> []."""
    action = next((a for a in build_parser()._actions if a.dest == name.replace("-", "_")), None)
    if action is None:
        raise ValueError(f"{source} {name}: train.py has no such flag")
    if action.nargs != 0:  # one word, so that a value may start with "-" (--lr=-1 is refused
        return [f"{action.option_strings[0]}={value}"]  # by train.py, not misread by argparse)
    if str(value).lower() not in ("true", "false"):
        raise ValueError(f"{source} {name}={value}: an on/off flag takes true or false")
    on, names = str(value).lower() == "true", action.option_strings
    if isinstance(action, argparse.BooleanOptionalAction):  # --batchnorm / --no-batchnorm
        return [names[0] if on else names[1]]
    present = not on if isinstance(action, argparse._StoreFalseAction) else on  # --no-download; --augment
    return [names[0]] if present else []


def defaults():
    """Every run-level flag at its default."""
    return vars(build_parser().parse_args([]))


def explicit_flags(parser, argv):
    """The dests of the flags actually typed on the command line."""
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_known_args(argv)[0]))
