"""Every combination of some settings, times seeds, as ordinary train.py runs in one folder.

    python sweep.py --seeds 1,2,3 --vary dropout=0,0.3 --vary beta=1,4 -- \
        --model vae --dataset cifar10 --arch conv --output tanh --epochs 20
    python evaluate.py runs/sweep-...          # groups the runs by setting: mean +- std, n

Each run gets a folder in the sweep folder named by its varied flags and seed (dropout0.3-beta4-seed2). Every
combination's flags are checked before the first run starts. A finished run is skipped and an unfinished one
resumed, so the same command continues an interrupted sweep. --jobs N runs N at a time, sharing the CPU threads
out. On a cluster, --launcher slurm submits the runs as one Slurm job array through submitit, each task
resuming its run after a preemption or its time limit (launch.py); --status SWEEP says what each run is doing:

    python sweep.py --launcher slurm --partition gpu --time 240 --gpus-per-task 1 --seeds 1,2,3 \
        --vary beta=1,4 --out runs/beta -- --model vae --dataset cifar10 --arch conv
    python sweep.py --status runs/beta
"""
import argparse
import importlib.util
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import sys
import time

import config
import flags
import guard
import launch
import runs
import train

# config keys that are not settings: a run folder may differ from the plan in these
BOOKKEEPING = config.RESUME_SAFE - {"epochs"} | {"out", "command", "resume_commands", "data", "format"}


def build_parser():
    """sweep.py's own flags (train.py's come after --)."""
    p = argparse.ArgumentParser(prog="sweep.py", description=flags.description(__doc__),
                                usage="sweep.py [options] -- TRAIN.PY FLAGS", formatter_class=flags.Help,
                                allow_abbrev=False)  # --part would pass the launcher check unseen
    p.add_argument("--vary", action="append", default=[], metavar="FLAG=V1,V2",
                   help="a train.py flag and its values (repeat for more flags); true/false for on/off "
                        "flags, e.g. --vary batchnorm=true,false; separate values with ; when they hold "
                        "commas: --vary 'hidden=400;300,100'")
    p.add_argument("--seeds", default="1,2,3", help="comma-separated seeds, each a run")
    p.add_argument("--out", default=None, help="the sweep folder (default runs/sweep-<time>)")
    p.add_argument("--jobs", type=int, default=1, help="local: runs at a time (threads shared out)")
    p.add_argument("--print-commands", action="store_true", help="print one train.py command per run, run nothing")
    p.add_argument("--launcher", choices=("local", "slurm"), default="local", help="local: run here; slurm: "
                   "submit one Slurm job array through submitit (one task per run) and return")
    p.add_argument("--status", metavar="SWEEP", help="say what each run of the sweep in SWEEP is doing (done, "
                   "running, failed with its last line, pending) and run nothing")
    s = p.add_argument_group("slurm (with --launcher slurm)")
    s.add_argument("--partition", help="the partition to submit to (default: the cluster's)")
    s.add_argument("--time", type=int, default=60, help="minutes per task; a run needing longer is saved and "
                   "requeued before the limit, at most --requeues times")
    s.add_argument("--requeues", type=int, default=3, help="requeues after a time limit (preemptions: any)")
    s.add_argument("--cpus-per-task", type=int, default=4, help="CPUs per task (train.py's threads)")
    s.add_argument("--gpus-per-task", type=int, default=0, help="GPUs per task")
    s.add_argument("--array-parallelism", type=int, default=64, help="tasks of the array running at once")
    s.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE", help="another sbatch option, "
                   "passed through (repeat): --sbatch account=lab --sbatch mem=16G --sbatch qos=short")
    return p


def check_launcher(args, own):
    """The launcher's flags agree (before any work): slurm flags only with slurm, numbers >= 1."""
    if args.launcher == "local":
        given = [f for f in ("--partition", "--time", "--requeues", "--cpus-per-task", "--gpus-per-task",
                             "--array-parallelism", "--sbatch") if any(w.split("=")[0] == f for w in own)]
        if given:
            raise ValueError(f"{given[0]} is a Slurm option; add --launcher slurm")
        return
    if args.jobs != 1:
        raise ValueError("--jobs is the local launcher's; with slurm, use --array-parallelism")
    if importlib.util.find_spec("submitit") is None or not shutil.which("sbatch"):
        raise ValueError("--launcher slurm needs submitit (pip install submitit) and Slurm's sbatch on PATH "
                         "(a cluster's login node)")
    for name in ("time", "cpus_per_task", "array_parallelism"):
        if getattr(args, name) < 1:
            raise ValueError(f"{config.flag(name)} must be >= 1, got {getattr(args, name)}")
    if args.requeues < 0 or args.gpus_per_task < 0:
        raise ValueError("--requeues and --gpus-per-task must be >= 0")
    bad = next((o for o in args.sbatch if "=" not in o or not o.split("=")[0]), None)
    if bad is not None:
        raise ValueError(f"--sbatch {bad!r}: write KEY=VALUE, e.g. --sbatch account=lab")
    owned = next((o for o in args.sbatch if o.split("=")[0].replace("_", "-") in launch.OWNED), None)
    if owned:
        raise ValueError(f"--sbatch {owned}: sweep.py sets that one (its own flag, or submitit's); "
                         f"use --partition, --time, --cpus-per-task, --gpus-per-task")
    args.out = os.path.abspath(args.out)  # the nodes may start elsewhere (--sbatch chdir=...)


def flag_words(name, value):
    """--vary's name=value as train.py's words: ['--lr=0.01'], ['--no-batchnorm'], []."""
    if name in ("seed", "out", "resume"):
        raise ValueError(f"--vary {name}: train.py has no such flag to vary (seed: use --seeds)")
    return flags.words(train.build_parser(), name, value, "--vary")


def plan(args, base):
    """[(run name, train.py argv)] of every combination and seed, in order."""
    vary = []
    for spec in args.vary:
        name, eq, values = spec.partition("=")
        if not eq or not values:
            raise ValueError(f"--vary {spec!r}: write FLAG=V1,V2 (e.g. dropout=0,0.3)")
        vary.append((name.strip().lstrip("-"), values.split(";" if ";" in values else ",")))
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise ValueError(f"--seeds {args.seeds!r}: give integers, e.g. 1,2,3") from None
    todo = []
    for values in itertools.product(*[v for _, v in vary]):
        words = [w for (name, _), value in zip(vary, values) for w in flag_words(name, value)]
        label = "-".join(f"{name}{value}" for (name, _), value in zip(vary, values))
        for seed in seeds:
            name = re.sub(r"[^A-Za-z0-9_.=+-]", "_", f"{label}-seed{seed}".lstrip("-"))
            todo.append((name, [*base, *words, "--seed", str(seed), "--out", os.path.join(args.out, name)]))
    names = [name for name, _ in todo]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice:
        raise ValueError(f"run {twice} comes twice (a repeated seed or value); give each once")
    return todo


def state(run_dir, ckpt=None):
    """'new', 'unfinished' or 'finished' for a run folder; ckpt: its checkpoint, when the caller has loaded it."""
    path = os.path.join(run_dir, "checkpoint.pt")
    if ckpt is None and not os.path.isfile(path):
        return "new"
    ckpt, cfg = runs.load_checkpoint(path) if ckpt is None else ckpt, runs.load_config(run_dir)
    done = ckpt["epoch"] >= cfg["epochs"] and ckpt["mid_epoch"] is None
    # a run that failed after its last checkpoint (a full disk) has fewer history rows
    return "finished" if done and runs.history_rows(run_dir) == len(ckpt["history"]) else "unfinished"


def differences(run_dir, argv):
    """How run_dir's run differs from argv's in every setting: ["--lr 0.001 there, 0.0025 planned", ...]."""
    i = argv.index("--out")
    planned = train.resolve([*argv[:i + 1], os.path.normpath(run_dir) + "-unused", *argv[i + 2:]])[0]
    saved = config.fill_added(runs.load_config(run_dir))  # an older version's run: as it ran
    return [f"{config.flag(k)} {saved.get(k)!r} there, {planned.get(k)!r} planned"
            for k in sorted((set(saved) | set(planned)) - BOOKKEEPING) if saved.get(k) != planned.get(k)]


def check(todo, elsewhere="another --out", here=True):
    """Before any run starts: each run's flags checked, each existing run folder holding its run -> new configs.
    here: the runs run on this machine (not on a cluster's nodes), so their --device must exist here."""
    new = []
    for name, argv in todo:
        run_dir = argv[argv.index("--out") + 1]
        try:
            if state(run_dir) == "new":
                new.append(train.resolve(argv)[0])
                if here:
                    config.pick_device(new[-1]["device"])
                continue
            other = differences(run_dir, argv)
        except (ValueError, SystemExit) as e:
            why = e if isinstance(e, ValueError) else "a malformed flag (printed above)"
            raise ValueError(f"run {name}: {why}") from None
        if other:
            raise ValueError(f"run {name}: {run_dir} holds a run with other settings ({'; '.join(other[:3])}); "
                             f"move that folder away, or give {elsewhere}")
    return new


def fetch_data(configs):
    """Each dataset the new runs use, fetched once here: runs started together would write the same files."""
    import data
    for dataset, root, download, size, channels, skip in dict.fromkeys(
            (c["dataset"], c["data_root"], c["download"], c["image_size"], c["channels"],
             c["skip_bad_images"]) for c in configs):
        try:
            data.load(dataset, root, "cpu", download, size=size, channels=channels, skip_bad=skip)
        except (OSError, RuntimeError) as e:
            raise ValueError(f"--dataset {dataset}: {e}") from None


def main(argv=None):
    """sweep.py's command line -> exit code."""
    argv = sys.argv[1:] if argv is None else argv
    own, base = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args, held = build_parser().parse_args(own), None
    try:
        if args.status:
            return launch.show_status(args.status)
        check_launcher(args, own)
        base = launch.absolute_data_root(base) if args.launcher == "slurm" else base
        if "--out" in base or "--resume" in base or "--seed" in base:
            raise ValueError("give --out to sweep.py (the sweep folder) and seeds with --seeds; "
                             "train.py's --out, --resume and --seed are set for each run")
        if args.jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
        args.out = args.out or os.path.join("runs", f"sweep-{time.strftime('%Y%m%d-%H%M%S')}")
        todo = plan(args, base)
        if args.print_commands:
            print("\n".join(shlex.join([sys.executable, launch.TRAIN, *a]) for _, a in todo))
            return 0
        manifest = {"vary": args.vary, "seeds": args.seeds, "train_flags": base, "runs": [n for n, _ in todo]}
        path = os.path.join(args.out, "sweep.json")
        if os.path.isfile(path) and json.load(open(path)) != manifest:
            raise ValueError(f"{args.out} holds another sweep (its sweep.json differs); use another --out, "
                             f"or the same flags to continue it")
        held = guard.lock(args.out, fresh=False)  # one sweep per folder
        new = check(todo, here=args.launcher == "local")
        if args.jobs > 1 or args.launcher == "slurm":  # fetched once here, not by runs starting together
            fetch_data(new)
        runs.atomic_save(json.dumps(manifest, indent=2) + "\n", path)
        if args.launcher == "slurm":
            return launch.submit_sweep(todo, args)
        return run_all(todo, args.jobs, f"the same command with --out {args.out}")
    except ValueError as e:  # a run folder damaged while the sweep runs too
        print(f"sweep.py: error: {e}", file=sys.stderr)
        return 2
    finally:
        if held:
            guard.unlock(held, args.out)


def run_all(todo, jobs, again="the same command"):
    """Run, resume or skip each run, jobs at a time, with a progress line as each ends. Each run is its
    own session: a Ctrl-C (or SIGTERM) here is passed on to each running run once, so each saves and
    stops; a second one is passed on again, stopping them at once."""
    env = launch.threads_env(jobs)
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # as Ctrl-C
    waiting, running, failed, t0, done = list(todo), {}, [], time.perf_counter(), 0
    try:
        while waiting or running:
            while waiting and len(running) < jobs:
                name, argv = waiting.pop(0)
                run_dir = argv[argv.index("--out") + 1]
                what = state(run_dir)
                if what == "finished":
                    done += 1
                    print(f"[{done}/{len(todo)}] {name}: finished before, skipped", flush=True)
                    continue
                argv = ["--resume", run_dir] if what == "unfinished" else argv
                running[name] = launch.start(argv, os.path.join(os.path.dirname(run_dir), f"{name}.log"), env)
            time.sleep(0.2)
            for name, (proc, log) in list(running.items()):
                if proc.poll() is None:
                    continue
                launch.ended(proc, log)
                del running[name]
                done += 1
                elapsed, left = time.perf_counter() - t0, len(waiting) + len(running)
                status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}, see {log.name})"
                failed += [name] if proc.returncode else []
                print(f"[{done}/{len(todo)}] {name}: {status}; {elapsed / 60:.1f} min so far, "
                      f"{left} left (about {elapsed / done * left / 60:.1f} min)", flush=True)
    except KeyboardInterrupt:
        stop_all(running)
        print(f"\nsweep.py: interrupted; every run saved where it stopped; run {again} to continue",
              file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    if failed:
        print(f"sweep.py: {len(failed)} run(s) failed: {', '.join(failed)}; the same command retries them",
              file=sys.stderr)
        return 1
    return 0


def stop_all(running):
    """Pass a Ctrl-C on to each running run {name: (process, log)} once, so each saves and stops, and wait
    for them; a second Ctrl-C passes it on again, stopping them at once."""
    while running:
        for proc, _ in running.values():
            proc.send_signal(signal.SIGINT)
        try:
            for name, (proc, log) in list(running.items()):
                proc.wait()
                launch.ended(proc, log)
                del running[name]
        except KeyboardInterrupt:
            continue


if __name__ == "__main__":
    sys.exit(main())
