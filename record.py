"""A reproduction's numbers as a small JSON file a user can diff and check against (reproduce.py).

reproduce.py NAME writes results.json in its runs folder: the command, the versions, the seeds, and per
setting each seed's numbers (every column at the last epoch, what evaluate.py measured) with their mean and
std. results/NAME.json, committed beside RESULTS.md, is such a file from the maintainers' run.
`reproduce.py NAME --check RUNS` computes the same numbers from RUNS (a folder of <setting>-seed<N> runs)
and compares them with results/NAME.json: first each run's settings, then each number, which must lie within
the seed spread, 2 x max(std there, std here), plus 0.5% of its value for a different machine's arithmetic.
"""
import json
import math
import os
import platform
import shlex
import subprocess

import metrics
import runs
import sweep

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = os.path.join(HERE, "results")
SLACK = 0.005  # of a number's value: another machine's (or library's) arithmetic, on top of the seed spread


def versions():
    """The versions a number came from: Python, torch, numpy, scikit-learn, and this project's commit."""
    import numpy
    import sklearn
    import torch
    try:
        commit = subprocess.run(["git", "-C", HERE, "describe", "--always", "--dirty"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or None  # -dirty: with uncommitted edits
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "scikit-learn": sklearn.__version__, "project": commit, "machine": platform.machine()}


def by_setting(per_run, setting_of):
    """{setting: {seed: {label: number}}} of {run name: {label: number}} (run names <setting>-seed<N>)."""
    out = {}
    for name, numbers in per_run.items():
        out.setdefault(setting_of(name), {})[name.rsplit("-seed", 1)[1]] = numbers
    return out


def summary(seeds):
    """{label: {"mean", "std"}} over the seeds' numbers {seed: {label: number}} (std 0 for one seed); a
    name (the feature network's hash) is kept as it is."""
    labels = dict.fromkeys(label for numbers in seeds.values() for label in numbers)
    out = {}
    for label in labels:
        values = [numbers[label] for numbers in seeds.values() if numbers.get(label) is not None]
        if not values:
            out[label] = None
            continue
        out[label] = values[0] if isinstance(values[0], str) else dict(zip(("mean", "std"), metrics.mean_std(values)))
    return out


def collect(per_run, setting_of, flags_of=None):
    """{"settings": {setting: {"train_flags", "seeds": {seed: {label: number}}, "summary"}}} of the runs'
    numbers {run name: {label: number}}; flags_of: {setting: its train.py flags}."""
    return {"settings": {s: {**({"train_flags": shlex.join(flags_of[s])} if flags_of else {}), "seeds": seeds,
                             "summary": summary(seeds)} for s, seeds in by_setting(per_run, setting_of).items()}}


def write(path, name, argv, exp, todo, last, final, setting_of):
    """results.json of the reproduction `name` (see the module's note): argv, reproduce.py's words; its runs
    todo [(run, train.py argv)], their numbers at the last epoch and final ones ({run: {label: number}}). A
    number that is not finite is written as null. Returns it."""
    clean = lambda numbers: {k: v if isinstance(v, str) or math.isfinite(v) else None  # noqa: E731
                             for k, v in numbers.items()}
    last, final = {n: clean(v) for n, v in last.items()}, {n: clean(v) for n, v in final.items()}
    record = {"experiment": name, "title": exp["title"], "units": exp["note"],
              "epochs": max(int(a[a.index("--epochs") + 1]) for _, a in todo),
              "command": shlex.join(["python", "reproduce.py", *argv]), "versions": versions(),
              **collect({n: {**last[n], **final.get(n, {})} for n in last}, setting_of,
                        {setting_of(n): flags_of(a) for n, a in todo})}
    runs.atomic_save(json.dumps(record, indent=1) + "\n", path)
    return record


def within(ref, mine):
    """Whether mine [mean, std] lies within ref's [mean, std] seed spread (see the module's note); for names,
    equality."""
    if isinstance(ref, str) or isinstance(mine, str) or ref is None or mine is None:
        return ref == mine
    gap, spread = abs(mine["mean"] - ref["mean"]), 2 * max(ref["std"], mine["std"])
    return gap <= spread + SLACK * abs(ref["mean"]) or math.isclose(mine["mean"], ref["mean"])


def compare(reference, mine, differences):
    """The check's lines and whether it passed: reference and mine as write() makes them; differences:
    {run name: [how its settings differ from the reference's]}."""
    lines, ok = [], True
    for run, how in differences.items():
        if how:
            ok = False
            lines.append(f"settings differ: {run}: {'; '.join(how[:3])}")
    lines += ["", "| setting | number | reference (n) | yours (n) | within the seed spread |",
              "|---|---|---|---|---|"]
    show = lambda v, n: v if isinstance(v, str) or v is None else f"{v['mean']:.6g} ± {v['std']:.2g} ({n})"  # noqa
    for setting, ref in reference["settings"].items():
        if setting not in mine["settings"]:
            ok = False
            lines.append(f"| {setting} | (no run of it here) | | | no |")
            continue
        here = mine["settings"][setting]
        for label, value in ref["summary"].items():
            found = here["summary"].get(label, "missing")
            good = found != "missing" and within(value, found)
            ok &= good
            lines.append(f"| {setting} | {label} | {show(value, len(ref['seeds']))} | "
                         f"{'(missing)' if found == 'missing' else show(found, len(here['seeds']))} | "
                         f"{'yes' if good else '**no**'} |")
    return lines, ok


def reference_for(name):
    """results/NAME.json, or ValueError saying that none is committed."""
    path = os.path.join(REFERENCE, f"{name}.json")
    if not os.path.isfile(path):
        have = sorted(f[:-5] for f in os.listdir(REFERENCE) if f.endswith(".json")) if os.path.isdir(REFERENCE) else []
        raise ValueError(f"no reference numbers for {name} (results/{name}.json); --check works for "
                         f"{', '.join(have) or 'none yet'}")
    return json.load(open(path))


def flags_of(argv):
    """A run's train.py flags less its --seed and --out (the same for every seed of a setting)."""
    drop = {i + d for i, w in enumerate(argv) if w in ("--seed", "--out") for d in (0, 1)}
    return [w for i, w in enumerate(argv) if i not in drop]


def check(name, exp, runs_dir, data_root, numbers, setting_of):
    """reproduce.py --check: the runs in runs_dir against results/<name>.json; the exit code. numbers and
    setting_of: reproduce.py's (each run's numbers, a run's setting)."""
    reference = reference_for(name)
    if not os.path.isdir(runs_dir):
        raise ValueError(f"--check {runs_dir}: no such folder; give the folder holding your runs")
    todo, differ = [], {}
    for setting, ref in reference["settings"].items():
        for seed in sorted((f.rsplit("-seed", 1)[1] for f in os.listdir(runs_dir)
                            if f.rsplit("-seed", 1)[0] == setting and f.rsplit("-seed", 1)[-1].isdigit()), key=int):
            run, planned = f"{setting}-seed{seed}", shlex.split(ref["train_flags"])
            run_dir = os.path.join(runs_dir, run)
            if sweep.state(run_dir) != "finished":
                raise ValueError(f"{run_dir} holds no finished run; finish it (python train.py --resume "
                                 f"{run_dir}) or move it away")
            i = planned.index("--data-root") if "--data-root" in planned else len(planned)
            planned = [*planned[:i], *planned[i + 2:], "--data-root", data_root]  # yours, not ours
            todo.append((run, [*planned, "--seed", seed, "--out", run_dir]))
            differ[run] = sweep.differences(run_dir, todo[-1][1])
    if not todo:
        raise ValueError(f"{runs_dir} holds no run named <setting>-seed<N> of {name} (settings: "
                         f"{', '.join(reference['settings'])})")
    last, final = numbers(exp, runs_dir, todo, data_root)
    mine = collect({n: {**last[n], **final.get(n, {})} for n in last}, setting_of)
    lines, ok = compare(reference, mine, differ)
    print("\n".join([f"{name}: {runs_dir} against results/{name}.json ({reference['command']}, "
                     f"{reference['versions']['project'] or 'unknown commit'})", *lines, "",
                     "PASS: within the seed spread" if ok else "FAIL: see the rows above"]))
    return 0 if ok else 1
