"""The run folder on disk: atomic writes, history.csv, safe checkpoint loading.

Used by train.py (writing) and evaluate.py (reading). A checkpoint is a plain dict of
tensors and numbers, loaded with weights_only=True, so a shared file cannot run code.
"""
import csv
import json
import os

import torch


def atomic_save(obj, path):
    """Write to a temporary file in the same folder, fsync, then rename over `path`.

    A crash at any moment leaves either the old file or the new one, never half of one.
    `obj` is text (written as is) or anything torch.save takes.
    """
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        if isinstance(obj, str):
            f.write(obj.encode())
        else:
            torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_config(cfg, run_dir):
    atomic_save(json.dumps(cfg, indent=2) + "\n", os.path.join(run_dir, "config.json"))


def load_config(run_dir):
    with open(os.path.join(run_dir, "config.json")) as f:
        return json.load(f)


def write_history(rows, run_dir):
    """history.csv: one row per epoch, the columns of the first row."""
    tmp = os.path.join(run_dir, "history.csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, os.path.join(run_dir, "history.csv"))


def load_checkpoint(path):
    """torch.load with weights_only=True; a file that is not a checkpoint is one clear error."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot load checkpoint {path}: {first}") from None
