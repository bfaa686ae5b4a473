"""More hardware: the GPU speed flags, the device data budget, and several processes under torchrun
(`torchrun --nproc_per_node N train.py ...`), where DistributedDataParallel averages the gradients (gloo on
CPUs, nccl on GPUs) and each global batch (--batch-size) of rank 0's permutation is split into one part per
process, so N processes take the steps one would; rank 0 alone prints and writes. Batch norm stays per process:
SyncBatchNorm would add a collective per layer per forward pass. Alone, every function here is a no-op.
"""
import contextlib
import os
import shutil
import subprocess
import sys

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel


def world():
    """(rank, number of processes, local rank); (0, 1, 0) outside a process group."""
    local = int(os.environ.get("LOCAL_RANK", 0))
    return (dist.get_rank(), dist.get_world_size(), local) if active() else (0, 1, 0)


def active():
    """Whether this process is one of torchrun's, in a process group."""
    return dist.is_available() and dist.is_initialized()


def start():
    """Join the process group when launched by torchrun; silence stdout on ranks > 0."""
    if int(os.environ.get("WORLD_SIZE", 1)) == 1 or active():
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")
    if int(os.environ.get("RANK", 0)) > 0:
        sys.stdout = open(os.devnull, "w")  # rank 0 prints; errors still reach stderr


def stop():
    """Leave the process group, if in one."""
    if active():
        dist.destroy_process_group()


def device_for(device):
    """Each process its own GPU: cuda means cuda:LOCAL_RANK under torchrun."""
    return torch.device("cuda", world()[2]) if active() and device.type == "cuda" else device


def share(obj):
    """Rank 0's Python object, on every rank."""
    box = [obj]
    if active():
        dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj):
    """[obj of rank 0, obj of rank 1, ...] on every process; [obj] alone."""
    objs = [None] * world()[1] if active() else [obj]
    if active():
        dist.all_gather_object(objs, obj)
    return objs


def shard(order, batch_size):
    """This process's part r of each global batch k, tensor_split(order[kB:(k + 1)B], N)[r]; a last one
    under 2N images is dropped, so every process takes as many steps, each of 2 images or more (batch norm)."""
    if not active():
        return order
    rank, size, _ = world()
    if dist.get_backend() == "nccl" and not order.is_cuda:  # a split in host memory
        sent = order.cuda()  # nccl sends GPU tensors only
        dist.broadcast(sent, src=0)
        order.copy_(sent)
    else:
        dist.broadcast(order, src=0)  # rank 0's permutation, the same on every process
    parts = [torch.tensor_split(order[i:i + batch_size], size)[rank]
             for i in range(0, len(order), batch_size) if len(order[i:i + batch_size]) >= 2 * size]
    return torch.cat(parts)


def total(tensor):
    """Sum over processes (in place, on the device)."""
    if active():
        dist.all_reduce(tensor)
    return tensor


def count(n, device):
    """An int summed over processes; n itself when alone (no round trip to the device)."""
    return int(total(torch.tensor(n, device=device)).item()) if active() else n


def minimum(tensor):
    """The smallest value on any process, elementwise (a copy; tensor itself when alone)."""
    if active():
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return tensor


def any_rank(flag):
    """True on every process when flag is true on any one (one small collective)."""
    if not active():
        return bool(flag)
    t = torch.tensor([int(bool(flag))], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


class LossOf(nn.Module):
    """model.loss as a forward pass, so DistributedDataParallel sees it and syncs gradients."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input, target, labels=None):
        return self.model.loss(input, target, labels)


def loss_fn(model, device):
    """model.loss, through DistributedDataParallel when there are several processes."""
    if not active():
        return model.loss
    return DistributedDataParallel(LossOf(model), device_ids=[device.index] if device.type == "cuda" else None)


def data_budget(cfg, device):
    """Bytes of images allowed on the device: --data-budget GB, or half the GPU's free memory (else no limit)."""
    if cfg["data_budget"] is not None:
        return cfg["data_budget"] * 2**30
    return torch.cuda.mem_get_info(device)[0] / 2 if device.type == "cuda" else float("inf")


def speed_features(model, cfg, device):
    """--channels-last and --compile, in place; returns the autocast context for --amp."""
    if cfg["channels_last"]:  # convolution weights only (4-d); a no-op for an MLP
        model.to(memory_format=torch.channels_last)
    if cfg["compile"]:
        if len(model.parameter_groups()) > 1:
            # several backward passes through one compiled graph (retain_graph=True): torch
            # refuses them when the compiled backward reuses ("donates") its saved buffers
            torch._functorch.config.donated_buffer = False
        model.loss = torch.compile(model.loss)  # an attribute: the state dict is unchanged
    if not cfg["amp"]:
        return contextlib.nullcontext
    if device.type == "cuda" and torch.cuda.is_bf16_supported() or device.type == "cpu" and cpu_matrix_units():
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    print(f"--amp: bfloat16 autocast is not used on {device} (not supported, or not faster without matrix "
          f"units); training in float32")
    return contextlib.nullcontext


def missing_compiler(device):
    """Why --compile cannot work here, in one line, or None. torch.compile builds C++ kernels for a CPU
    with $CXX (default g++; clang++ on macOS), and Triton's launcher for a GPU with $CC (gcc or clang)."""
    if device.type == "cuda":
        wanted = [os.environ["CC"]] if os.environ.get("CC") else ["gcc", "clang"]
    elif device.type == "cpu":
        wanted = [os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++")]
    else:
        return None  # mps: torch's own kernels
    for name in wanted:
        path = shutil.which(name)
        if path and subprocess.run([path, "--version"], capture_output=True, timeout=60).returncode == 0:
            return None
    kind = "C compiler ($CC" if device.type == "cuda" else "C++ compiler ($CXX"
    return (f"--compile needs a {kind} or {' / '.join(wanted)}) to build its kernels on {device}, and none "
            f"runs here; install one (e.g. apt install g++), or drop --compile")


def cpu_matrix_units():
    """Whether this CPU has AMX tiles: without them bfloat16 is 20% slower than float32 on this project's CPU."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)  # a private helper of torch's
    return bool(check and check())
