"""--help of every script: each flag's default said once and truthfully, whole descriptions."""
import os
import re
import subprocess
import sys

import pytest

import evaluate
import reproduce
import sweep
import train

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BENCHMARKS = ["suite.py", "speed.py", "decode.py", "cvae_classes.py"]


def blocks(text):
    """{'--flag': its help text on one line} from argparse's --help."""
    found, flag = {}, None
    for line in text.splitlines():
        m = re.match(r"  (-[-\w]+|\w+)", line)
        if m:
            flag = m.group(1)
            found[flag] = line
        elif flag and line.startswith("    "):
            found[flag] += " " + line.strip()
        else:
            flag = None
    return found


def helps():
    yield "train.py", train.build_parser().format_help()
    yield "evaluate.py", evaluate.build_parser().format_help()
    yield "sweep.py", sweep.build_parser().format_help()
    yield "reproduce.py", reproduce.build_parser().format_help()
    for name in BENCHMARKS:
        yield name, subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", name), "--help"],
                                   capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("script,text", list(helps()))
def test_every_default_is_said_once_and_never_for_a_switch(script, text):
    found = blocks(text)
    assert len(found) >= 3, text
    for flag, words in found.items():
        assert words.count("default") <= 1, f"{script} {flag}: {words}"
        assert not re.search(r"\(default: (True|False|None|)\)", words), f"{script} {flag}: {words}"
    description = text.split("\n\n")[1]
    assert description.rstrip().endswith((".", "?", ")")), f"{script}: {description!r} ends mid-sentence"


def test_switches_read_as_off_and_model_options_give_their_defaults():
    found = blocks(train.build_parser().format_help())
    assert "default" not in found["--no-download"] and "default" not in found["--amp"]
    assert found["--latent-dim"].endswith("(default: vae 20, ae 20, vaegan 20, cvae 5, btcvae 20, factorvae 20, pca 20, vqvae 64)")
    assert found["--lr"].endswith("(default: 0.001)") and found["--sparsity-target"].endswith("(default: none)")
