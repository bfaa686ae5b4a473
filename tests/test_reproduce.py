"""reproduce.py: each reference experiment by name, our table beside the published one."""
import json
import os

import pytest

import experiments
import reproduce


@pytest.mark.e2e
def test_every_experiment_is_planned_with_valid_train_flags(tmp_path):
    for name, exp in experiments.EXPERIMENTS.items():
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


@pytest.mark.e2e
def test_the_autoencoder_family_measures_each_run_at_its_last_epoch(tiny_data, tmp_path, capsys):
    assert reproduce.main(["autoencoders", "--quick", "--data-root", tiny_data,
                           "--runs", str(tmp_path)]) == 0
    text = capsys.readouterr().out.split("At the last epoch:")[1]
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| ")}
    assert set(rows) >= {"ae", "denoising-ae", "sparse-ae", "contractive-ae", "vae", "pca"}
    header = rows["setting"].split(" | ")
    sparse = dict(zip(header, rows["sparse-ae"].split(" | ")))
    assert float(sparse["codes below 1e-2"]) > float(dict(zip(header, rows["ae"].split(" | ")))["codes below 1e-2"])
    contractive = dict(zip(header, rows["contractive-ae"].split(" | ")))
    assert float(dict(zip(header, rows["vae"].split(" | ")))["Jacobian norm"]) > 0  # of mu
    pca = dict(zip(header, rows["pca"].split(" | ")))  # the baseline: h = W^T (x - m)
    assert float(pca["PSNR output dB"]) > 0
    assert float(pca["Jacobian norm"]) == pytest.approx(20 ** 0.5, abs=0.01)  # orthonormal W
    assert float(contractive["Jacobian norm"]) < float(dict(zip(header, rows["ae"].split(" | ")))["Jacobian norm"])


@pytest.mark.e2e
def test_the_gaussian_decoder_study_reports_final_numbers_and_draws_samples(tiny_data, tmp_path, capsys):
    runs_dir = str(tmp_path / "rep")
    assert reproduce.main(["gaussian-decoder", "--quick", "--data-root", tiny_data, "--runs", runs_dir,
                           "--settings", "mlp-mnist-z2,mlp-mnist-z2-c1"]) == 0
    text = capsys.readouterr().out
    folder = os.path.join(runs_dir, "gaussian-decoder-quick")
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in text.splitlines() if line.startswith("| ")}
    assert set(rows) == {"setting", "mlp-mnist-z2", "mlp-mnist-z2-c1"}  # only those chosen
    history = reproduce.runs.load_checkpoint(os.path.join(folder, "mlp-mnist-z2-seed1", "checkpoint.pt"))["history"]
    ours = dict(zip(rows["setting"], rows["mlp-mnist-z2"]))
    assert ours["epoch"] == "2" and float(ours["train loss"]) == pytest.approx(history[-1]["train_loss"], abs=0.01)
    cfg = json.load(open(os.path.join(folder, "mlp-mnist-z2-c1-seed1", "config.json")))
    assert (cfg["c"], cfg["posterior_variance"], cfg["hidden"], cfg["act"]) == (1.0, "softplus", [300, 100, 10], "elu")
    from PIL import Image
    per_c = Image.open(os.path.join(folder, "samples-per-c.png"))
    per_size = Image.open(os.path.join(folder, "samples-per-latent-size.png"))
    # samples-per-c draws both settings, samples-per-latent-size the one of latent size 2:
    # one more row of 28-pixel images at 2x with a 2-pixel gap, and a longer row label
    assert per_c.size[1] - per_size.size[1] == 2 * (28 + 2)
    assert per_c.size[0] - per_size.size[0] == 8 * (len("mlp-mnist-z2-c1") - len("mlp-mnist-z2"))
    assert "Figure: " + os.path.join(folder, "samples-per-c.png") in text


def test_final_table_puts_the_published_number_beside_ours():
    exp = experiments.EXPERIMENTS["gaussian-decoder"]
    rows = [{"train_loss": v, "train_recon": v - 14, "train_kl": 14.0, "test_loss": v} for v in (300.0, 310.0)]
    lines = reproduce.final_table(exp, {"mlp-mnist-z2": [[rows[0]] * 15, [rows[1]] * 15]})
    head, row = lines[0].split(" | "), lines[2].split(" | ")
    cells = dict(zip(head, row))
    assert cells["train loss"] == "305.00 ± 7.07" and cells["train loss, published"] == "307.00"
    assert cells["train KL, published"] == "14.00" and cells["n"] == "2"


def test_unknown_settings_are_refused_before_any_run(tmp_path, capsys):
    assert reproduce.main(["gaussian-decoder", "--settings", "mlp-mnist-z2,cnn-z9", "--runs", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--settings: cnn-z9 not a setting of gaussian-decoder" in err and "cnn-fashion-z2" in err
    assert not os.listdir(tmp_path)


@pytest.mark.e2e
def test_the_sample_quality_study_measures_each_run_once(tiny_data, tmp_path, capsys, monkeypatch):
    argv = ["sample-quality", "--quick", "--data-root", tiny_data, "--runs", str(tmp_path),
            "--settings", "mnist-vae,mnist-vaegan,mnist-cvae"]
    assert reproduce.main(argv) == 0
    text = capsys.readouterr().out.split("At the last epoch:")[1]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ")]
    rows = {r[0]: r for r in rows}
    assert set(rows) == {"setting", "mnist-vae", "mnist-vaegan", "mnist-cvae"}
    cells = {s: dict(zip(rows["setting"], r)) for s, r in rows.items()}
    m = json.load(open(os.path.join(tmp_path, "sample-quality-quick", "mnist-vae-seed1", "metrics.json")))
    assert m["iw_samples"] == 100 and m["features"]["domain"]["samples"] == 10000
    assert float(cells["mnist-vae"]["FID"]) == pytest.approx(m["fid"], abs=0.01)
    assert cells["mnist-vae"]["feature network"] == m["features"]["domain"]["hash"]
    assert cells["mnist-cvae"]["class match"] and not cells["mnist-vae"]["class match"]
    import evaluate  # the same command again reads each run's metrics.json, evaluating nothing
    monkeypatch.setattr(evaluate, "main", lambda argv: pytest.fail("evaluated again"))
    assert reproduce.main(argv) == 0


@pytest.mark.e2e
def test_the_one_class_benchmark_reports_the_best_score_per_class(tiny_data, tmp_path, capsys, monkeypatch):
    settings = [f"mnist-{c}-{m}" for c in range(10) for m in ("pca", "ae-mlp")]
    monkeypatch.setitem(experiments.ONE_CLASS_PUBLISHED, "mnist", {"a baseline": list(range(90, 100))})
    models_ = dict(experiments.ONE_CLASS_MODELS)
    monkeypatch.setattr(experiments, "ONE_CLASS_MODELS", {k: models_[k] for k in ("pca", "ae-mlp")})
    assert reproduce.main(["one-class", "--quick", "--data-root", tiny_data, "--runs", str(tmp_path),
                           "--settings", ",".join(settings)]) == 0
    text = capsys.readouterr().out
    assert "| normal class | pca (rec) | ae-mlp (" in text and "a baseline (published)" in text
    rows = [line for line in text.splitlines() if line.startswith("| mean |")]
    assert len(rows) == 1 and rows[0].endswith("| 94.50 |")
    assert all(f"| {c} | " in text for c in range(10))
    history = reproduce.runs.load_checkpoint(os.path.join(tmp_path, "one-class-quick", "mnist-3-pca-seed1",
                                                          "checkpoint.pt"))["history"]
    assert len(history) == 1  # PCA's own --epochs 1, whatever --quick's 2


@pytest.mark.e2e
def test_check_passes_on_a_fresh_rerun_and_fails_on_different_settings_or_numbers(tiny_data, tmp_path, capsys,
                                                                                  monkeypatch):
    import shutil
    import train
    argv = ["pytorch-examples-vae", "--epochs", "1", "--seeds", "1,2", "--data-root", tiny_data]
    assert reproduce.main([*argv, "--runs", str(tmp_path / "ours")]) == 0
    made = json.load(open(tmp_path / "ours" / "pytorch-examples-vae-epochs1" / "results.json"))
    assert made["command"].startswith("python reproduce.py pytorch-examples-vae --epochs 1")
    assert made["versions"]["torch"]
    vae = made["settings"]["vae"]
    assert sorted(vae["seeds"]) == ["1", "2"] and "--seed" not in vae["train_flags"]
    mean, std = vae["summary"]["test loss"].values()
    losses = [vae["seeds"][s]["test loss"] for s in ("1", "2")]
    assert mean == pytest.approx(sum(losses) / 2) and std > 0
    reference = tmp_path / "results"
    reference.mkdir()
    shutil.copy(tmp_path / "ours" / "pytorch-examples-vae-epochs1" / "results.json",
                reference / "pytorch-examples-vae.json")
    monkeypatch.setattr(reproduce.record, "REFERENCE", str(reference))
    assert reproduce.main([*argv, "--runs", str(tmp_path / "yours")]) == 0  # a fresh rerun
    capsys.readouterr()
    yours = str(tmp_path / "yours" / "pytorch-examples-vae-epochs1")
    assert reproduce.main(["pytorch-examples-vae", "--check", yours, "--data-root", tiny_data]) == 0
    assert "PASS" in capsys.readouterr().out
    # a deliberately different run: another learning rate
    other = tmp_path / "other"
    flags = [w for w in vae["train_flags"].split() if w != "--data-root" and w != tiny_data]
    assert train.main([*flags, "--data-root", tiny_data, "--lr", "0.02", "--seed", "1",
                       "--out", str(other / "vae-seed1")]) == 0
    capsys.readouterr()
    assert reproduce.main(["pytorch-examples-vae", "--check", str(other), "--data-root", tiny_data]) == 1
    out = capsys.readouterr().out
    assert "settings differ: vae-seed1: --lr 0.02 there, 0.001 planned" in out and "FAIL" in out
    assert "| vae | test loss |" in out and "| **no** |" in out
    # numbers alone: the same runs against a reference whose test loss is 5% higher
    ref = json.load(open(reference / "pytorch-examples-vae.json"))
    ref["settings"]["vae"]["summary"]["test loss"] = {"mean": mean * 1.05, "std": 0.0}  # far outside
    json.dump(ref, open(reference / "pytorch-examples-vae.json", "w"))
    assert reproduce.main(["pytorch-examples-vae", "--check", yours, "--data-root", tiny_data]) == 1
    out = capsys.readouterr().out
    assert "settings differ" not in out and "| vae | test loss |" in out and "**no**" in out
    assert reproduce.main(["pytorch-examples-vae", "--check", str(tmp_path / "nowhere")]) == 2


def test_each_committed_reference_is_of_its_experiment_as_it_stands_and_adds_up():
    import glob
    import shlex
    paths = glob.glob(os.path.join(reproduce.record.REFERENCE, "*.json"))
    assert paths  # results/pytorch-examples-vae.json at least
    without_root = lambda words: [w for i, w in enumerate(words)  # noqa: E731
                                  if "--data-root" not in words[max(i - 1, 0):i + 1]]
    for path in paths:
        ref = json.load(open(path))
        name, exp = ref["experiment"], experiments.EXPERIMENTS[ref["experiment"]]
        assert os.path.basename(path) == f"{name}.json"
        seeds = sorted({s for setting in ref["settings"].values() for s in setting["seeds"]}, key=int)
        shorter = ["--epochs", str(ref["epochs"])] if ref["epochs"] < exp["epochs"][0] else []
        args = reproduce.build_parser().parse_args([name, "--seeds", ",".join(seeds), *shorter])
        _, todo = reproduce.plan(name, exp, args)
        for run, argv in todo:
            setting = ref["settings"][reproduce.setting_of(run)]
            assert without_root(shlex.split(setting["train_flags"])) == without_root(reproduce.record.flags_of(argv))
        for setting in ref["settings"].values():
            for label, summary in setting["summary"].items():
                values = [numbers[label] for numbers in setting["seeds"].values()]
                if not isinstance(summary, str):
                    assert summary["mean"] == pytest.approx(sum(values) / len(values))
