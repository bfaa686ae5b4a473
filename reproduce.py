"""One reference experiment, rerun with the settings and seeds it needs, our numbers printed
beside the published ones.

    python reproduce.py --list
    python reproduce.py pytorch-examples-vae                 # 10 epochs, seeds 1, 2, 3
    python reproduce.py vaegan-batchnorm --quick             # minutes on a laptop CPU
    python reproduce.py cifar10-regularization --cifar10 npz:train.npz,test.npz

The runs are ordinary train.py runs (sweep.py's machinery), in runs/reproduce/<name>/ (or
<name>-quick/): the same command again skips finished runs and resumes unfinished ones.
--quick runs fewer epochs and one seed, and says so: its numbers are a smoke test, not a
reproduction.
"""
import argparse
import json
import math
import os
import sys

import torch

import data
import experiments
import flags
import guard
import record
import runs
import sweep
import tables


def build_parser():
    p = argparse.ArgumentParser(prog="reproduce.py", description=flags.description(__doc__),
                                formatter_class=flags.Help)
    p.add_argument("name", nargs="?", help="the experiment (see --list)")
    p.add_argument("--list", action="store_true", help="name every experiment and stop")
    p.add_argument("--quick", action="store_true", help="fewer epochs and one seed: minutes")
    p.add_argument("--seeds", default="1,2,3", help="comma-separated seeds of every setting")
    p.add_argument("--epochs", type=int, help="a shorter budget: every setting at most this many epochs, "
                   "in <name>-epochs<N>/ (the report says so; default: the experiment's)")
    p.add_argument("--data-root", default="./data", help="train.py's --data-root")
    p.add_argument("--cifar10", default="cifar10", help="the CIFAR-10 dataset to use, e.g. "
                   "npz:TRAIN,TEST for a part of it (the cifar10-* experiments)")
    p.add_argument("--runs", default=os.path.join("runs", "reproduce"), help="where the runs go")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time")
    p.add_argument("--settings", help="comma-separated: run and report only these settings "
                   "(the names in the report's first column; default: all)")
    p.add_argument("--check", metavar="RUNS", help="run nothing: compare the runs in RUNS (<setting>-seed<N> "
                   "folders) with the committed results/<name>.json, settings and numbers; exit 1 if they differ")
    return p


def plan(name, exp, args):
    """(folder, [(run name, train.py argv)]) of each chosen setting and seed; ValueError on bad flags."""
    seeds = args.seeds.split(",")
    if args.jobs < 1 or len(set(seeds)) < len(seeds) or not all(s.isdigit() for s in seeds):
        raise ValueError(f"give --jobs >= 1 and distinct --seeds (got --jobs {args.jobs}, "
                         f"--seeds {args.seeds})")
    chosen = args.settings.split(",") if args.settings else list(exp["settings"])
    unknown = [s for s in chosen if s not in exp["settings"]]
    if unknown:
        raise ValueError(f"--settings: {', '.join(unknown)} not a setting of {name}; its settings "
                         f"are {', '.join(exp['settings'])}")
    seeds, epochs = (["1"], exp["epochs"][1]) if args.quick else (seeds, args.epochs or exp["epochs"][0])
    if args.epochs is not None and (args.quick or not 1 <= args.epochs < exp["epochs"][0]):
        raise ValueError(f"--epochs {args.epochs}: give 1 to {exp['epochs'][0] - 1} (the experiment has "
                         f"{exp['epochs'][0]}), and not with --quick")
    folder = os.path.join(args.runs, name + ("-quick" if args.quick else f"-epochs{epochs}" if args.epochs else ""))
    dataset = ["--dataset", args.cifar10] if name.startswith("cifar10") else []
    todo = []
    for setting in (s for s in exp["settings"] if s in chosen):
        argv, own = own_epochs(exp["settings"][setting], exp["epochs"][0])
        todo += [(f"{setting}-seed{seed}", [*exp["base"], *dataset, *argv, "--seed", seed,
                                            "--epochs", str(min(own, epochs)),  # --quick caps it
                                            "--data-root", args.data_root, "--log-interval", "1000",
                                            "--out", os.path.join(folder, f"{setting}-seed{seed}")])
                 for seed in seeds]
    return folder, todo


def own_epochs(argv, full):
    """(a setting's flags less its own --epochs N, N): PCA's 1; full when it gives none."""
    if "--epochs" not in argv:
        return argv, full
    i = argv.index("--epochs")
    return argv[:i] + argv[i + 2:], int(argv[i + 1])


def value(row, how):
    """A history row's (or metrics.json's) number: row[how], or how(row) for a function."""
    return how(row) if callable(how) else row.get(how)


def setting_of(run_name):
    """'bn' of the run 'bn-seed1'."""
    return run_name.rsplit("-seed", 1)[0]


def report(exp, folder, todo, final):
    """The report: title, units, ours beside the published (per epoch, or layout "final"), measured()."""
    histories = {}
    for name, _ in todo:
        ckpt = runs.load_checkpoint(os.path.join(folder, name, "checkpoint.pt"))
        histories.setdefault(setting_of(name), []).append(ckpt["history"])
    table = final_table if exp.get("layout") == "final" else epoch_tables
    return "\n".join([f"## {exp['title']}", "", f"Units: {exp['note']}.", "",
                      *table(exp, histories), *measured(exp, todo, final)])


def numbers(exp, folder, todo, data_root, quick=False):
    """({run: {column: its value at the last epoch}}, {run: {label: what exp["final"] measures}})."""
    import evaluate  # imported where needed (as figures): its imports would slow --help and --list
    last, final = {}, {}
    for name, _ in todo:
        run_dir = os.path.join(folder, name)
        row = runs.load_checkpoint(os.path.join(run_dir, "checkpoint.pt"))["history"][-1]
        last[name] = {label: v for label, how in exp["columns"] if (v := value(row, how)) is not None}
        if exp.get("final") == "autoencoder":
            final[name] = evaluate.autoencoder_measures(*evaluate.load_run(run_dir)[:2], data_root)
        elif "final" in exp:
            final[name] = evaluated(run_dir, data_root, exp["final"], quick)
    return last, final


def epoch_tables(exp, histories):
    """Per column, one row per epoch: each setting's mean +- std over seeds, the published beside."""
    published, lines = exp["published"], []
    last = max(len(h) for hs in histories.values() for h in hs)
    for label, how in exp["columns"]:
        heads, cells_of = ["epoch"], []
        for setting, hs in histories.items():
            heads.append(f"{setting} (ours, n={len(hs)})")
            cells_of.append(lambda e, hs=hs: tables.spread([value(h[e - 1], how) for h in hs if len(h) >= e]))
            if any(label in v for v in published.get(setting, {}).values()):
                heads.append(f"{setting} (published)")
                cells_of.append(lambda e, s=setting: tables.spread([published[s].get(e, {}).get(label)]))
        epochs = set(range(1, last + 1)) | {e for by in published.values() for e, v in by.items()
                                            if label in v}
        rows = [[str(e), *(cells(e) for cells in cells_of)] for e in sorted(epochs)]
        lines += [f"{label}:", "", *tables.markdown(heads, rows), ""]
    return lines


def final_table(exp, histories):
    """One row per setting: every column at the last epoch, ours (mean +- std) and the
    published number after it where there is one."""
    last = max(len(h) for hs in histories.values() for h in hs)
    published = {s: by.get(last, {}) for s, by in exp["published"].items()}
    heads, rows = ["setting", "n", "epoch"], []
    for label, _ in exp["columns"]:
        heads += [label] + [f"{label}, published"] * any(label in v for v in published.values())
    for setting, hs in histories.items():
        rows.append([setting, str(len(hs)), str(min(len(h) for h in hs))])
        for label, how in exp["columns"]:
            rows[-1].append(tables.spread([value(h[-1], how) for h in hs]))
            if f"{label}, published" in heads:
                rows[-1].append(tables.spread([published.get(setting, {}).get(label)]))
    return tables.markdown(heads, rows) + [""]


def measured(exp, todo, final):
    """The table of the numbers exp["final"] measured on each run's last weights (final: {run: {label: v}})."""
    if "final" not in exp:
        return []
    found = {}  # label: {setting: [value per seed]}
    for name, _ in todo:
        for label, v in final[name].items():
            found.setdefault(label, {}).setdefault(setting_of(name), []).append(v)
    found = dict(sorted(found.items(), key=lambda item: -len(item[1])))  # labels most runs have first
    published = exp.get("published_final", {})
    beside = [label for label in found if any(label in p for p in published.values())]
    rows = [[s, *(tables.spread(by.get(s, [])) for by in found.values()), *(published.get(s, {}).get(label, "")
                                                                     for label in beside)]
            for s in dict.fromkeys(setting_of(n) for n, _ in todo)]
    heads = ["setting", *found, *(f"{label}, published" for label in beside)]
    lines = ["At the last epoch:", "", *tables.markdown(heads, rows)]
    return lines + (["", *one_class_summary(found)] if exp.get("per_class") else [])


def evaluated(run_dir, data_root, spec, quick=False):
    """{label: number} of a finished run from its metrics.json, after `evaluate.py RUN` with
    spec's flags (experiments.py) unless it already holds them for the run's last weights."""
    import evaluate
    k = spec["iw"][1 if quick else 0] if "iw" in spec else None  # --iw-samples K
    path = os.path.join(run_dir, "metrics.json")
    m = json.load(open(path)) if os.path.isfile(path) else {}
    if not (m.get("weights") == "last" and spec["ready"](m) and k in (None, m.get("iw_samples"))
            and os.path.getmtime(path) >= os.path.getmtime(os.path.join(run_dir, "checkpoint.pt"))):
        iw = ["--iw-samples", str(k)] if k else []
        code = evaluate.main([run_dir, *spec["flags"], *iw, "--data-root", data_root])
        if code:
            raise SystemExit(code)
        m = json.load(open(path))
    return {label: v for label, key in spec["labels"].items() if (v := value(m, key)) is not None}


def one_class_summary(found):
    """Per dataset, one row per normal class: each model's best score (the highest mean AUROC
    over the ten classes) as mean +- std over seeds in %, the published methods beside it."""
    lines = []
    for dataset in dict.fromkeys(s.split("-")[0] for s in next(iter(found.values()))):
        scores, heads = {}, ["normal class"]  # model: [AUROCs in % of its best score, per class]
        for model in experiments.ONE_CLASS_MODELS:
            per_class = {label: [[100 * x for x in by.get(f"{dataset}-{c}-{model}", [])]
                                 for c in range(10)] for label, by in found.items()}
            mean = {label: sum(sum(v) / len(v) for v in vs if v) / 10 for label, vs in per_class.items()}
            best = max((label for label in mean if mean[label]), key=mean.get)
            scores[model] = per_class[best]
            heads.append(f"{model} ({best[6:]})")
        published = experiments.ONE_CLASS_PUBLISHED.get(dataset, {})
        heads += [f"{p} (published)" for p in published]
        rows = [[str(c), *(tables.spread(s[c]) for s in scores.values()),
                 *(f"{p[c]:.1f}" for p in published.values())] for c in range(10)]
        means = [sum(sum(v) / len(v) if v else math.nan for v in s) / 10 for s in scores.values()]
        rows.append(["mean", *(f"**{m:.2f}**" for m in means),
                     *(f"{sum(p) / 10:.2f}" for p in published.values())])
        lines += [f"{dataset}, AUROC in % (each model's best score named in the header; "
                  f"mean ± std over seeds):", "", *tables.markdown(heads, rows), ""]
    return lines


def draw(exp, folder, todo, data_root):
    """The experiment's figures, from each setting's first seed: 16 samples per setting (the
    same z for one latent size), or 12 test images over each setting's reconstructions.
    Returns the files written."""
    import evaluate
    import figures
    first = {setting_of(n): os.path.join(folder, n) for n, _ in reversed(todo)}  # the first seed wins
    written = []
    for filename, kind, title, settings in exp.get("figures", ()):
        rows, labels = [], []
        for setting in (s for s in settings if s in first):
            cfg, model = evaluate.load_run(first[setting])[:2]
            model.eval()
            if kind == "samples":
                z = torch.randn(16, model.latent_dim, generator=torch.Generator().manual_seed(0))
                rows.append(figures.decode01(model, z))
            else:  # reconstructions of the same test images
                if not rows:
                    test = data.load(cfg["dataset"], data_root, "cpu", download=False,
                                     size=cfg["image_size"], channels=cfg["channels"])["test"]
                    x, target, y = evaluate.test_inputs(test, cfg["output"], cfg["noise"], 12)
                    rows, labels = [data.to_unit(target, cfg["output"])], ["original"]
                rows.append(data.to_unit(model.reconstruct(x, y), cfg["output"]).clamp(0, 1))
            labels.append(setting)
        if rows:
            written.append(os.path.join(folder, filename))
            figures.image_rows(rows, labels, written[-1], title)
    return written


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    known = experiments.EXPERIMENTS
    if args.list or not args.name:
        print("\n".join(f"{name}: {exp['title']}" for name, exp in known.items()))
        return 0 if args.list else 2
    if args.name not in known:
        print(f"reproduce.py: error: unknown experiment {args.name!r}; use one of "
              f"{', '.join(known)}", file=sys.stderr)
        return 2
    exp, held = known[args.name], None
    try:
        if args.check:
            return record.check(args.name, exp, args.check, args.data_root, numbers, setting_of)
        folder, todo = plan(args.name, exp, args)
        held = guard.lock(folder, fresh=False)
        new = sweep.check(todo, "another --runs")
        if args.jobs > 1:
            sweep.fetch_data(new)
        code = sweep.run_all(todo, args.jobs)
    except ValueError as e:
        print(f"reproduce.py: error: {e}", file=sys.stderr)
        return 2
    finally:
        if held:
            guard.unlock(held, folder)
    if code:
        return code
    last, final = numbers(exp, folder, todo, args.data_root, args.quick)
    text = report(exp, folder, todo, final)
    if args.quick:
        text = (f"QUICK: {exp['epochs'][1]} epoch(s), one seed: a smoke test, not comparable "
                f"with the published numbers.\n\n{text}")
    elif args.epochs:
        text = (f"SHORTER BUDGET: {args.epochs} of the experiment's {exp['epochs'][0]} epochs; the "
                f"published numbers are at the full budget.\n\n{text}")
    runs.atomic_save(text + "\n", os.path.join(folder, "report.md"))
    record.write(os.path.join(folder, "results.json"), args.name, argv, exp, todo, last, final, setting_of)
    print(text)
    for path in draw(exp, folder, todo, args.data_root):
        print(f"Figure: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
