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
import signal
import subprocess
import sys

import runs

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN = os.path.join(HERE, "train.py")
EXIT = "sweep.py: train.py exited with "  # the last line of a run's log: how its process ended


def start(argv, log_path, env=None):
    """train.py with argv in a child process of its own session, its output appended to log_path: (process,
    log file). The child ignores SIGUSR2 (Slurm's early warning, meant for submitit)."""
    log = open(log_path, "a")
    ignore = lambda: signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # noqa: E731
    return subprocess.Popen([sys.executable, TRAIN, *argv], stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True, preexec_fn=ignore), log


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
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        env = dict(os.environ, OMP_NUM_THREADS=str(cores or 1))  # the task's CPUs, not the node's
        self.proc, self.log = start(["--resume", run_dir] if what == "unfinished" else self.argv, self.log_path, env)
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
    extra = dict(opt.split("=", 1) for opt in opts.sbatch)
    ex.update_parameters(time=opts.time, cpus_per_task=opts.cpus_per_task, partition=opts.partition,
                         gpus_per_node=opts.gpus_per_task or None, array_parallelism=opts.array_parallelism,
                         job_name=os.path.basename(os.path.normpath(os.path.dirname(folder))),
                         setup=[f"export PYTHONPATH={HERE}${{PYTHONPATH:+:$PYTHONPATH}}"],  # Member's code
                         additional_parameters=extra)
    return ex


def submit(todo, out, ex):
    """One job array (through the submitit executor ex) of every run in todo not finished already; the job
    ids are kept in out/slurm.json for --status. Returns the jobs."""
    import sweep
    todo = [(name, argv) for name, argv in todo if sweep.state(argv[argv.index("--out") + 1]) != "finished"]
    if not todo:
        return []
    jobs = ex.submit_array([Member(name, argv, os.path.join(out, f"{name}.log")) for name, argv in todo])
    path = os.path.join(out, "slurm.json")
    ids = json.load(open(path)) if os.path.isfile(path) else {}
    runs.atomic_save(json.dumps({**ids, **{n: j.job_id for (n, _), j in zip(todo, jobs)}}, indent=2) + "\n", path)
    return jobs


def last_line(log_path, skip_exit=True):
    """The last non-empty line of a run's log (before the exit line), or ''."""
    try:
        lines = [line.strip() for line in open(log_path, errors="replace") if line.strip()]
    except OSError:
        return ""
    lines = [line for line in lines if not (skip_exit and line.startswith(EXIT))]
    return lines[-1] if lines else ""


def held(run_dir):
    """Whether a process holds run_dir's lock (a train.py writing it)."""
    import fcntl
    try:
        with open(os.path.join(run_dir, ".lock")) as f:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except FileNotFoundError:
        return False
    except OSError:
        return True


def status(sweep_dir):
    """[(run, 'done' | 'running' | 'failed' | 'pending', detail)] of each run of the sweep in sweep_dir."""
    import sweep
    manifest = os.path.join(sweep_dir, "sweep.json")
    if not os.path.isfile(manifest):
        raise ValueError(f"{sweep_dir} holds no sweep (no sweep.json); give the folder sweep.py --out made")
    ids_path = os.path.join(sweep_dir, "slurm.json")
    ids = json.load(open(ids_path)) if os.path.isfile(ids_path) else {}
    rows = []
    for name in json.load(open(manifest))["runs"]:
        run_dir, log = os.path.join(sweep_dir, name), os.path.join(sweep_dir, f"{name}.log")
        job = f"Slurm job {ids[name]}" if name in ids else ""
        what, code = sweep.state(run_dir), last_line(log, skip_exit=False)
        code = int(code[len(EXIT):]) if code.startswith(EXIT) else None
        saved = None if what == "new" else runs.load_checkpoint(os.path.join(run_dir, "checkpoint.pt"))["epoch"]
        if what == "finished":
            rows.append((name, "done", f"{saved} epochs"))
        elif held(run_dir):
            rows.append((name, "running", ", ".join(filter(None, [job, last_line(log)]))))
        elif code not in (None, 0, 130, 143):  # 130, 143: stopped by a signal, saved; it resumes
            rows.append((name, "failed", f"exit {code}: {last_line(log)}"))
        else:
            resumes = None if saved is None else f"epoch {saved} saved, resumes"
            rows.append((name, "pending", ", ".join(filter(None, [job, resumes]))))
    return rows
