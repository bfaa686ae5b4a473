"""A careless or hostile user, one group of defects per test: each checks the exit code, that
the message is one line naming the file or flag, and that nothing was lost or mixed."""
import builtins
import errno
import gc
import os
import re
import signal

import pytest
import torch

import evaluate
import train
import vae
from conftest import args_for, epoch_of, one_line, write_mnist


def deny(monkeypatch, *paths):
    """os.access says no for these paths (tests run as root, for whom chmod changes nothing)."""
    real, denied = os.access, {os.path.abspath(p) for p in paths}
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: os.path.abspath(p) not in denied
                        and real(p, mode, **kw))


# --- permissions ------------------------------------------------------------------------

def test_permission_denied_is_said_with_the_path_and_nothing_is_written(tiny_data, tmp_path,
                                                                        capsys, monkeypatch):
    out = str(tmp_path / "run")
    assert train.main(args_for(tiny_data, out, "--epochs", "1")) == 0
    before = os.path.getmtime(os.path.join(out, "checkpoint.pt"))
    cases = [  # (what is denied, command, exit code, words of the message)
        (out, lambda: train.main(["--resume", out, "--epochs", "2"]), 2,
         ["cannot write to the run folder", out, "permission denied"]),
        (out, lambda: evaluate.main([out, "--no-figures"]), 2,
         ["cannot write to", out, "permission denied", "copy"]),
        (str(tmp_path / "ro"), lambda: evaluate.main([out, "--out", str(tmp_path / "ro" / "x")]),
         2, ["cannot write to", "ro", "permission denied", "--out"]),
        (os.path.join(tiny_data, "MNIST", "raw"), lambda: train.main(
            args_for(tiny_data, str(tmp_path / "new"))), 2,
         ["mnist train split", os.path.join("MNIST", "raw"), "permission denied"]),
    ]
    for path, command, code, words in cases:
        os.makedirs(str(tmp_path / "ro"), exist_ok=True)
        with monkeypatch.context() as m:
            deny(m, path)
            assert command() == code, words
        one_line(capsys.readouterr().err, *words)
    assert os.path.getmtime(os.path.join(out, "checkpoint.pt")) == before
    assert not os.path.exists(os.path.join(out, "metrics.json"))
    assert not os.path.exists(str(tmp_path / "new"))


@pytest.mark.parametrize("name", ["train-labels-idx1-ubyte", "config.json"])
def test_an_unreadable_file_says_permission_denied(tiny_data, tmp_path, capsys, monkeypatch, name):
    out, real = str(tmp_path / "run"), builtins.open
    assert train.main(args_for(tiny_data, out, "--epochs", "1")) == 0
    capsys.readouterr()

    def guarded(path, *a, **k):
        if str(path).endswith(name):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, *a, **k)
    monkeypatch.setattr(builtins, "open", guarded)
    assert train.main(["--resume", out, "--epochs", "2"]) == 2
    one_line(capsys.readouterr().err, f"{name}: permission denied")
    assert epoch_of(out) == 1


# --- the data ---------------------------------------------------------------------------

@pytest.mark.parametrize("n_labels,test_side,words", [
    (50, 28, ["train split", "60 images but 50 labels"]),
    (60, 20, ["test split", "1x20x20", "not 1x28x28"]),
])
def test_split_files_that_do_not_belong_together_are_refused_at_load(tmp_path, capsys, n_labels,
                                                                     test_side, words):
    import numpy as np
    from conftest import images_for, write_idx
    root = str(tmp_path / "data")
    write_mnist(root)
    raw = os.path.join(root, "MNIST", "raw")
    write_idx(os.path.join(raw, "train-labels-idx1-ubyte"), np.arange(n_labels) % 10)
    write_idx(os.path.join(raw, "t10k-images-idx3-ubyte"),
              images_for(24, (1, test_side, test_side), 3)[:, 0])
    assert train.main(args_for(root, str(tmp_path / "run"))) == 2
    one_line(capsys.readouterr().err, *words, "do not belong together")
    assert not os.path.exists(str(tmp_path / "run"))


def test_other_data_on_resume_is_refused_inside_an_epoch_and_noted_at_its_end(tmp_path, capsys,
                                                                              monkeypatch):
    root, other = str(tmp_path / "data"), str(tmp_path / "other")
    write_mnist(root)
    write_mnist(other, n_train=40)
    out = str(tmp_path / "run")
    real, calls = vae.VAE.loss, []

    def loss(self, *a, **k):
        calls.append(self.training)
        if sum(calls) == 6 and self.training:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, *a, **k)
    with monkeypatch.context() as m:
        m.setattr(vae.VAE, "loss", loss)
        assert train.main(args_for(root, out, "--epochs", "3")) == 143  # inside epoch 2
    capsys.readouterr()
    saved = open(os.path.join(out, "checkpoint.pt"), "rb").read()
    assert train.main(["--resume", out, "--data-root", other]) == 2
    one_line(capsys.readouterr().err, "not those", "inside epoch 2", "train: 40 images")
    assert open(os.path.join(out, "checkpoint.pt"), "rb").read() == saved
    assert train.main(["--resume", out, "--epochs", "2"]) == 0  # the epoch ends on its data
    assert train.main(["--resume", out, "--data-root", other, "--epochs", "3"]) == 0
    assert "Note: the data under" in capsys.readouterr().out and epoch_of(out) == 3


def test_evaluate_warns_when_the_data_are_not_the_runs(tmp_path, capsys):
    root, other = str(tmp_path / "data"), str(tmp_path / "other")
    write_mnist(root)
    write_mnist(other, folder="MNIST", n_test=30)
    out = str(tmp_path / "run")
    assert train.main(args_for(root, out, "--epochs", "1")) == 0
    capsys.readouterr()
    assert evaluate.main([out, "--no-figures", "--iw-samples", "0", "--data-root", other]) == 0
    assert "warning: the data under" in capsys.readouterr().out
    assert evaluate.main([out, "--no-figures", "--iw-samples", "0"]) == 0
    assert "warning" not in capsys.readouterr().out


# --- the disk, the compiler, --epochs -----------------------------------------------------

def test_a_full_disk_says_so_and_no_file_runs_ahead_of_the_checkpoint(tiny_data, tmp_path, capsys,
                                                                      monkeypatch):
    out, real, saves = str(tmp_path / "run"), torch.save, []

    def save(obj, f, *a, **k):
        saves.append(1)
        if isinstance(obj, dict) and obj.get("optimizer") and obj["epoch"] == 2:
            f.write(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos") \
                from OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **k)
    monkeypatch.setattr(torch, "save", save)
    assert train.main(args_for(tiny_data, out, "--epochs", "3", "--val-split", "12")) == 1
    line = one_line(capsys.readouterr().err, "no space left on device", "checkpoint.pt",
                    "keeps epoch 1", f"--resume {out}")
    assert line.startswith("train.py: stopped:")
    assert epoch_of(out) == 1
    assert open(os.path.join(out, "history.csv")).read().count("\n") == 2  # header + epoch 1
    assert torch.load(os.path.join(out, "best.pt"), weights_only=True)["epoch"] <= 1
    assert not [n for n in os.listdir(out) if ".tmp" in n]
    monkeypatch.setattr(torch, "save", real)
    assert train.main(["--resume", out]) == 0 and epoch_of(out) == 3


@pytest.mark.parametrize("fails", ["history.csv", "best.pt", "training_samples.png"])
def test_a_full_disk_after_the_checkpoint_is_caught_up_on_resume(tiny_data, tmp_path, capsys,
                                                                 monkeypatch, fails):
    out = str(tmp_path / "run")
    real_open = builtins.open

    def full(path, *a, **k):  # the write of this file (its temporary) fails in epoch 2
        if os.path.basename(str(path)).startswith(fails) and os.path.isfile(
                os.path.join(out, "checkpoint.pt")) and epoch_of(out) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_open(path, *a, **k)
    with monkeypatch.context() as m:
        m.setattr(builtins, "open", full)
        assert train.main(args_for(tiny_data, out, "--epochs", "2", "--val-split", "12")) == 1
    one_line(capsys.readouterr().err, "no space left on device", fails, "keeps epoch 2")
    assert train.main(["--resume", out]) == 0  # finished: nothing to train, files caught up
    assert "nothing to do" in capsys.readouterr().out
    assert open(os.path.join(out, "history.csv")).read().count("\n") == 3
    best = torch.load(os.path.join(out, "best.pt"), weights_only=True)
    assert best["epoch"] == 2  # the validation loss falls every epoch on these data


def test_compile_without_a_compiler_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler")
    out = str(tmp_path / "run")
    assert train.main(["--compile", "--device", "cpu", "--data-root", str(tmp_path / "none"),
                       "--out", out]) == 2
    one_line(capsys.readouterr().err, "--compile", "no-such-compiler", "drop --compile")
    assert not os.path.exists(out)


def test_epochs_on_resume_a_finished_run_says_so_and_a_lower_count_is_refused(tiny_data, tmp_path,
                                                                              capsys):
    out = str(tmp_path / "run")
    assert train.main(args_for(tiny_data, out, "--epochs", "2")) == 0
    config = open(os.path.join(out, "config.json")).read()
    capsys.readouterr()
    assert train.main(["--resume", out]) == 0
    assert "has finished its 2 epochs; nothing to do" in capsys.readouterr().out
    assert train.main(["--resume", out, "--epochs", "1"]) == 2
    one_line(capsys.readouterr().err, "--epochs 1", "--epochs 2 or more")
    assert open(os.path.join(out, "config.json")).read() == config


def test_the_resume_refusal_names_flags_not_internal_names(tiny_data, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert train.main(args_for(tiny_data, out, "--epochs", "1")) == 0
    capsys.readouterr()
    assert train.main(["--resume", out, "--lr", "0.1"]) == 2
    line = one_line(capsys.readouterr().err, "--lr", "--no-download", "--channels-last", "new run")
    assert "channels_last" not in line and " download" not in line


# --- evaluate.py --------------------------------------------------------------------------

def test_evaluate_holds_one_runs_model_at_a_time(tiny_data, tmp_path, monkeypatch):
    dirs = [str(tmp_path / f"run{i}") for i in range(3)]
    for d in dirs:
        assert train.main(args_for(tiny_data, d, "--epochs", "1")) == 0
    real, alive = evaluate.measure, []

    def measure(*a, **k):
        gc.collect()
        alive.append(sum(type(o) is vae.VAE for o in gc.get_objects()))
        return real(*a, **k)
    monkeypatch.setattr(evaluate, "measure", measure)
    assert evaluate.main([*dirs, "--no-figures", "--iw-samples", "0",
                          "--out", str(tmp_path / "cmp")]) == 0
    assert alive == [1, 1, 1]


def test_bce_numbers_carry_their_warning_in_the_table_and_units(tiny_data, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert train.main(args_for(tiny_data, out, "--epochs", "1")) == 0
    capsys.readouterr()
    assert evaluate.main([out, "--no-figures", "--iw-samples", "2"]) == 0
    text = capsys.readouterr().out
    row = next(line for line in text.splitlines() if "| vae |" in line)
    assert "* bce (Bernoulli) decoder" in text and re.search(r"\| \d+\.\d+\* \|", row)
    import json
    m = json.load(open(os.path.join(out, "metrics.json")))
    assert m["likelihood"] == "bce" and "not a likelihood of pixel values" in m["units"]["bits_per_dim"]


# --- hand-edited config.json, and a run that saved nothing ----------------------------------

@pytest.mark.parametrize("key,value,words", [
    ("lr", "abc", ['lr is "abc", not a number']), ("lr", [], ["lr is [], not a number"]),
    ("latent_dim", None, ["latent_dim is null, not an integer"]),
    ("batch_size", 1.5, ["batch_size is 1.5, not an integer"]),
    ("hidden", "x", ['hidden is "x", not a list of integers']),
    ("noise", 3, ["noise is 3, not a string"]), ("epochs", True, ["epochs is true"]),
])
def test_a_hand_edited_config_of_wrong_types_is_refused_naming_the_key(tiny_data, tmp_path, capsys,
                                                                       key, value, words):
    import json
    out = str(tmp_path / "run")
    assert train.main(args_for(tiny_data, out, "--epochs", "1")) == 0
    path = os.path.join(out, "config.json")
    cfg = json.load(open(path))
    cfg[key] = value
    json.dump(cfg, open(path, "w"))
    capsys.readouterr()
    assert train.main(["--resume", out, "--epochs", "2"]) == 2
    one_line(capsys.readouterr().err, "config.json", *words)
    assert evaluate.main([out, "--no-figures"]) == 2
    one_line(capsys.readouterr().err, "config.json", *words)
    assert epoch_of(out) == 1


def test_the_advice_for_a_run_that_saved_nothing_is_a_command_that_works(tiny_data, tmp_path,
                                                                        capsys, monkeypatch):
    out = str(tmp_path / "run")
    def nan_at_once(*a, **k):
        raise FloatingPointError("loss is nan at epoch 1, step 1")
    monkeypatch.setattr(train, "train_epoch", nan_at_once)
    assert train.main(args_for(tiny_data, out)) == 1
    one_line(capsys.readouterr().err, "no epoch was saved", "the same --out will do")
    monkeypatch.undo()
    for command in (lambda: train.main(["--resume", out]), lambda: evaluate.main([out])):
        assert command() == 2
        one_line(capsys.readouterr().err, f"--out {out}", "may be reused")
    assert train.main(args_for(tiny_data, out, "--epochs", "1")) == 0  # the advice, followed
