"""One command line for every model: builds data and model from flags, trains, evaluates
on the test split every epoch, and writes the run folder (DESIGN.md).

    python train.py --model vae --dataset mnist
    python train.py --model vae --dataset cifar10 --arch conv --beta 4 --dropout 0.3
    python train.py --resume runs/vae-mnist-20261120-101500 --epochs 20
"""
import os
import sys
import time

import torch
from torchvision.utils import save_image

import data
import losses
import runs
from ae import AE
from flags import defaults, parse_hidden, pick_device, resolve
from vae import VAE


def build_model(cfg, image_shape):
    """The model a config describes; evaluate.py rebuilds runs with this too."""
    cfg = {**defaults(), **cfg}  # a run saved before a flag existed gets its default
    nets = dict(image_shape=image_shape, latent_dim=cfg["latent_dim"], arch=cfg["arch"],
                hidden=parse_hidden(cfg["hidden"]), act=cfg["act"], dropout=cfg["dropout"],
                batchnorm=cfg["batchnorm"], output=cfg["output"], recon=cfg["recon"], c=cfg["c"])
    if cfg["model"] == "ae":
        return AE(**nets, code=cfg["code"], sparsity=cfg["sparsity"],
                  sparsity_target=cfg["sparsity_target"], contractive=cfg["contractive"])
    return VAE(**nets, beta=cfg["beta"])


def train_epoch(model, opt, split, cfg, epoch, noise):
    """One pass over the training split. Sums stay on the device; read once at the end."""
    model.train()
    images, labels = split
    sums, names = 0, None
    first_bad = torch.zeros((), dtype=torch.long, device=images.device)
    n, n_steps = 0, -(-images.shape[0] // cfg["batch_size"])
    for step, (x, target, _) in enumerate(data.batches(
            images, labels, cfg["batch_size"], shuffle=True, output=cfg["output"],
            hflip=cfg["hflip"], crop=cfg["crop"], noise=noise), start=1):
        if x.shape[0] < 2 and cfg["batchnorm"]:
            continue  # batch norm cannot normalize a batch of one image
        out = model.loss(x, target)
        if cfg["l1"]:
            out["l1"] = losses.l1_penalty(model.parameters())
            out["loss"] = out["loss"] + cfg["l1"] * out["l1"]
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        names = names or list(out)
        sums = sums + torch.stack([out[k].detach() for k in names]) * x.shape[0]
        first_bad = torch.where((first_bad == 0) & ~torch.isfinite(out["loss"]), step, first_bad)
        n += x.shape[0]
        if step % cfg["log_interval"] == 0 or step == n_steps:
            stop_if_bad(sums, first_bad, names, epoch)
            if step < n_steps:
                print(f"Train Epoch: {epoch} [{n}/{images.shape[0]} "
                      f"({100 * n / images.shape[0]:.0f}%)]\tLoss: {sums[0].item() / n:.4f}",
                      flush=True)
    return dict(zip(names, (sums / n).tolist()))


def stop_if_bad(sums, first_bad, names, epoch):
    if bool(first_bad):
        bad = [name for name, s in zip(names, sums.tolist()) if s != s or abs(s) == float("inf")]
        bad = [name for name in bad if name != "loss"] or ["loss"]
        raise FloatingPointError(f"non-finite {' and '.join(bad)} at epoch {epoch}, "
                                 f"step {int(first_bad)}; the last good checkpoint is kept "
                                 f"(try a lower --lr)")


@torch.no_grad()
def evaluate(model, split, cfg, noise):
    """Test loss without beta or penalties: the VAE's negative ELBO per image (z sampled),
    the AE's reconstruction term."""
    model.eval()
    images, labels = split
    sums, names = 0, None
    for x, target, _ in data.batches(images, labels, 1000, output=cfg["output"], noise=noise,
                                     noise_seed=data.TEST_NOISE_SEED):
        out = model.test_loss(x, target)
        names = names or list(out)
        sums = sums + torch.stack([out[k] for k in names]) * x.shape[0]
    return dict(zip(names, (sums / images.shape[0]).tolist()))


@torch.no_grad()
def save_figures(model, split, cfg, noise, epoch, z):
    """Test inputs over their reconstructions (z = mu), and decodes of fixed prior samples."""
    model.eval()
    images, labels = split
    x, target, _ = next(data.batches(images[:8], labels[:8], 8, output=cfg["output"],
                                     noise=noise, noise_seed=data.TEST_NOISE_SEED))
    rows = [x, model.reconstruct(x)] + ([target] if noise else [])
    to01 = (lambda t: t) if cfg["output"] == "sigmoid" else (lambda t: (t + 1) / 2)
    save_image(to01(torch.cat(rows)), os.path.join(cfg["out"], f"reconstruction_{epoch}.png"),
               nrow=8)
    if cfg["model"] == "vae":  # an AE has no prior to sample from
        samples = model.activate(model.decode(z))
        save_image(to01(samples), os.path.join(cfg["out"], f"sample_{epoch}.png"), nrow=8)


def run(cfg, ckpt=None):
    device = pick_device(cfg["device"])
    print(f"Device: {device}")
    print("Config: " + " ".join(f"{k}={v}" for k, v in cfg.items() if k != "resume_commands"))
    torch.manual_seed(cfg["seed"])
    splits = data.load(cfg["dataset"], cfg["data_root"], device, cfg["download"])
    noise = data.parse_noise(cfg["noise"])
    image_shape = tuple(splits["train"][0].shape[1:])
    cfg["image_shape"] = list(image_shape)
    model = build_model(cfg, image_shape).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                           fused=device.type in ("cpu", "cuda"))  # one kernel for all tensors
    sched = (torch.optim.lr_scheduler.StepLR(opt, cfg["step_size"], cfg["gamma"])
             if cfg["scheduler"] == "step" else None)
    history, start, best = [], 1, float("inf")
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        if sched:
            sched.load_state_dict(ckpt["scheduler"])
        history, start, best = ckpt["history"], ckpt["epoch"] + 1, ckpt["best_test_loss"]
        torch.set_rng_state(ckpt["rng"]["torch"])
        if device.type == "cuda" and ckpt["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        print(f"Resuming {cfg['out']} after epoch {ckpt['epoch']}")
    os.makedirs(cfg["out"], exist_ok=True)
    runs.save_config(cfg, cfg["out"])
    z = torch.randn(64, cfg["latent_dim"], generator=torch.Generator().manual_seed(cfg["seed"]))
    z = z.to(device)
    for epoch in range(start, cfg["epochs"] + 1):
        t0 = time.perf_counter()
        train = train_epoch(model, opt, splits["train"], cfg, epoch, noise)
        test = evaluate(model, splits["test"], cfg, noise)
        seconds = time.perf_counter() - t0
        lr = opt.param_groups[0]["lr"]
        if sched:
            sched.step()
        terms = lambda d: ", ".join(f"{k} {v:.4f}" for k, v in d.items() if k != "loss")  # noqa
        print(f"====> Epoch: {epoch} Average loss: {train['loss']:.4f} ({terms(train)}) "
              f"{seconds:.1f}s")
        print(f"====> Test set loss: {test['loss']:.4f} ({terms(test)})", flush=True)
        history.append({"epoch": epoch, **{f"train_{k}": v for k, v in train.items()},
                        **{f"test_{k}": v for k, v in test.items()},
                        "seconds": round(seconds, 3), "lr": lr})
        save_figures(model, splits["test"], cfg, noise, epoch, z)
        runs.write_history(history, cfg["out"])
        out = cfg["out"]
        if test["loss"] < best:
            best = test["loss"]
            runs.atomic_save({"model": model.state_dict(), "config": cfg, "epoch": epoch,
                              "test_loss": best}, os.path.join(out, "best.pt"))
        cuda_rng = torch.cuda.get_rng_state_all() if device.type == "cuda" else []
        runs.atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                          "scheduler": sched.state_dict() if sched else None, "epoch": epoch,
                          "config": cfg, "history": history, "best_test_loss": best,
                          "rng": {"torch": torch.get_rng_state(), "cuda": cuda_rng}},
                         os.path.join(out, "checkpoint.pt"))
    return history


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg, ckpt = resolve(argv)
        pick_device(cfg["device"])
    except ValueError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # argparse: --help, or a malformed flag (already printed)
        return e.code
    try:
        run(cfg, ckpt)
    except data.DataError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"train.py: stopped: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ntrain.py: interrupted; the last finished epoch is saved. Resume with: "
              f"python train.py --resume {cfg['out']}", file=sys.stderr)
        return 130
    print(f"Run folder: {cfg['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
