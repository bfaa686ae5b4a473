"""sweep.py runs every combination x seed as train.py runs; evaluate.py groups them with
mean +- std and Welch's t-test."""
import json
import os

import pytest

import evaluate
import metrics
import sweep

SMALL = ["--batch-size", "16", "--latent-dim", "4", "--hidden", "32", "--log-interval", "1000",
         "--epochs", "1"]


def test_welch_matches_published_values():
    # R: t.test(c(1, 2, 3), c(4, 5, 7)): t = -3.1623, df = 3.4483, p-value = 0.04191,
    # 95 percent confidence interval -6.4542 -0.2124
    diff, (low, high), p, df = metrics.welch([1, 2, 3], [4, 5, 7])
    assert diff == pytest.approx(-10 / 3) and df == pytest.approx(3.4483, abs=1e-4)
    assert p == pytest.approx(0.04191, abs=1e-5)
    assert (low, high) == (pytest.approx(-6.4542, abs=1e-4), pytest.approx(-0.2124, abs=1e-4))
    assert metrics.mean_std([2.0]) == (2.0, 0.0)


@pytest.mark.e2e
def test_a_sweep_runs_every_combination_then_skips_them_and_evaluate_groups_them(
        tiny_data, tmp_path, capsys):
    out = str(tmp_path / "sw")
    argv = ["--seeds", "1,2", "--vary", "beta=1,4", "--vary", "batchnorm=true,false",
            "--out", out, "--", "--data-root", tiny_data, *SMALL]
    assert sweep.main(argv) == 0
    names = sorted(n for n in os.listdir(out) if os.path.isdir(os.path.join(out, n)))
    assert names == sorted(f"beta{b}-batchnorm{n}-seed{s}" for b in (1, 4)
                           for n in ("true", "false") for s in (1, 2))
    cfg = json.load(open(os.path.join(out, "beta4-batchnormfalse-seed2", "config.json")))
    assert (cfg["beta"], cfg["batchnorm"], cfg["seed"]) == (4.0, False, 2)
    printed = capsys.readouterr().out
    assert "[8/8]" in printed and "done" in printed
    assert sweep.main(argv) == 0  # the same command again: nothing left to do
    assert capsys.readouterr().out.count("finished before, skipped") == 8
    assert evaluate.main([out, "--no-figures", "--iw-samples", "0", "--out", str(tmp_path / "e")]) == 0
    text = capsys.readouterr().out
    assert "| batchnorm=false, beta=1.0 | 2 |" in text
    assert "test loss, beta=4.0 minus beta=1.0 (at batchnorm=false):" in text
    assert "Welch's t-test p = " in text


@pytest.mark.e2e
def test_an_interrupted_run_is_resumed(tiny_data, tmp_path, capsys):
    out = str(tmp_path / "sw")
    argv = ["--seeds", "1", "--out", out, "--", "--data-root", tiny_data, *SMALL]
    assert sweep.main(argv) == 0
    # as if a sweep of two epochs had been stopped after its run's first epoch
    run = os.path.join(out, "seed1")
    cfg = json.load(open(os.path.join(run, "config.json")))
    cfg["epochs"] = 2
    json.dump(cfg, open(os.path.join(run, "config.json"), "w"))
    manifest = json.load(open(os.path.join(out, "sweep.json")))
    manifest["train_flags"][-1] = "2"  # SMALL ends with --epochs 1
    json.dump(manifest, open(os.path.join(out, "sweep.json"), "w"))
    capsys.readouterr()
    assert sweep.main([*argv[:-1], "2"]) == 0
    assert "Resuming" in open(os.path.join(out, "seed1.log")).read()
    capsys.readouterr()  # the same command again: the resumed run is the planned one, finished
    assert sweep.main([*argv[:-1], "2"]) == 0
    assert "seed1: finished before, skipped" in capsys.readouterr().out


def test_a_run_folder_holding_other_settings_is_refused_not_reused(tiny_data, tmp_path, capsys):
    out = str(tmp_path / "sw")
    assert sweep.main(["--seeds", "1", "--out", out, "--", "--data-root", tiny_data, *SMALL]) == 0
    os.remove(os.path.join(out, "sweep.json"))  # the folder of an older version of a plan
    argv = ["--seeds", "1", "--out", out, "--", "--data-root", tiny_data, *SMALL, "--lr", "3e-4"]
    capsys.readouterr()
    assert sweep.main(argv) == 2
    err = capsys.readouterr().err
    assert "run seed1: " + os.path.join(out, "seed1") + " holds a run with other settings (--lr " \
           "0.001 there, 0.0003 planned); move that folder away, or give another --out" in err
    assert not os.path.exists(os.path.join(out, "sweep.json"))  # nothing started


@pytest.mark.parametrize("argv,words", [
    (["--vary", "dropot=0,1"], ["dropot", "no such flag"]),
    (["--vary", "dropout=0,2"], ["run dropout2-seed1", "--dropout"]),
    (["--vary", "batchnorm=yes"], ["true or false"]),
    (["--seeds", "1,x"], ["--seeds"]),
])
def test_bad_sweeps_are_refused_before_any_run(tmp_path, capsys, argv, words):
    out = str(tmp_path / "sw")
    assert sweep.main([*argv, "--seeds", "1", "--out", out, "--", "--epochs", "1"]
                      if "--seeds" not in argv else [*argv, "--out", out, "--", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(w in err for w in words), err
    assert not os.path.exists(out)


def test_another_sweep_in_the_same_folder_is_refused(tiny_data, tmp_path, capsys):
    out = str(tmp_path / "sw")
    assert sweep.main(["--seeds", "1", "--out", out, "--", "--data-root", tiny_data, *SMALL]) == 0
    assert sweep.main(["--seeds", "2", "--out", out, "--", "--data-root", tiny_data, *SMALL]) == 2
    assert "holds another sweep" in capsys.readouterr().err


def test_vary_words_for_every_kind_of_flag():
    assert sweep.flag_words("lr", "-1") == ["--lr=-1"]  # one word: argparse keeps the minus
    assert sweep.flag_words("batchnorm", "false") == ["--no-batchnorm"]
    assert sweep.flag_words("augment", "true") == ["--augment"] and sweep.flag_words("augment", "false") == []
    assert sweep.flag_words("download", "false") == ["--no-download"] and sweep.flag_words("download", "true") == []


@pytest.mark.parametrize("argv,words", [(["--vary", "lr=-1"], ["run lr-1-seed1", "--lr"]),
                                        (["--seeds", "1,1"], ["comes twice"])])
def test_more_bad_sweeps(tmp_path, capsys, argv, words):
    argv = argv if "--seeds" in argv else [*argv, "--seeds", "1"]
    assert sweep.main([*argv, "--out", str(tmp_path / "sw"), "--", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(w in err for w in words), err


@pytest.mark.e2e
def test_two_jobs_at_a_time_and_the_grouping_of_a_repeated_seed(tiny_data, tmp_path, capsys):
    out = str(tmp_path / "sw")
    assert sweep.main(["--jobs", "2", "--seeds", "1,2", "--out", out, "--",
                       "--data-root", tiny_data, *SMALL]) == 0
    capsys.readouterr()
    copy = str(tmp_path / "copy-of-seed1")
    import shutil
    shutil.copytree(os.path.join(out, "seed1"), copy)  # the same seed twice: not independent
    assert evaluate.main([out, copy, "--no-figures", "--iw-samples", "0",
                          "--out", str(tmp_path / "e")]) == 0
    assert "repeats a seed" in capsys.readouterr().out


def test_print_commands_writes_one_train_command_per_run(capsys):
    assert sweep.main(["--print-commands", "--seeds", "1,2", "--vary", "beta=1,4",
                       "--out", "s", "--", "--epochs", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all("train.py --epochs 3" in line for line in lines)
    assert lines[-1].endswith("--beta=4 --seed 2 --out s/beta4-seed2")


def test_group_loss_curves_draw_a_mean_and_a_band(tmp_path, monkeypatch):
    import figures
    drawn = {}
    monkeypatch.setattr(figures, "save", lambda fig, path: drawn.update(fig=fig))
    histories = {f"r{i}": [{"epoch": str(e), "train_loss": str(10 - e + i), "test_loss": str(11 - e)}
                           for e in (1, 2, 3)] for i in range(3)}
    figures.loss_curves(histories, "x.png", ["loss"], groups={"beta=4": ["r0", "r1", "r2"]})
    ax = drawn["fig"].axes[0]
    train = next(line for line in ax.get_lines() if "train" in line.get_label())
    assert list(train.get_ydata()) == pytest.approx([10, 9, 8])  # the mean of 9-e, 10-e, 11-e
    assert len(ax.collections) == 2  # a band for train and one for test


def test_runs_started_together_find_their_data_fetched_first(tmp_path, capsys):
    # --jobs 2: the data are downloaded (here: looked for) once, before any run starts
    out, empty = str(tmp_path / "sw"), str(tmp_path / "no-data")
    os.makedirs(empty)
    argv = ["--seeds", "1,2", "--jobs", "2", "--out", out, "--", "--data-root", empty,
            "--no-download", *SMALL]
    assert sweep.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("sweep.py: error: ") and err.count("\n") == 1 and "mnist" in err.lower()
    assert not os.path.exists(os.path.join(out, "seed1"))


@pytest.mark.e2e
def test_ctrl_c_stops_every_running_run_saved_and_resumable(tiny_data, tmp_path):
    import signal
    import subprocess
    import sys
    import time
    out = str(tmp_path / "sw")
    argv = [sys.executable, sweep.__file__, "--launcher", "local", "--seeds", "1,2", "--jobs", "2", "--out", out, "--",
            "--data-root", tiny_data, *SMALL[:-1], "400"]  # long enough to be running
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoints = [os.path.join(out, f"seed{s}", "checkpoint.pt") for s in (1, 2)]
    deadline = time.time() + 120
    while not all(map(os.path.isfile, checkpoints)) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # the sweep alone: each run is in its own session
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "interrupted; every run saved where it stopped; run the same command with --out" in err
    saved = [sweep.runs.load_checkpoint(p) for p in checkpoints]
    epochs = [c["epoch"] for c in saved]
    assert all(1 <= e < 400 for e in epochs)
    assert all(sweep.state(os.path.dirname(p)) == "unfinished" for p in checkpoints)
    for s in (1, 2):
        assert "stopped by SIGINT" in open(os.path.join(out, f"seed{s}.log")).read()
    rows = sweep.launch.status(out)  # what --status shows: each run saved and waiting to resume
    assert [(name, what) for name, what, _ in rows] == [("seed1", "pending"), ("seed2", "pending")]
    # SIGINT stops inside an epoch: the one after the last whole one, at its step
    assert all(detail == (f"epoch {c['epoch'] + 1} saved at step {c['mid_epoch']['step']}, resumes" if c["mid_epoch"]
                          else f"epoch {c['epoch']} saved, resumes") for (_, _, detail), c in zip(rows, saved))


def test_the_threads_shared_out_are_those_of_the_cores_this_process_may_use(tmp_path, monkeypatch):
    seen = []

    class Done:  # a run that has ended at once
        returncode = 0

        def __init__(self, argv, env, **kw):
            seen.append(env["OMP_NUM_THREADS"])

        def poll(self):
            return 0

    monkeypatch.setattr(sweep.launch.subprocess, "Popen", Done)
    monkeypatch.setattr(sweep.launch.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    todo = [(f"r{i}", ["--out", str(tmp_path / f"r{i}")]) for i in range(2)]
    assert sweep.run_all(todo, 2) == 0
    assert seen == ["3", "3"]  # six cores, two at a time; not os.cpu_count()
