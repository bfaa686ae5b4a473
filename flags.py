"""The argparse pieces of every script: --help that says each default once, one-line errors, the value
types of train.py's flags, one flag per model option (each model's OPTIONS), and a flag by name as words.
train.py declares its own flags; config.py checks and resolves what they give.
"""
import argparse

import models

SWITCH = argparse.BooleanOptionalAction  # --flag / --no-flag


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
    """One flag per model option (the union over MODELS), naming its models (each one's help where they
    differ) and each one's default."""
    seen = {}
    for name, cls in models.MODELS.items():
        for option, (kind, text) in cls.OPTIONS.items():
            _, texts, by_model = seen.setdefault(option, (kind, {}, {}))
            texts.setdefault(text, []).append(name)
            by_model[name] = models.defaults(cls)[option]
    group = p.add_argument_group("model options", "declared by each model (models.py); a flag of another "
                                 "model than --model is refused")
    for option, (kind, texts, by_model) in seen.items():
        text = next(iter(texts))
        if len(texts) > 1 or len(by_model) < len(models.MODELS):
            text = "; ".join(f"{'/'.join(names)}: {t}" for t, names in texts.items())
        given = {m: v for m, v in by_model.items() if v is not None}
        if "default" not in text:
            same = len({repr(v) for v in by_model.values()}) == 1
            text += (" (default: none)" if not given else f" (default: {next(iter(given.values()))})" if same
                     else " (default: " + ", ".join(f"{m} {v}" for m, v in given.items()) + ")")
        kw = {"action": argparse.BooleanOptionalAction} if kind is bool else {"type": {tuple: widths}.get(kind, kind)}
        group.add_argument("--" + option.replace("_", "-"), default=argparse.SUPPRESS, help=text, **kw)


def words(parser, name, value, source):
    """A flag by name and value (sweep.py's --vary, train.fit's keywords) as train.py's words: ("lr",
    "0.01") -> ['--lr=0.01'], ("batchnorm", "false") -> ['--no-batchnorm'], ("augment", "false") -> []."""
    action = next((a for a in parser._actions if a.dest == name.replace("-", "_")), None)
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


def defaults(parser):
    """Every flag at its default (a model option has none: SUPPRESS)."""
    return vars(parser.parse_args([]))


def explicit_flags(parser, argv):
    """The dests of the flags actually typed on the command line (the parser is left as it was)."""
    kept = [a.default for a in parser._actions]
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    typed = set(vars(parser.parse_known_args(argv)[0]))
    for action, default in zip(parser._actions, kept):
        action.default = default
    return typed
