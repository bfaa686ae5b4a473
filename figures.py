"""Figures for evaluate.py, each a PNG of a pixel size fixed by its inputs (image grids: no resampling
blur). Images are tensors in [0, 1]; `model` follows models.py (labels only for a conditional model)."""
import io
import math

from matplotlib import colormaps
from matplotlib.figure import Figure  # not pyplot: no global state, no display, nothing to close
from matplotlib.ticker import MaxNLocator
import numpy as np
import torch
from torchvision.utils import make_grid

import data
import runs

DPI = 100
PAD = 2  # pixels between images in a grid
RIGHT, TOP, BOTTOM = 10, 30, 10  # margins in pixels around an image grid; the left one
LABEL_CHAR = 8  # holds the row labels: pixels per character of the longest
XLABELS = 20  # extra bottom margin when columns are labelled


def decode01(model, z, labels=None):
    return data.to_unit(model.generate(z, labels), model.output).clamp(0, 1)


def figure(width, height):
    return Figure(figsize=(width / DPI, height / DPI), dpi=DPI)


def save(fig, path):
    fig.savefig(png := io.BytesIO(), dpi=DPI, format="png")  # no bbox_inches="tight": the size as laid out
    runs.atomic_save(png.getvalue(), path)  # in memory first: an interrupted save leaves the last figure whole


def image_rows(rows, labels, path, title=None, col_labels=None, xlabel=None):
    """Rows (n, C, H, W) of images, a label each, in one grid with margins: TOP, BOTTOM (+ XLABELS
    each for col_labels and xlabel), RIGHT, and left RIGHT + LABEL_CHAR a character of a label."""
    n, (H, W) = rows[0].shape[0], rows[0].shape[2:]
    grid = make_grid(torch.cat([r.detach().float().cpu() for r in rows]), nrow=n, padding=PAD,
                     pad_value=1.0)  # (3, R (H + PAD) + PAD, n (W + PAD) + PAD)
    s = max(1, 64 // H)  # 28x28 and 32x32 images drawn at 2x, larger ones at 1x
    gh, gw = grid.shape[1] * s, grid.shape[2] * s
    bottom = BOTTOM + XLABELS * (bool(col_labels) + bool(xlabel))
    left = RIGHT + LABEL_CHAR * max(map(len, labels), default=0)
    width, height = left + gw + RIGHT, TOP + gh + bottom
    fig = figure(width, height)
    ax = fig.add_axes([left / width, bottom / height, gw / width, gh / height], frame_on=False)
    ax.imshow(grid.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest", aspect="auto")
    ax.set_yticks([PAD + r * (H + PAD) + H / 2 for r in range(len(rows))], labels, fontsize=9)
    ax.set_xticks([PAD + i * (W + PAD) + W / 2 for i in range(n)] if col_labels else [], col_labels or [], fontsize=8)
    ax.set_xlabel(xlabel or "", fontsize=9, labelpad=1)
    ax.tick_params(length=0)
    if title:  # centred on the grid, not on the figure
        fig.suptitle(title, x=(left + gw / 2) / width, y=1 - 4 / height, va="top", fontsize=10)
    save(fig, path)


def short(name, width=22):
    return name if len(name) <= width else "..." + name[-(width - 3):]


def reconstructions(originals, recons, path, title="test images and their reconstructions"):
    """originals (n, C, H, W) over one row per run: recons {name: (n, C, H, W)}."""
    image_rows([originals, *recons.values()], ["original", *map(short, recons)], path, title)


def denoising(noisy, denoised, clean, path):
    image_rows([noisy, denoised, clean], ["noisy input", "denoised", "clean"], path,
               "denoising: input, output, target")


@torch.no_grad()
def samples(model, n, path, title, generator=None, classes=None, draw=None):
    """n x n samples of draw (samplers.py; default the prior; n a class, a row each, if it draws given
    labels): the first 2n, or None."""
    labelled = classes and model.default_labels(1) is not None
    labels = torch.arange(len(classes)).repeat_interleave(n) if labelled else None
    images = (draw or model.sample)(len(classes) * n if labelled else n * n, generator, labels)
    if images is None:
        return None
    images = data.to_unit(images, model.output).clamp(0, 1)
    image_rows(list(images.split(n)), list(classes) if labelled else [""] * n, path, title)
    return images[:2 * n]


def latent_scatter(codes, labels, path, title, classes=None):
    """Test codes (2-D, else their first two PCs) coloured by class: a legend, or a bar over 20."""
    codes, labels = codes.detach().float().cpu(), labels.cpu()
    if codes.shape[1] == 2:
        xy, axes = codes, ("z1", "z2")
    else:
        centred = codes - codes.mean(0)
        _, sv, v = torch.linalg.svd(centred, full_matrices=False)
        xy, share = centred @ v[:2].T, sv.pow(2) / sv.pow(2).sum()
        axes = tuple(f"PCA component {i + 1} ({100 * share[i]:.0f}% of variance)" for i in (0, 1))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    xy, labels = xy[order], labels[order]  # drawn in a random order: no class hides the others
    fig = figure(640, 560)
    ax = fig.add_axes([0.11, 0.1, 0.72, 0.82], xlabel=axes[0], ylabel=axes[1])
    k = len(classes) if classes else 0
    dots = {"s": 3, "alpha": 1.0} if len(xy) <= 2000 else {"s": 2, "alpha": 0.4}  # no solid blots
    if k == 0:
        ax.scatter(*xy.T, color="tab:blue", rasterized=True, **dots)
    elif k <= 20:  # one distinct colour per class, named
        colours = colormaps["tab10" if k <= 10 else "tab20"]
        for c, name in enumerate(classes):
            ax.scatter(*xy[labels == c].T, color=colours(c), label=name, rasterized=True, **dots)
        ax.set_position([0.11, 0.1, 0.68, 0.82])  # room on the right for the names
        for handle in ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, markerscale=3,
                                frameon=False).legend_handles:
            handle.set_alpha(1.0)  # the legend's dots solid
    else:  # too many classes to tell apart by colour: a continuous scale of class numbers
        points = ax.scatter(*xy.T, c=labels, cmap="viridis", rasterized=True, **dots)
        fig.colorbar(points, cax=fig.add_axes([0.86, 0.1, 0.03, 0.82]), label="class number")
    ax.set_title(title, fontsize=10)
    save(fig, path)


@torch.no_grad()
def manifold(model, n, path, title, codes=None, label=None):
    """A 2-D code's decodes over z in [-r, r]^2, r the codes' 99th |z| percentile (at least 1.64)."""
    r = 1.64 if codes is None else max(1.64, codes.abs().float().quantile(0.99).item())
    q = torch.linspace(-r, r, n)
    z = torch.stack(torch.meshgrid(q.flip(0), q, indexing="ij"), -1).flatten(0, 1)[:, [1, 0]]  # rows: z2
    z = z.to("cpu" if codes is None else codes.device)
    images = decode01(model, z, None if label is None else label.expand(len(z)))
    labels = [f"z2 = {v:+.1f}" for v in q.flip(0).tolist()]
    image_rows(list(images.split(n)), labels, path, title, [f"{v:+.1f}" for v in q.tolist()], "z1")


def slerp(a, b, t):
    """Spherical interpolation (Shoemake 1985; White 2016 for Gaussian latents). a, b: (D,)."""
    omega = torch.arccos((a / a.norm() * b / b.norm()).sum().clamp(-1, 1))
    if omega.abs() < 1e-6:
        return torch.lerp(a, b, t[:, None])
    return (torch.sin((1 - t) * omega)[:, None] * a + torch.sin(t * omega)[:, None] * b) / torch.sin(omega)


@torch.no_grad()
def interpolations(model, x_a, x_b, n, path, spherical=True, labels_a=None, labels_b=None,
                   title="interpolation between test images", ends=None):
    """Per image pair A, B (ends: theirs in [0, 1]), linear (and spherical) decodes from A's code to B's;
    a conditional model codes each image with its own label and decodes the row with A's."""
    t = torch.linspace(0, 1, n, device=x_a.device)
    za, zb = model.latent(x_a, labels_a), model.latent(x_b, labels_b)
    a01, b01 = ends if ends is not None else (x_a, x_b)
    rows, labels = [], []
    for i in range(za.shape[0]):
        y = None if labels_a is None else labels_a[i:i + 1].expand(n)
        ways = {"linear": torch.lerp(za[i], zb[i], t[:, None])}
        if spherical:
            ways["spherical"] = slerp(za[i], zb[i], t)
        for way, z in ways.items():
            rows.append(torch.cat([a01[i:i + 1], decode01(model, z, y), b01[i:i + 1]]))
            labels.append(f"pair {i + 1}: {way}")
    image_rows(rows, labels, path, title, ["image A", *(f"t={v:.2f}" for v in t.tolist()), "image B"])


@torch.no_grad()
def traversal(model, x, order, center, spread, n, path, title, names, label=None, image=None):
    """A row per dimension d of `order`: x[0] (or image[0]), then its code with z_d = center_d + spread_d
    * v, v from -3 to 3 (n made odd, so that 0 is among them); label: x[0]'s, for a conditional model."""
    n += 1 - n % 2
    v = torch.linspace(-3, 3, n, device=x.device)
    v[n // 2] = 0.0  # exactly
    z = model.latent(x[:1], label)[0].repeat(len(order), n, 1)  # (rows, n, D)
    for row, d in enumerate(order):
        z[row, :, d] = center[d] + spread[d] * v
    y, image = None if label is None else label.expand(n), x[:1] if image is None else image[:1]
    rows = [torch.cat([image, decode01(model, zr, y)]) for zr in z]
    image_rows(rows, names, path, title, ["image", *(f"{s:+.1f}" if s else "0" for s in v.tolist())],
               "value of the dimension")


def history_terms(histories):
    """The terms logged as train_<term> or test_<term>, in order, less skip counts that stayed 0."""
    rows = [r for h in histories.values() for r in h]  # a resumed run may gain columns
    terms = dict.fromkeys(k.split("_", 1)[1] for r in rows for k in r if k.startswith(("train_", "test_")))
    return [t for t in terms if not t.startswith("skips_")
            or any(float(r.get(s + t) or 0) for r in rows for s in ("train_", "test_"))]


INTERNALS = ("grad", "acc_", "skips_", "disc", "decoder", "adv", "l1")  # how training went
UNITS = {"acc_": "fraction classified right", "skips_": "steps skipped per epoch",
         "grad": "gradient norm (mean per step)", "disc": "nats per image (GAN loss)",
         "adv": "nats per image (GAN loss)", "l1": "sum of |weights|"}  # y axes, by first letters


def split_terms(terms):
    """(the loss and the objective's terms, the internals: gradients, discriminator, skips)."""
    internal = [t for t in terms if t.startswith(INTERNALS)]
    return [t for t in terms if t not in internal], internal


def loss_curves(histories, path, terms=None, groups=None, kinds=None):
    """A 400 x 300 panel per term (3 a row, 2 for 4) of histories {run: history.csv rows}: train
    solid, test dashed, a colour per run or group {label: [runs]} (its mean +- one std). kinds
    {run: what its "loss" is}: when they differ, each loss line names its kind."""
    terms = terms or history_terms(histories)
    groups = groups or {name: [name] for name in histories}
    mixed = kinds is not None and len(set(kinds.values())) > 1
    cols = 2 if len(terms) == 4 else min(3, len(terms))
    nrows = math.ceil(len(terms) / cols)
    height = 300 * nrows + 14 * len(groups) + 10  # the legend below: train and test, 2 a row
    fig = figure(400 * cols, height)
    for i, term in enumerate(terms):
        ax = fig.add_subplot(nrows, cols, i + 1)
        named = mixed and term == "loss"  # each loss line names its kind
        for j, (name, members) in enumerate(groups.items()):
            kind = f" [{kinds[members[0]]}]" if named else ""
            curves(ax, [histories[m] for m in members], term, name, kind, colormaps["tab10"](j % 10))
        ax.set_title("loss: different quantities, see each line's [kind]" if named else term, fontsize=10)
        if named:
            ax.legend(fontsize=7)  # the kinds are told apart here, beside the lines
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # whole epochs
        unit = next((u for start, u in UNITS.items() if term.startswith(start)), "nats per image")
        ax.set(xlabel="epoch", ylabel=unit)
        ax.ticklabel_format(axis="y", useOffset=False)
        low, high = ax.get_ylim()  # at least 2% of the values high: noise is not blown up to fill it
        grow = max(0.0, 0.01 * max(abs(low), abs(high)) - (high - low) / 2)
        ax.set_ylim(low - grow, high + grow)
        ax.grid(alpha=0.3)
    handles, names = fig.axes[0].get_legend_handles_labels()
    fig.tight_layout(rect=(0, (14 * math.ceil(len(names) / 2) + 10) / height, 1, 1))
    fig.legend(handles, [n.split(" [")[0] for n in names], loc="lower center", ncol=2, fontsize=8,
               frameon=False)  # below the panels
    save(fig, path)


def curves(ax, runs, term, name, kind, colour):
    """A group's train and test lines of a term: its runs' mean (+- one std) at the epochs all logged."""
    for split, style in (("train", "-"), ("test", "--")):
        by_epoch, key = {}, f"{split}_{term}"  # epoch: values, one a run
        for r in (r for rows in runs for r in rows if r.get(key) not in (None, "")):
            by_epoch.setdefault(float(r["epoch"]), []).append(float(r[key]))
        epochs = sorted(e for e, v in by_epoch.items() if len(v) == len(runs))
        if epochs:
            values = torch.tensor([by_epoch[e] for e in epochs])  # (epochs, runs)
            mean, n = values.mean(1), f" (mean of {len(runs)})" if len(runs) > 1 else ""
            ax.plot(epochs, mean, style, color=colour, marker=".",
                    label=f"{short(name, 45 if n else 22)} {split}{n}{kind}")
            if n:
                ax.fill_between(epochs, mean - values.std(1), mean + values.std(1), color=colour, alpha=0.15)


def kl_bars(kl_per_dim, path):
    """KL per latent dimension, most used first, a panel per run {name: (D,)}: 640 x 60 + 200 R."""
    fig = figure(640, 60 + 200 * len(kl_per_dim))
    top = max(float(torch.as_tensor(kl).max()) for kl in kl_per_dim.values()) * 1.05 or 1.0
    for i, (name, kl) in enumerate(kl_per_dim.items()):
        ax = fig.add_subplot(len(kl_per_dim), 1, i + 1)
        kl = torch.as_tensor(kl).cpu()
        (values, order), few = kl.sort(descending=True), len(kl) <= 32
        ax.bar(range(len(kl)), values.tolist(), width=1.0 if len(kl) > 64 else 0.8, color="tab:blue",
               linewidth=0)
        if few:  # each bar named by its dimension (numbered from 1, as everywhere)
            ax.set_xticks(range(len(kl)), [str(d + 1) for d in order.tolist()], fontsize=8)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlim=(-0.6, len(kl) - 0.4), ylim=(0, top), ylabel="KL (nats per image)",
               xlabel="latent dimension, sorted by KL" if few else "rank of the latent dimension by KL")
        ax.set_title(f"{short(name, 40)}: KL {kl.sum():.2f} nats over {len(kl)} dimensions", fontsize=9)
    fig.tight_layout()
    save(fig, path)


def factor_heatmap(mutual_info, entropy, factors, path, title, unit="z"):
    """Each unit's mutual information (D, K) with each factor over its entropy (K,): the share of
    the factor the unit pins down, written out. 140 + 90 K (or the title) by 70 + 26 D px."""
    share = np.asarray(mutual_info, np.float64) / np.maximum(np.asarray(entropy, np.float64), 1e-12)
    D, K = share.shape
    width, height = max(140 + 90 * K, 7 * len(title) + 20), 70 + 26 * D  # the title fits
    fig = figure(width, height)
    left = (width - 90 * K) / 2 + 20  # the cells centred, with room for the unit names
    ax = fig.add_axes([left / width, 20 / height, 90 * K / width, 26 * D / height])
    ax.imshow(share, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for (d, k), v in np.ndenumerate(share):
        ax.text(k, d, f"{v:.2f}", ha="center", va="center", fontsize=8, color="black" if v > 0.6 else "white")
    ax.set_xticks(range(K), factors, fontsize=9)
    ax.xaxis.tick_top()
    ax.set_yticks(range(D), [f"{unit}{d + 1}" for d in range(D)], fontsize=8)
    ax.tick_params(length=0)
    fig.suptitle(title, x=0.5, y=1 - 4 / height, va="top", fontsize=10)
    save(fig, path)


def roc_curves(scores, positive, path, title):
    """A ROC curve, named with its AUROC, per score {name: (N,)} of the positives (N,) (anomalies)."""
    import metrics
    fig = figure(520, 480)
    ax = fig.add_axes([0.13, 0.12, 0.82, 0.78], xlim=(0, 1), ylim=(0, 1.01),
                      xlabel="false positive rate (normal test images flagged)",
                      ylabel="true positive rate (anomalies flagged)")
    for name, s in scores.items():
        ax.plot(*metrics.roc_points(s, positive), label=f"{name} (AUROC {metrics.auroc(s, positive):.3f})")
    ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1)
    ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    save(fig, path)
