"""train.py's flags: bad ones refused in one line before any work, a resume's conflicting flags and model
options, --lr-disc, out folders that cannot be made, GUIDE.md listing every flag."""
import os
import subprocess
import sys

import pytest

import train
from test_train import ROOT, history


def test_resume_refuses_a_conflicting_flag(tiny_data, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert train.main(["--data-root", tiny_data, "--epochs", "1", "--out", out]) == 0
    capsys.readouterr()
    assert train.main(["--resume", out, "--beta", "4"]) == 2
    err = capsys.readouterr().err
    assert "--beta" in err and len(err.strip().splitlines()) == 1


BAD_FLAGS = [
    ["--dropout", "1.5"], ["--beta", "-1"], ["--latent-dim", "0"], ["--dataset", "foo"],
    ["--noise", "gaussian:abc"], ["--output", "tanh", "--recon", "bce"], ["--lr", "0"],
    ["--epochs", "0"], ["--batch-size", "-3"], ["--hidden", "400,x"], ["--arch", "resnet"],
    ["--model", "gan"], ["--recon", "l2"], ["--device", "tpu"], ["--device", "cuda:7"],
    ["--arch", "conv", "--hidden", "300"], ["--act", "tanh"], ["--scheduler", "cosine"],
    ["--weight-decay", "-0.1"], ["--c", "0"], ["--latent-dim", "two"], ["--bogus"],
    ["--resume", "/nonexistent/run"], ["--lr-gamma", "0"], ["--gamma", "2"],
    ["--recon", "feature"], ["--model", "vaegan", "--gamma", "0"],
    ["--model", "vaegan", "--lr-disc", "-1"], ["--model", "vaegan", "--equilibrium", "0"],
    ["--model", "vaegan", "--margin", "0.3"], ["--model", "vaegan", "--feature-layer", "1"],
    ["--model", "vaegan", "--recon", "feature", "--feature-layer", "2"],
    ["--model", "vaegan", "--arch", "conv", "--recon", "feature", "--feature-layer", "0"],
    ["--grad-clip", "0"], ["--grad-clip", "-1"], ["--noise", "gaussian:-0.5"],
    ["--noise", "mask:1.5"], ["--noise", "blur:0.5"], ["--contractive", "0.1"],
    ["--model", "ae", "--sparsity-target", "0.05"], ["--dataset", "cifar100"],
    ["--batch-size", "1", "--arch", "conv"], ["--batch-size", "1", "--model", "vaegan"],
    ["--hidden", "0"], ["--seed", str(2**64)], ["--seed", "-1"], ["--latent-dim", "100000000"],
    ["--hidden", "100000000"],
]


@pytest.mark.parametrize("flags", BAD_FLAGS, ids=lambda f: " ".join(f))
def test_bad_flags_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, flags):
    out = tmp_path / "run"
    code = train.main(flags + ["--out", str(out), "--data-root", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "error" in err
    assert not out.exists() and not (tmp_path / "none").exists()


def test_an_out_folder_under_a_file_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert train.main(["--out", str(tmp_path / "file" / "run"), "--data-root",
                       str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and not (tmp_path / "none").exists()


def test_existing_out_folder_is_refused(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("x")
    assert train.main(["--out", str(tmp_path / "run")]) == 2
    assert "--resume" in capsys.readouterr().err


def test_cli_bad_flag_from_the_shell():
    proc = subprocess.run([sys.executable, "train.py", "--dropout", "1.5"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == "train.py: error: --dropout 1.5 must be in [0, 1)"


def test_guide_documents_every_flag():
    guide = open(os.path.join(ROOT, "GUIDE.md")).read()
    table = guide.split("\n## Flags\n")[1].split("\n## ")[0]
    for action in train.build_parser()._actions:
        for flag in action.option_strings:
            if flag not in ("-h", "--help"):
                assert f"`{flag}" in table, f"{flag} missing from GUIDE.md's flag table"


def test_model_options_are_recorded_resolved_and_foreign_ones_refused(tmp_path, capsys):
    cfg, _ = train.resolve(["--model", "vaegan", "--latent-dim", "5", "--out", str(tmp_path / "r")])
    assert cfg["hidden"] == [25] and cfg["batchnorm"] is True and cfg["recon"] == "bce"
    assert cfg["margin"] is None and cfg["feature_layer"] is None
    cfg, _ = train.resolve(["--model", "vae", "--arch", "conv", "--output", "tanh",
                            "--out", str(tmp_path / "r")])
    assert cfg["hidden"] is None and cfg["batchnorm"] is True and cfg["recon"] == "mse"
    assert "gamma" not in cfg  # another model's option has no place in this run's config
    cfg, _ = train.resolve(["--model", "cvae", "--out", str(tmp_path / "r")])
    assert cfg["latent_dim"] == 5 and cfg["num_classes"] == 10  # the CVAE's own default
    assert train.main(["--model", "ae", "--gamma", "2", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "train.py: error: --gamma is not an option of --model ae; it belongs to vaegan, factorvae"


def test_resume_accepts_a_model_option_equal_to_the_saved_one_and_names_one_that_differs(
        tiny_data, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert train.main(["--data-root", tiny_data, "--epochs", "1", "--batch-size", "16",
                       "--out", out]) == 0
    assert train.main(["--resume", out, "--epochs", "2", "--hidden", "400",
                       "--latent-dim", "20"]) == 0  # typed, but as saved
    capsys.readouterr()
    for flag, value in (("--output", "tanh"), ("--arch", "conv"), ("--model", "cvae")):
        assert train.main(["--resume", out, "--epochs", "3", flag, value]) == 2
        err = capsys.readouterr().err
        assert f"{flag} differs from the saved run" in err and len(err.strip().splitlines()) == 1
    assert len(history(out)) == 2


def test_lr_disc_is_refused_for_a_model_without_a_discriminator(tmp_path, capsys):
    assert train.main(["--lr-disc", "1e-4", "--out", str(tmp_path / "r")]) == 2
    assert "the vae model has none" in capsys.readouterr().err


@pytest.mark.parametrize("out,message", [
    ("", "names no folder"),
    ("/proc/no-such-folder/run", "cannot create the run folder"),
    ("x" * 300, "cannot create the run folder"),
    ("dangling", "cannot create the run folder"),
])
def test_an_out_folder_that_cannot_be_made_is_refused_before_the_data_load(tmp_path, capsys,
                                                                         monkeypatch, out, message):
    monkeypatch.chdir(tmp_path)
    os.symlink(str(tmp_path / "nowhere" / "run"), "dangling")
    code = train.main(["--out", out, "--data-root", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "none").exists()  # refused before the data load
