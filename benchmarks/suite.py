"""Training speed of every model, train.py's loop against the standard loop, side by side.

For each setup, the same model (same class, loss and optimizers) takes a fixed number of
training steps in each loop, each in its own fresh process (so peak memory is its own),
the loops taking turns for --repeats rounds, the fastest round of each counting:

  standard  torchvision dataset with per-sample transforms (ToTensor; for [-1, 1] data
            Normalize(0.5, 0.5); with --augment RandomHorizontalFlip and RandomCrop(32,
            padding=4)), DataLoader(shuffle=True), a .to(device) per batch and a .item()
            per loss term per step: the loop of the reference reports;
  ours      train.train_epoch: the split resident on the device as uint8, flips, crops and
            noise as batched tensor ops, sums kept on the device and read once.

It prints images per second, seconds per epoch of the full training split, peak memory
and the time ratio ours / standard (target: at most 0.5 on a CPU), and the same ratio for
the model's compute alone (steps on one batch already on the device): no data path can
go below that one. It also counts the floating-point operations of one step (forward and
backward, torch.utils.flop_counter), gives the compute-only loop's GFLOP/s as a share of
this device's dense matmul peak (a 2048x2048 float32 product, bfloat16 with --amp where
it applies), and the ratio a loop would reach if every operation ran at that peak: when even
that is above 0.5, the target cannot be met on this machine by any loop. Data loading
before the first step is not timed in either loop. Then the importance-sampled
likelihood's throughput (evaluate.py, K = 1000) on the MLP VAE, the fastest of --repeats,
and its decoder's matmul rate as a share of the peak.

    python benchmarks/suite.py --data-root data
    python benchmarks/suite.py --data-root data --setups vae-mlp-mnist --steps 100
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import data  # noqa: E402
import config  # noqa: E402
import flags  # noqa: E402
import metrics  # noqa: E402
import models  # noqa: E402
import parallel  # noqa: E402
import train  # noqa: E402

SETUPS = {
    "vae-mlp-mnist": ["--model", "vae", "--dataset", "mnist"],
    "vae-conv-cifar10": ["--model", "vae", "--dataset", "cifar10", "--arch", "conv",
                         "--latent-dim", "256", "--output", "tanh", "--recon", "mse", "--augment"],
    "ae-conv-mnist": ["--model", "ae", "--dataset", "mnist", "--arch", "conv"],
    "vaegan-mlp-mnist": ["--model", "vaegan", "--dataset", "mnist"],
    "vaegan-conv-cifar10": ["--model", "vaegan", "--dataset", "cifar10", "--arch", "conv",
                            "--latent-dim", "128", "--output", "tanh", "--recon", "mse"],
}
TRAIN_SIZE = {"mnist": 60000, "fashion-mnist": 60000, "cifar10": 50000}
STEPS = {"vae-mlp-mnist": 300, "vae-conv-cifar10": 40, "ae-conv-mnist": 60,  # about 2 s or
         "vaegan-mlp-mnist": 150, "vaegan-conv-cifar10": 10}  # more per loop on a 2-core CPU


def skip_cifar_md5():
    """For a CIFAR-10 subset, whose files cannot match the official md5 sums."""
    import torchvision.datasets.cifar as cifar
    cifar.CIFAR10._check_integrity = lambda self: True
    cifar.check_integrity = lambda path, md5=None: os.path.isfile(path)


def build(setup, args):
    argv = SETUPS[setup] + args.extra.split() + [
        "--data-root", args.data_root, "--device", args.device, "--no-download",
        "--out", os.path.join(tempfile.gettempdir(), f"suite-never-written-{os.getpid()}")]
    cfg, _ = train.resolve(argv)
    device = config.pick_device(cfg["device"])
    torch.manual_seed(0)
    model = models.from_config(cfg).to(device)
    return cfg, device, model, train.build_optimizers(model, cfg, device)


def plain_step(model, opt, x, labels=None):
    """One step as the model contract (models.py) asks of any loop, with nothing else: each
    objective into its own parameters, then every optimizer's step. train.train_step is
    this and its bookkeeping (L1, clipping, gradient norms); keep the two in step."""
    groups, out = model.parameter_groups(), model.loss(x, x, labels)
    steps = model.objectives(out)
    for i, (name, loss) in enumerate(steps.items()):
        opt[name].zero_grad(set_to_none=True)
        loss.backward(inputs=groups[name], retain_graph=i < len(steps) - 1)
    for name in steps:
        opt[name].step()
    return out


def standard_loader(cfg):
    """The reference reports' data path: a torchvision dataset, per-sample transforms and a
    DataLoader. Built before the timing, as data.load is for our loop (torchvision reads
    the whole MNIST training file when the dataset is made)."""
    from torchvision import datasets, transforms
    t = [transforms.RandomHorizontalFlip()] if cfg["hflip"] else []
    t += [transforms.RandomCrop(32, padding=4)] if cfg["crop"] else []
    t += [transforms.ToTensor()]
    t += [transforms.Normalize((0.5,), (0.5,))] if cfg["output"] == "tanh" else []
    cls = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST,
           "cifar10": datasets.CIFAR10}[cfg["dataset"]]
    return torch.utils.data.DataLoader(cls(cfg["data_root"], train=True, transform=transforms.Compose(t)),
                                       batch_size=cfg["batch_size"], shuffle=True, drop_last=True)


def standard_steps(device, model, opt, loader, n_steps):
    """The reference reports' loop for `n_steps` steps (cycling the loader if needed)."""
    model.train()
    step = 0
    while step < n_steps:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            out = plain_step(model, opt, x, y)
            logged = [v.item() for v in out.values()]
            assert all(v == v for v in logged)
            step += 1
            if step == n_steps:
                break


def our_split(cfg, images, labels, n_steps):
    """The first n_steps batches' worth of the split (repeated if it is shorter)."""
    n = n_steps * cfg["batch_size"]
    if n <= images.shape[0]:
        return images[:n], labels[:n]
    reps = -(-n // images.shape[0])
    return images.repeat(reps, 1, 1, 1)[:n], labels.repeat(reps)[:n]


def our_steps(cfg, model, opt, split):
    train.train_epoch(model, opt, split, cfg, 1, data.parse_noise(cfg["noise"]))  # reads once


def floor_steps(cfg, device, model, opt, images, n_steps):
    """The model's compute alone: n_steps on one batch already on the device, no data path."""
    x = data.to_range(images[:cfg["batch_size"]].float() / 255, cfg["output"])
    labels = torch.arange(cfg["batch_size"], device=x.device) % cfg["num_classes"]
    model.train()
    for _ in range(n_steps):
        plain_step(model, opt, x, labels)


def step_flops(cfg, device, model, opt, images):
    """Floating-point operations of one training step, forward and backward (a multiply-add
    counts 2), as counted by torch.utils.flop_counter (matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        floor_steps(cfg, device, model, opt, images, 1)
    return counter.get_total_flops()


def matmul_peak(device, dtype, size=2048, repeats=30):
    """This device's dense matmul rate in GFLOP/s: the fastest of `repeats` products."""
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    best = float("inf")
    for _ in range(repeats + 2):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e9


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_one(setup, loop, args):
    """One setup with one loop, in this process: warm-up steps, then timed steps."""
    cfg, device, model, opt = build(setup, args)
    steps = args.steps or STEPS[setup]
    if loop in ("ours", "floor"):
        images, labels = data.load(cfg["dataset"], cfg["data_root"], device, False)["train"]
        splits = {n: our_split(cfg, images, labels, n) for n in (args.warmup, steps)}  # untimed
        run = lambda n: our_steps(cfg, model, opt, splits[n])  # noqa: E731
        if loop == "floor":
            run = lambda n: floor_steps(cfg, device, model, opt, images, n)  # noqa: E731
    else:
        loader = standard_loader(cfg)
        run = lambda n: standard_steps(device, model, opt, loader, n)  # noqa: E731
    run(args.warmup)
    sync(device)
    t0 = time.perf_counter()
    run(steps)
    sync(device)
    seconds = time.perf_counter() - t0
    ips = steps * cfg["batch_size"] / seconds
    result = {"setup": setup, "loop": loop, "images_per_s": ips, "batch": cfg["batch_size"],
              "s_per_epoch": TRAIN_SIZE[cfg["dataset"]] / ips, "peak_mb": peak_memory_mb(device)}
    if loop == "floor":  # after the timing: counting runs one more step
        result["gflop_per_step"] = step_flops(cfg, device, model, opt, images) / 1e9
    return result


def measure_iw(args):
    """evaluate.py's importance-sampled likelihood, K = 1000, on 200 MNIST test images."""
    cfg, device, model, _ = build("vae-mlp-mnist", args)
    model.eval()
    images, _ = data.load("mnist", cfg["data_root"], device, False)["test"]
    x = images[:200].float() / 255
    b = max(1, 1024 // 1000)
    t0 = time.perf_counter()
    for xs in x.split(b):
        metrics.importance_sampled(model, xs, xs, 1000, 1024)
    sync(device)
    seconds = time.perf_counter() - t0
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter, torch.no_grad():  # 1000 decodes: one image
        model.decode(torch.zeros(1000, cfg["latent_dim"], device=device))
    return {"setup": "iw", "images_per_s": x.shape[0] / seconds,
            "gflop_per_image": counter.get_total_flops() / 1e9}


def main():
    p = argparse.ArgumentParser(formatter_class=flags.Help,
                                description=flags.description(__doc__))
    p.add_argument("--data-root", default="./data", help="folder holding MNIST and CIFAR-10")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--setups", default=",".join(SETUPS), help="comma-separated, from: " + ", ".join(SETUPS))
    p.add_argument("--steps", type=int, default=0, help="timed training steps per loop "
                   "(0: each setup's own, " + ", ".join(f"{k} {v}" for k, v in STEPS.items()) + ")")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--repeats", type=int, default=3, help="rounds per loop; the fastest counts "
                   "(a shared machine's noise only ever slows a round down)")
    p.add_argument("--extra", default="", help="more train.py flags for every setup, e.g. '--amp'")
    p.add_argument("--skip-md5", action="store_true", help="accept a CIFAR-10 subset's files")
    p.add_argument("--one", nargs=2, metavar=("SETUP", "LOOP"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.skip_md5:
        skip_cifar_md5()
    if args.one:
        result = measure_iw(args) if args.one[0] == "iw" else measure_one(*args.one, args)
        print("RESULT " + json.dumps(result))
        return
    for setup in args.setups.split(","):
        if setup not in SETUPS:
            p.error(f"unknown setup {setup!r}; use {', '.join(SETUPS)}")
    device = config.pick_device(args.device)
    amp = "--amp" in args.extra.split() and (
        device.type == "cuda" or device.type == "cpu" and parallel.cpu_matrix_units())
    dtype = torch.bfloat16 if amp else torch.float32
    peak = matmul_peak(device, dtype)
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs; timed steps after {args.warmup} untimed; "
          f"{str(dtype)[6:]} matmul peak {peak:.0f} GFLOP/s")
    base = [sys.executable, os.path.abspath(__file__), "--data-root", args.data_root,
            "--device", str(device), "--steps", str(args.steps), "--warmup", str(args.warmup),
            "--extra", args.extra] + (["--skip-md5"] if args.skip_md5 else [])

    def child(setup, loop):
        proc = subprocess.run(base + ["--one", setup, loop], capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.exit(f"{setup} {loop} failed:\n{proc.stderr[-2000:]}")
        return json.loads(lines[-1][len("RESULT "):])

    memory = "peak GPU MB" if device.type == "cuda" else "peak RSS MB"
    print(f"\n| setup | standard images/s | ours images/s | standard s/epoch | ours s/epoch "
          f"| standard {memory} | ours {memory} | time ratio | compute-only ratio "
          f"| GFLOP per step | compute GFLOP/s (% of peak) | FLOPs at peak / standard |\n"
          f"|---|---|---|---|---|---|---|---|---|---|---|---|")
    ratios = []
    for setup in args.setups.split(","):
        best = {}  # the fastest of --repeats rounds, the three loops taking turns
        for _ in range(args.repeats):
            for loop in ("standard", "ours", "floor"):
                r = child(setup, loop)
                if loop not in best or r["images_per_s"] > best[loop]["images_per_s"]:
                    best[loop] = r
        std, ours, floor = best["standard"], best["ours"], best["floor"]
        ratios.append(ours["s_per_epoch"] / std["s_per_epoch"])
        gflop = floor["gflop_per_step"]
        achieved = gflop * floor["images_per_s"] / floor["batch"]
        at_peak = gflop / peak * std["images_per_s"] / std["batch"]  # seconds at peak / standard's
        print(f"| {setup} | {std['images_per_s']:.0f} | {ours['images_per_s']:.0f} "
              f"| {std['s_per_epoch']:.1f} | {ours['s_per_epoch']:.1f} | {std['peak_mb']:.0f} "
              f"| {ours['peak_mb']:.0f} | {ratios[-1]:.2f} "
              f"| {floor['s_per_epoch'] / std['s_per_epoch']:.2f} | {gflop:.2f} "
              f"| {achieved:.0f} ({100 * achieved / peak:.0f}%) | {at_peak:.2f} |", flush=True)
    print(f"\nworst time ratio: {max(ratios):.2f} (target <= 0.5 on a CPU, <= 0.2 on a GPU)")
    iw = max((child("iw", "ours") for _ in range(args.repeats)), key=lambda r: r["images_per_s"])
    rate = iw["images_per_s"] * iw["gflop_per_image"]
    print(f"importance-sampled likelihood, K = 1000, MLP VAE: {iw['images_per_s']:.0f} test "
          f"images/s, the decoder's matmuls at {rate:.0f} GFLOP/s ({100 * rate / peak:.0f}% of peak)")


if __name__ == "__main__":
    main()
