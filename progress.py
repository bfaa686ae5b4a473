"""A training run's progress: its first lines, the epoch's running sums of every term (Tally), the epoch's
lines and files (history.csv, best.pt), and the run folder's growing figures, a row per epoch:
training_reconstructions.png (8 test inputs over their reconstructions) and training_samples.png (8 fixed
prior samples' decodes), their rows kept in training_images.pt so a resumed run grows the same figures.
Drawn with PIL, not matplotlib: a few milliseconds an epoch."""
import io
import os
import time

import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

import data
import metrics
import models
import parallel
import runs

FILE = "training_images.pt"
MOST_ROWS = 12  # epochs shown: all up to 12, else the first, the last and evenly between


def load(run_dir):
    """The rows saved so far: {"fixed": {label: images}, "epochs": {kind: {epoch: images}}}."""
    try:
        return torch.load(os.path.join(run_dir, FILE), map_location="cpu", weights_only=True)
    except Exception:  # missing, or damaged: that costs the figures' history, not the run
        return {"fixed": {}, "epochs": {}}


def as_uint8(images):
    """[0, 1] images -> uint8 on the CPU (8 of them: a few KB)."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def shown(epochs, most=MOST_ROWS):
    """The epochs a figure shows (MOST_ROWS)."""
    if len(epochs) <= most:
        return epochs
    return sorted({epochs[round(i * (len(epochs) - 1) / (most - 1))] for i in range(most)})


def draw(rows, labels, title, path):
    """Rows of uint8 images (n, C, H, W), each with its label on the left, under a title."""
    n, h = rows[0].shape[0], rows[0].shape[2]
    grid = make_grid(torch.cat(rows).float() / 255, nrow=n, padding=2, pad_value=1.0)
    scale = max(1, 64 // h)  # 28 and 32 pixel images at 2x
    picture = Image.fromarray((grid.permute(1, 2, 0) * 255).round().byte().numpy()).resize(
        (grid.shape[2] * scale, grid.shape[1] * scale), Image.NEAREST)
    try:
        text = ImageFont.load_default(size=14)
    except TypeError:  # Pillow before 10.1: its small bitmap font
        text = ImageFont.load_default()
    left = 12 + max(int(text.getlength(label)) for label in labels)
    half = text.getlength(title) / 2 + 10  # the title centred over the images, never cut off
    width = int(max(left + picture.width + 10, 2 * half))
    canvas = Image.new("RGB", (width, 30 + picture.height + 10), "white")
    canvas.paste(picture, (left, 30))
    pen = ImageDraw.Draw(canvas)
    pen.text((min(max(left + picture.width / 2, half), width - half), 15), title, fill="black", font=text, anchor="mm")
    for i, label in enumerate(labels):  # centred on its row of images
        pen.text((left - 6, 30 + scale * (2 + i * (h + 2) + h / 2)), label, fill="black", font=text, anchor="rm")
    canvas.save(png := io.BytesIO(), format="PNG")
    runs.atomic_save(png.getvalue(), path)


def add_epoch(run_dir, epoch, fixed, by_kind, titles):
    """Record this epoch's rows (by_kind: {kind: images}) and redraw each figure; fixed: {label: images}
    drawn above the reconstructions' rows (the test inputs), recorded once."""
    saved = load(run_dir)
    saved["fixed"] = saved["fixed"] or {k: as_uint8(v) for k, v in fixed.items()}
    for kind, images in by_kind.items():
        saved["epochs"].setdefault(kind, {})[epoch] = as_uint8(images)
        saved["epochs"][kind] = {e: v for e, v in saved["epochs"][kind].items() if e <= epoch}
    runs.atomic_save(saved, os.path.join(run_dir, FILE))
    for kind, by_epoch in saved["epochs"].items():
        epochs, above = shown(sorted(by_epoch)), saved["fixed"] if kind == "reconstructions" else {}
        draw([*above.values(), *(by_epoch[e] for e in epochs)], [*above, *(f"epoch {e}" for e in epochs)],
             titles[kind], os.path.join(run_dir, f"training_{kind}.png"))


def header(cfg, device):
    """A run's first lines: its folder, device, model and data, budget and seed."""
    kept = data.kept_classes(cfg)
    print(f"Run folder: {cfg['out']} (its config.json keeps every setting)")
    print(f"Device: {device}" + (f", {parallel.world()[1]} processes" if parallel.active() else ""))
    print(f"Training: {cfg['model']} on {cfg['dataset']}"
          + (f" (classes {', '.join(cfg['classes'][c] for c in kept)} only)" if kept else "")
          + (f", {cfg['epochs']} epoch(s) of batch {cfg['batch_size']}, Adam lr {cfg['lr']:g}"
             if models.from_config(cfg, device="meta").parameter_groups() else
             ", fitted in closed form (no parameters to optimise)") + f", seed {cfg['seed']}")


def epoch_line(terms, weights):
    """The terms after the loss, each with the weight it enters the loss with (when not 1)."""
    return ", ".join(f"{weights[k]:g} x {k} {v:.4f}" if weights.get(k, 1) != 1 else f"{k} {v:.4f}"
                     for k, v in terms.items() if k != "loss")


def write_epoch(model, splits, copy_to, cfg, noise, epoch, history, best=None, board=None):
    """The epoch's files after checkpoint.pt: history, best.pt if the validation loss improved to `best`
    (chosen on validation, never on test), the growing figures, and the epoch on TensorBoard (`board`)."""
    runs.write_history(history, cfg["out"])
    if best is not None:
        runs.atomic_save({"format": runs.FORMAT, "model": model.state_dict(), "config": cfg, "epoch": epoch,
                          "val_loss": best}, os.path.join(cfg["out"], "best.pt"))
    grids = save_figures(model, splits["test"], cfg, noise, epoch, copy_to["test"])
    if board:
        log_epoch(board, history[-1], grids)


def open_board(cfg):
    """--tensorboard's writer on the run folder, as {"out", "writer"} (None without the flag). The writer is
    made at the first epoch's log, after its checkpoint: a run that fails before one leaves no event file,
    so the same command starts it again as new."""
    return {"out": cfg["out"], "writer": None} if cfg["tensorboard"] else None


def writer(board):
    """The board's SummaryWriter, made when first needed."""
    if board["writer"] is None:
        from torch.utils.tensorboard import SummaryWriter  # only with the flag: tensorboard is optional
        board["writer"] = SummaryWriter(board["out"])
    return board["writer"]


def log_epoch(board, row, grids):
    """Every number of an epoch's history row as a scalar (train/loss, test/kl, val/recon, train/grad_norm,
    lr, seconds), and the figures' grids of this epoch as images."""
    w = writer(board)
    for key, v in row.items():
        split, _, term = key.partition("_")
        if key != "epoch" and isinstance(v, (int, float)):
            w.add_scalar(f"{split}/{term}" if split in ("train", "val", "test") else key, v, row["epoch"])
    for kind, grid in grids.items():
        w.add_image(kind, grid, row["epoch"])
    w.flush()


def log_hparams(board, cfg, row):
    """The run's settings as TensorBoard hparams beside its final test terms (final/loss, ...), so
    `tensorboard --logdir SWEEP` sets a sweep's runs side by side."""
    settings = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in cfg.items()
                if k not in ("command", "resume_commands", "classes")}
    w = writer(board)
    w.add_hparams(settings, {f"final/{k[5:]}": v for k, v in row.items() if k.startswith("test_")},
                  run_name=".", global_step=row["epoch"])  # in the run folder itself, beside its scalars
    w.close()


def end_of_epoch(model, splits, copy_to, cfg, noise, epoch, train, seconds, opt):
    """The epoch's test (and validation) loss and active units, printed as pytorch/examples does; its
    history row."""
    t0 = time.perf_counter()
    test, val = (metrics.test_loss(model, splits[s], cfg["output"], noise, copy_to[s])
                 if s in splits else {} for s in ("test", "val"))
    seconds += time.perf_counter() - t0
    print(f"====> Epoch: {epoch} Average loss: {train['loss']:.4f} ({epoch_line(train, model.term_weights)}) "
          f"{seconds:.1f}s")
    if val:
        print(f"====> Validation loss: {val['loss']:.4f} ({epoch_line(val, {})})")
    active = metrics.count_active(model, splits["test"], cfg["output"], noise, copy_to["test"])
    print(f"====> Test set loss: {test['loss']:.4f} ({epoch_line(test, {})})"
          + (f"; active units {active} of {model.latent_dim}" if active is not None else ""), flush=True)
    if active is not None and active < model.latent_dim / 4:
        print(f"warning: posterior collapse: {active} of {model.latent_dim} latent units are active "
              f"(Cov_x E[z_d | x] > 0.01 on the test split); a lower --beta, --kl-warmup or --free-bits "
              f"keeps more")
    return {"epoch": epoch, **{f"train_{k}": v for k, v in train.items()},
            **{f"val_{k}": v for k, v in val.items()}, **{f"test_{k}": v for k, v in test.items()},
            **({"test_active_units": active} if active is not None else {}),
            "seconds": round(seconds, 3), "lr": next(iter(opt.values())).param_groups[0]["lr"] if opt else None}


class Tally:
    """An epoch's running sums of every term and each term's first non-finite step (0: none), kept on the
    device so no step waits for it: the host reads them at progress lines and at the end only. Terms are
    averaged over images, except skips_* (counts per step), which are summed."""

    def __init__(self, resume=None):
        r = resume or {"sums": 0, "n": 0, "names": None, "first_bad": None}
        self.sums, self.n, self.names, self.first_bad = r["sums"], r["n"], r["names"], r["first_bad"]
        if resume and parallel.world()[0] > 0:
            self.sums, self.n = self.sums * 0, 0  # the saved sums are every process's: rank 0 holds them
        self.scales = {}  # images per step -> what each term is multiplied by before summing

    def add(self, out, step, images):
        """Add a step's terms `out`, over `images` images."""
        if self.names is None:
            self.names = list(out)
            self.first_bad = torch.zeros(len(self.names), dtype=torch.long, device=out["loss"].device)
            self.sums = torch.zeros(len(self.names), device=out["loss"].device)
        if images not in self.scales:
            self.scales[images] = torch.tensor([1.0 if k.startswith("skips_") else images for k in self.names],
                                               device=self.first_bad.device)
        values = torch.stack([out[k].detach() for k in self.names])
        self.sums = torch.addcmul(self.sums, values, self.scales[images])
        self.first_bad = torch.where((self.first_bad == 0) & ~torch.isfinite(values), step, self.first_bad)
        self.n += images

    def mean(self, name):
        """This process's running mean of one term (a host sync)."""
        return self.sums[self.names.index(name)].item() / self.n

    def stop_if_bad(self, epoch):
        """FloatingPointError naming the first bad step's non-finite terms (one host sync); on every process
        when any one went bad."""
        never = torch.iinfo(torch.long).max
        first = parallel.minimum(torch.where(self.first_bad > 0, self.first_bad, never)).tolist()
        step = min(first)
        if step < never:
            terms = [name for name, f in zip(self.names, first) if f == step]
            terms = [name for name in terms if name != "loss"] or ["loss"]
            raise FloatingPointError(f"non-finite {' and '.join(terms)} at epoch {epoch}, step {step}")

    def state(self):
        """The sums of every process together, for a checkpoint inside the epoch."""
        return {"sums": parallel.total(self.sums.clone()), "n": parallel.count(self.n, self.first_bad.device),
                "names": self.names, "first_bad": self.first_bad}

    def means(self):
        """{term: the epoch's mean (skips_*: its total)} over every process."""
        sums, n = parallel.total(self.sums), parallel.count(self.n, self.first_bad.device)
        counted = torch.tensor([k.startswith("skips_") for k in self.names], device=sums.device)
        return dict(zip(self.names, torch.where(counted, sums, sums / n).tolist()))


@torch.no_grad()
def save_figures(model, split, cfg, noise, epoch, copy_to=None):
    """This epoch's rows of the growing figures: 8 test inputs' reconstructions (from the AE's code h, the
    VAEs' z = mu) and fixed prior samples' decodes. Returns this epoch's grids {kind: (C, H, W) in [0, 1]}."""
    images, labels = split
    x, target, y = next(data.eval_batches((images[:8], labels[:8]), cfg["output"], noise, copy_to))
    unit = lambda t: data.to_unit(t, cfg["output"])  # noqa: E731
    fixed = {"noisy input": unit(x), "clean target": unit(target)} if noise else {"input": unit(x)}
    rows = {"reconstructions": unit(model.reconstruct(x, y))}
    titles = {"reconstructions": f"{cfg['model']}: test images and their reconstructions ({model.CODE}) after "
                                 f"each epoch",
              "samples": f"{cfg['model']}: decodes of the same 8 prior samples after each epoch"}
    samples = model.sample(8, torch.Generator().manual_seed(cfg["seed"]))  # None: no prior (AE)
    if samples is not None:
        rows["samples"] = unit(samples)
    add_epoch(cfg["out"], epoch, fixed, rows, titles)
    rows["reconstructions"] = torch.cat([*fixed.values(), rows["reconstructions"]])
    return {kind: make_grid(images.float().clamp(0, 1), nrow=8, pad_value=1.0) for kind, images in rows.items()}
