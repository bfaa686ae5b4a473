"""sweep.py --launcher slurm: a sweep's runs as one Slurm job array, through submitit; and sweep.py --status.

Each array task is one Member: train.py in a child process, started new, resumed (--resume) when its folder
holds an unfinished run, or skipped when it holds a finished one, so the array is as idempotent as the local
launcher. Before its time limit (or on preemption) Slurm sends the task SIGUSR2 (submitit's --signal=USR2@90);
submitit then calls Member.checkpoint, which stops the child with Ctrl-C's signal, so the run saves where it
is, and requeues the task, which resumes the run. The child ignores SIGUSR2 itself. A Slurm preemption's
SIGTERM reaches the child too, which saves and stops the same way.
"""
import json
import os
import shlex
import signal
import subprocess
import sys

import guard
import runs

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN = os.path.join(HERE, "train.py")
EXIT = "sweep.py: train.py exited with "  # the last line of a run's log: how its process ended


RESUMABLE = (129, 130, 143, -1, -2, -15)  # stopped by a signal (saved, or before it began): resumed, not failed
# sbatch options submitit sets itself, or sweep.py's own flags set: not to be given again with --sbatch
OWNED = {"time", "partition", "cpus-per-task", "gpus-per-node", "signal", "array", "output", "error", "job-name",
         "open-mode", "wckey", "nodes"}


def start(argv, log_path, env=None, slurm=False):
    """train.py with argv in a child process of its own session, its output appended to log_path: (process,
    log file). Under Slurm the child ignores SIGUSR2 (Slurm's early warning, meant for submitit)."""
    log = open(log_path, "a")
    ignore = (lambda: signal.signal(signal.SIGUSR2, signal.SIG_IGN)) if slurm else None
    return subprocess.Popen([sys.executable, TRAIN, *argv], stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True, preexec_fn=ignore), log


def threads_env(jobs):
    """The environment for one of `jobs` runs at a time: the cores this process may use (a Slurm task's or
    taskset's share, not the node's), shared out as OMP_NUM_THREADS."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return dict(os.environ, OMP_NUM_THREADS=str(max(1, (cores or 1) // jobs)))


def ended(proc, log):
    """Write how the process ended as its log's last line (--status reads it); its exit code."""
    log.write(f"\n{EXIT}{proc.returncode}\n")
    log.close()
    return proc.returncode


class Member:
    """One run of a sweep as a submitit task (picklable: its name, argv and log; submitit.helpers.Checkpointable's
    protocol, a checkpoint method, without importing submitit here)."""

    def __init__(self, name, argv, log_path):
        self.name, self.argv, self.log_path, self.proc, self.log = name, argv, log_path, None, None

    def __getstate__(self):
        return {"name": self.name, "argv": self.argv, "log_path": self.log_path, "proc": None, "log": None}

    def __call__(self):
        import sweep
        run_dir = self.argv[self.argv.index("--out") + 1]
        what = sweep.state(run_dir)
        if what == "finished":
            return f"{self.name}: finished before, skipped"
        self.proc, self.log = start(["--resume", run_dir] if what == "unfinished" else self.argv, self.log_path,
                                    threads_env(1), slurm=True)
        self.proc.wait()
        if ended(self.proc, self.log):
            raise RuntimeError(f"{self.name}: train.py exited with {self.proc.returncode}: {last_line(self.log_path)}")
        return f"{self.name}: done"

    def checkpoint(self, *args, **kwargs):
        """Submitit's signal before the time limit or on preemption: stop the run (it saves), requeue it."""
        from submitit.helpers import DelayedSubmission
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
            try:  # os.waitpid, not Popen.wait: the frame this signal interrupted may hold Popen's lock
                self.proc.returncode = os.waitstatus_to_exitcode(os.waitpid(self.proc.pid, 0)[1])
                ended(self.proc, self.log)
            except ChildProcessError:  # it had ended, and was reaped, as the signal came
                pass
        return DelayedSubmission(Member(self.name, self.argv, self.log_path))


def executor(folder, opts):
    """submitit's SlurmExecutor writing into folder, from sweep.py's slurm flags (opts: its parsed args)."""
    import submitit
    ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=opts.requeues)
    extra = {k.replace("_", "-"): v for k, _, v in (o.partition("=") for o in opts.sbatch)}
    ex.update_parameters(time=opts.time, cpus_per_task=opts.cpus_per_task, partition=opts.partition,
                         gpus_per_node=opts.gpus_per_task or None, array_parallelism=opts.array_parallelism,
                         job_name=os.path.basename(os.path.normpath(os.path.dirname(folder))),
                         setup=[f"export PYTHONPATH={shlex.quote(HERE)}${{PYTHONPATH:+:$PYTHONPATH}}"],  # Member's
                         additional_parameters=extra)
    return ex


def absolute_data_root(words):
    """train.py's words with --data-root absolute (the default ./data said): a node may start elsewhere."""
    for i, w in enumerate(words):
        if w == "--data-root" and i + 1 < len(words):
            return [*words[:i + 1], os.path.abspath(words[i + 1]), *words[i + 2:]]
        if w.startswith("--data-root="):
            return [*words[:i], f"--data-root={os.path.abspath(w.split('=', 1)[1])}", *words[i + 1:]]
    return [*words, "--data-root", os.path.abspath("data")]


def job_ids(out):
    """{run: Slurm job id} of the sweep in out (slurm.json), as submit() kept them."""
    path = os.path.join(out, "slurm.json")
    return json.load(open(path)) if os.path.isfile(path) else {}


def queued(ids):
    """The job ids (of ids) that Slurm still has queued or running (squeue); None where squeue cannot say."""
    if not ids:
        return set()
    try:
        found = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(ids)], capture_output=True, text=True,
                               timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return {i for i in found.stdout.split() if i in ids} if found.returncode == 0 else None


def submit(todo, out, ex):
    """One job array (through the submitit executor ex) of every run in todo neither finished, nor running
    (its lock held), nor still queued; their job ids are kept in out/slurm.json for --status. Returns
    (jobs, names of the runs left alone as running or queued)."""
    import sweep
    ids = job_ids(out)
    live = queued(list(ids.values())) or set()
    todo = [(name, argv) for name, argv in todo if sweep.state(argv[argv.index("--out") + 1]) != "finished"]
    busy = [name for name, argv in todo if ids.get(name) in live or guard.held(argv[argv.index("--out") + 1])]
    todo = [(name, argv) for name, argv in todo if name not in busy]
    if not todo:
        return [], busy
    try:
        jobs = ex.submit_array([Member(name, argv, os.path.join(out, f"{name}.log")) for name, argv in todo])
    except Exception as e:  # sbatch refused it: its message, in one line
        raise ValueError(f"sbatch refused the array: {' '.join(str(e).split())[:300]}") from None
    runs.atomic_save(json.dumps({**ids, **{n: j.job_id for (n, _), j in zip(todo, jobs)}}, indent=2) + "\n",
                     os.path.join(out, "slurm.json"))
    return jobs, busy


def last_line(log_path, skip_exit=True):
    """The last non-empty line of a run's log (before the exit line), or ''."""
    try:
        lines = [line.strip() for line in open(log_path, errors="replace") if line.strip()]
    except OSError:
        return ""
    lines = [line for line in lines if not (skip_exit and line.startswith(EXIT))]
    return lines[-1] if lines else ""


def status(sweep_dir):
    """[(run, 'done' | 'running' | 'failed' | 'pending', detail)] of each run of the sweep in sweep_dir."""
    import sweep
    manifest = os.path.join(sweep_dir, "sweep.json")
    if not os.path.isfile(manifest):
        raise ValueError(f"{sweep_dir} holds no sweep (no sweep.json); give the folder sweep.py --out made")
    ids = job_ids(sweep_dir)
    live = queued(list(ids.values()))  # None: no squeue here (or it failed), so no word on the queue
    rows = []
    for name in json.load(open(manifest))["runs"]:
        run_dir, log = os.path.join(sweep_dir, name), os.path.join(sweep_dir, f"{name}.log")
        job = f"Slurm job {ids[name]}" if name in ids else ""
        path, code = os.path.join(run_dir, "checkpoint.pt"), last_line(log, skip_exit=False)
        ckpt = runs.load_checkpoint(path) if os.path.isfile(path) else None  # loaded once: state() takes it
        what = "new" if ckpt is None else sweep.state(run_dir, ckpt)
        code = int(code[len(EXIT):]) if code.startswith(EXIT) else None
        if what == "finished":
            rows.append((name, "done", f"{ckpt['epoch']} epochs"))
        elif guard.held(run_dir):
            rows.append((name, "running", ", ".join(filter(None, [job, last_line(log)]))))
        elif code not in (None, 0, *RESUMABLE):
            rows.append((name, "failed", f"exit {code}: {last_line(log)}"))
        else:
            resumes = ckpt and saved_at(ckpt) + ", resumes"
            gone = live is not None and name in ids and ids[name] not in live
            rows.append((name, "pending", ", ".join(filter(None, [job, resumes, gone and "not queued any more: run "
                                                                   "the same sweep.py command to submit it again"]))))
    return rows


def saved_at(ckpt):
    """Where a checkpoint resumes from: 'epoch 3 saved', or 'epoch 4 saved at step 120' when it stopped inside one."""
    mid = ckpt["mid_epoch"]
    return f"epoch {ckpt['epoch'] + 1} saved at step {mid['step']}" if mid else f"epoch {ckpt['epoch']} saved"


def submit_sweep(todo, args):
    """sweep.py --launcher slurm: the sweep's runs as one job array (submit); says its id and how to follow it."""
    jobs, busy = submit(todo, args.out, executor(os.path.join(args.out, "slurm"), args))
    if busy:
        print(f"sweep.py: left alone, still queued or running: {', '.join(busy)}")
    if not jobs:
        print(f"sweep.py: nothing to submit: every run of {args.out} has finished, or is queued or running")
        return 0
    print(f"Submitted {len(jobs)} run(s) as Slurm job array {jobs[0].job_id.split('_')[0]} (submitit's files "
          f"in {args.out}/slurm); follow it with: python sweep.py --status {args.out}")
    return 0


def show_status(sweep_dir):
    """--status: a line per run of the sweep, and a count of each state."""
    rows = status(sweep_dir)
    width = max(len(name) for name, _, _ in rows)
    for name, what, detail in rows:
        print(f"{name:<{width}}  {what:<8} {detail}".rstrip())
    counts = {w: sum(r[1] == w for r in rows) for w in ("done", "running", "failed", "pending")}
    print(", ".join(f"{n} {w}" for w, n in counts.items() if n))
    return 1 if counts["failed"] else 0
