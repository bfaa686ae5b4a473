"""reproduce.py: each reference experiment by name, our table beside the published one."""
import os

import pytest

import reproduce


def test_every_experiment_is_planned_with_valid_train_flags(tmp_path):
    for name, exp in reproduce.EXPERIMENTS.items():
        args = reproduce.build_parser().parse_args([name, "--runs", str(tmp_path), "--cifar10", "cifar10"])
        folder, todo = reproduce.plan(name, exp, args)
        assert len(todo) == 3 * len(exp["settings"])  # three seeds of every setting
        reproduce.sweep.check(todo)  # train.py's own checks pass for every run
        for setting, published in exp["published"].items():
            assert setting in exp["settings"]
            labels = {label for label, _ in exp["columns"]}
            assert all(set(v) <= labels for v in published.values())


def test_a_quick_reproduction_runs_and_prints_ours_beside_the_published(tiny_data, tmp_path, capsys):
    runs_dir = str(tmp_path / "rep")
    assert reproduce.main(["pytorch-examples-vae", "--quick", "--data-root", tiny_data,
                           "--runs", runs_dir]) == 0
    text = capsys.readouterr().out
    assert text.startswith("[1/1] vae-seed1: done") and "QUICK: 2 epoch(s), one seed" in text
    assert "| 10 |  | 105.55 |" in text and "| 2 | " in text
    assert open(os.path.join(runs_dir, "pytorch-examples-vae-quick", "report.md")).read() in text + "\n"


@pytest.mark.parametrize("argv,code,words", [(["nope"], 2, ["unknown experiment", "vaegan-batchnorm"]),
                                             (["--list"], 0, ["cifar10-regularization"])])
def test_names(capsys, argv, code, words):
    assert reproduce.main(argv) == code
    printed = capsys.readouterr()
    assert all(w in printed.out + printed.err for w in words)


def test_the_autoencoder_family_measures_each_run_at_its_last_epoch(tiny_data, tmp_path, capsys):
    assert reproduce.main(["autoencoders", "--quick", "--data-root", tiny_data,
                           "--runs", str(tmp_path)]) == 0
    text = capsys.readouterr().out.split("At the last epoch:")[1]
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| ")}
    assert set(rows) >= {"ae", "denoising-ae", "sparse-ae", "contractive-ae", "vae"}
    header = rows["setting"].split(" | ")
    sparse = dict(zip(header, rows["sparse-ae"].split(" | ")))
    assert float(sparse["codes below 1e-2"]) > float(dict(zip(header, rows["ae"].split(" | ")))["codes below 1e-2"])
    assert dict(zip(header, rows["vae"].split(" | ")))["Jacobian norm"].strip() == ""
