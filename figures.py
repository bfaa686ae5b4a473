"""Figures for evaluate.py: image grids with labelled rows, latent plots and loss curves.

Every function writes one PNG of a size fixed by its inputs (image grids are pixel-exact:
each image drawn at SCALE times its size, no resampling blur). Images come in as tensors
in [0, 1]; `model` arguments follow the model contract (models.py): latent and generate,
with the labels a conditional model needs (None otherwise).
"""
import math

import matplotlib

matplotlib.use("Agg")  # files only; no display needed on a cluster node
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

import data  # noqa: E402

DPI = 100
PAD = 2  # pixels between images in a grid
RIGHT, TOP, BOTTOM = 10, 30, 10  # margins in pixels around an image grid; the left one
LABEL_CHAR = 8  # holds the row labels: pixels per character of the longest
XLABELS = 20  # extra bottom margin when columns are labelled


def scale_for(height):
    """Draw 28x28 and 32x32 images at 2x, larger ones at 1x."""
    return max(1, 64 // height)


def decode01(model, z, labels=None):
    return data.to_unit(model.generate(z, labels), model.output).clamp(0, 1)


def figure(width, height):
    return plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)


def save(fig, path):
    fig.savefig(path, dpi=DPI)  # no bbox_inches="tight": the pixel size stays as laid out
    plt.close(fig)


def image_rows(rows, labels, path, title=None, col_labels=None, xlabel=None):
    """Rows of images, each (n, C, H, W) in [0, 1], one label per row, in one grid.

    Size: left + SCALE * (n (W + PAD) + PAD) + RIGHT wide, left = RIGHT + LABEL_CHAR per
    character of the longest label, TOP + SCALE * (R (H + PAD) + PAD)
    + BOTTOM high (+ XLABELS with col_labels), for R rows of n images.
    """
    n, (H, W) = rows[0].shape[0], rows[0].shape[2:]
    grid = make_grid(torch.cat([r.detach().float().cpu() for r in rows]), nrow=n, padding=PAD,
                     pad_value=1.0)  # (3, R (H + PAD) + PAD, n (W + PAD) + PAD)
    s = scale_for(H)
    gh, gw = grid.shape[1] * s, grid.shape[2] * s
    bottom = BOTTOM + (XLABELS if col_labels else 0) + (XLABELS if xlabel else 0)
    left = RIGHT + LABEL_CHAR * max(map(len, labels), default=0)  # as wide as the longest label
    width, height = left + gw + RIGHT, TOP + gh + bottom
    fig = figure(width, height)
    ax = fig.add_axes([left / width, bottom / height, gw / width, gh / height])
    ax.imshow(grid.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest", aspect="auto")
    ax.set_yticks([PAD + r * (H + PAD) + H / 2 for r in range(len(rows))], labels, fontsize=9)
    if col_labels:
        ax.set_xticks([PAD + i * (W + PAD) + W / 2 for i in range(n)], col_labels, fontsize=8)
    else:
        ax.set_xticks([])
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=9, labelpad=1)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
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
def samples(model, n, path, title, generator=None, classes=None):
    """An n x n grid of the model's prior samples (z drawn from `generator`); for a model
    that draws given labels (default_labels), n of each class per row, named. Returns the
    first 2n samples, or None (no figure) for a model without a prior."""
    labelled = classes and model.default_labels(1) is not None
    labels = torch.arange(len(classes)).repeat_interleave(n) if labelled else None
    images = model.sample(len(classes) * n if labelled else n * n, generator, labels)
    if images is None:
        return None
    images = data.to_unit(images, model.output).clamp(0, 1)
    image_rows(list(images.split(n)), list(classes) if labelled else [""] * n, path, title)
    return images[:2 * n]


def latent_scatter(codes, labels, path, title, classes=None):
    """Test codes coloured by class, named in a legend (20 classes or fewer) or on a colour
    bar (more); one colour when the data have no labels (classes None). The two dimensions
    when the code is 2-D, else the first two principal components."""
    codes, labels = codes.detach().float().cpu(), labels.cpu()
    if codes.shape[1] == 2:
        xy, axes = codes, ("z1", "z2")
    else:
        centred = codes - codes.mean(0)
        _, sv, v = torch.linalg.svd(centred, full_matrices=False)
        xy = centred @ v[:2].T
        share = sv.pow(2) / sv.pow(2).sum()
        axes = tuple(f"PCA component {i + 1} ({100 * share[i]:.0f}% of variance)" for i in (0, 1))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    xy, labels = xy[order], labels[order]  # drawn in a random order: no class hides the others
    fig = figure(640, 560)
    ax = fig.add_axes([0.11, 0.1, 0.72, 0.82])
    k = len(classes) if classes else 0
    dots = {"s": 3, "alpha": 1.0} if len(xy) <= 2000 else {"s": 2, "alpha": 0.4}  # no solid blots
    if k == 0:
        ax.scatter(xy[:, 0], xy[:, 1], color="tab:blue", rasterized=True, **dots)
    elif k <= 20:  # one distinct colour per class, named
        colours = plt.get_cmap("tab10" if k <= 10 else "tab20")
        for c, name in enumerate(classes):
            mine = labels == c
            ax.scatter(xy[mine, 0], xy[mine, 1], color=colours(c), label=name, rasterized=True, **dots)
        ax.set_position([0.11, 0.1, 0.68, 0.82])  # room on the right for the names
        legend = ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, markerscale=3, frameon=False)
        for handle in legend.legend_handles:
            handle.set_alpha(1.0)
    else:  # too many classes to tell apart by colour: a continuous scale of class numbers
        points = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="viridis", rasterized=True, **dots)
        fig.colorbar(points, cax=fig.add_axes([0.86, 0.1, 0.03, 0.82]), label="class number")
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(title, fontsize=10)
    save(fig, path)


@torch.no_grad()
def manifold(model, n, path, title, codes=None, label=None):
    """For a 2-D code: decodes over an n x n grid of z from -r to r in each dimension, r the
    99th percentile of the test codes' |z| (at least 1.64, the prior's 90% range); label (1,):
    a conditional model's, for every decode."""
    r = 1.64 if codes is None else max(1.64, codes.abs().float().quantile(0.99).item())
    q = torch.linspace(-r, r, n)
    z = torch.stack(torch.meshgrid(q.flip(0), q, indexing="ij"), -1).flatten(0, 1)  # rows: z2
    device = codes.device if codes is not None else "cpu"
    images = decode01(model, z[:, [1, 0]].to(device), None if label is None else label.expand(len(z)))
    labels = [f"z2 = {v:+.1f}" for v in q.flip(0).tolist()]
    image_rows(list(images.split(n)), labels, path, title, [f"{v:+.1f}" for v in q.tolist()], "z1")


def slerp(a, b, t):
    """Spherical interpolation (Shoemake 1985; White 2016 for Gaussian latents). a, b: (D,)."""
    omega = torch.arccos((a / a.norm() * b / b.norm()).sum().clamp(-1, 1))
    if omega.abs() < 1e-6:
        return (1 - t)[:, None] * a + t[:, None] * b
    return (torch.sin((1 - t) * omega)[:, None] * a + torch.sin(t * omega)[:, None] * b) / torch.sin(omega)


@torch.no_grad()
def interpolations(model, x_a, x_b, n, path, spherical=True, labels_a=None, labels_b=None,
                   title="interpolation between test images", ends=None):
    """Between the codes of test image pairs: a linear row (and a spherical one) per pair,
    from t = 0 (the first image's code) to t = 1, between the two images themselves (ends:
    x_a and x_b in [0, 1]; the inputs when not given). A conditional model encodes each
    image with its own label and decodes each row with the label of the pair's first image."""
    t = torch.linspace(0, 1, n, device=x_a.device)
    za, zb = model.latent(x_a, labels_a), model.latent(x_b, labels_b)
    a01, b01 = ends if ends is not None else (x_a, x_b)
    rows, labels = [], []
    for i in range(za.shape[0]):
        y = None if labels_a is None else labels_a[i:i + 1].expand(n)
        ways = [("linear", (1 - t)[:, None] * za[i] + t[:, None] * zb[i])]
        ways += [("spherical", slerp(za[i], zb[i], t))] if spherical else []
        for way, z in ways:
            rows.append(torch.cat([a01[i:i + 1], decode01(model, z, y), b01[i:i + 1]]))
            labels.append(f"pair {i + 1}: {way}")
    image_rows(rows, labels, path, title, ["image A", *(f"t={v:.2f}" for v in t.tolist()), "image B"])


@torch.no_grad()
def traversal(model, x, order, center, spread, n, path, title, names, label=None, image=None):
    """Decodes of z = code(x) with one dimension d set to center_d + spread_d * v, v from -3
    to 3 with 0 among them (an odd count, n or n + 1), one row per dimension of `order` (the
    most used first), after the image itself (image: x[0] in [0, 1]). label: x[0]'s (1,),
    for a conditional model."""
    n += 1 - n % 2
    v = torch.linspace(-3, 3, n, device=x.device)
    v[n // 2] = 0.0  # exactly
    z0 = model.latent(x[:1], label)[0]
    y = None if label is None else label.expand(n)
    image = x[:1] if image is None else image[:1]
    rows = []
    for d in order:
        z = z0.repeat(n, 1)
        z[:, d] = center[d] + spread[d] * v
        rows.append(torch.cat([image, decode01(model, z, y)]))
    image_rows(rows, names, path, title, ["image", *(f"{s:+.1f}" if s else "0" for s in v.tolist())],
               "value of the dimension")


def history_terms(histories):
    """The terms logged as train_<term> or test_<term>, in order, less skip counts that stayed 0."""
    terms = []
    for rows in histories.values():
        for key in dict.fromkeys(k for row in rows for k in row):  # a resumed run may gain columns
            for split in ("train_", "test_"):
                term = key[len(split):]
                if key.startswith(split) and term not in terms:
                    if not term.startswith("skips_") or any(float(r.get(key) or 0) for r in rows):
                        terms.append(term)
    return terms


INTERNALS = ("grad", "acc_", "skips_", "disc", "decoder", "adv", "l1")  # how training went


def split_terms(terms):
    """(what a reader compares: the loss and the objective's terms, the model's internals:
    gradient norms, the discriminator's numbers, skipped steps)."""
    internal = [t for t in terms if t.startswith(INTERNALS)]
    return [t for t in terms if t not in internal], internal


def loss_curves(histories, path, terms=None, groups=None, kinds=None):
    """One panel per term (loss, recon, kl, ...): train solid, test dashed, one colour per run,
    or per group: groups {label: [run names]} draws each group's mean over its runs, with a
    band of one standard deviation (at the epochs every run of the group has). kinds: {run:
    what its "loss" is}: when they differ, each line of the loss panel names its kind.

    histories: {name: rows of history.csv as dicts}. Panels: 3 per row (2 for 4), 400 x 300 px.
    """
    terms = terms or history_terms(histories)
    groups = groups or {name: [name] for name in histories}
    mixed = kinds is not None and len(set(kinds.values())) > 1
    cols = 2 if len(terms) == 4 else min(3, len(terms))
    nrows = math.ceil(len(terms) / cols)
    legend_rows = math.ceil(2 * len(groups) / 2)  # train and test of each, two to a row
    fig = figure(400 * cols, 300 * nrows + 14 * legend_rows + 10)
    colours = plt.get_cmap("tab10")
    for i, term in enumerate(terms):
        ax = fig.add_subplot(nrows, cols, i + 1)
        for j, (name, members) in enumerate(groups.items()):
            for split, style in (("train_", "-"), ("test_", "--")):
                by_epoch = {}
                for member in members:
                    for r in histories[member]:
                        if r.get(split + term) not in (None, ""):
                            by_epoch.setdefault(float(r["epoch"]), []).append(float(r[split + term]))
                epochs = sorted(e for e, v in by_epoch.items() if len(v) == len(members))
                if not epochs:
                    continue
                mean = torch.tensor([sum(by_epoch[e]) / len(members) for e in epochs])
                n = f" (mean of {len(members)})" if len(members) > 1 else ""
                kind = f" [{kinds[members[0]]}]" if mixed and term == "loss" else ""
                ax.plot(epochs, mean, style, color=colours(j % 10), marker=".",
                        label=f"{short(name, 45 if n else 22)} {split[:-1]}{n}{kind}")
                if len(members) > 1:
                    std = torch.tensor([torch.tensor(by_epoch[e]).std().item() for e in epochs])
                    ax.fill_between(epochs, mean - std, mean + std, color=colours(j % 10), alpha=0.15)
        ax.set_title("loss: different quantities, see each line's [kind]" if mixed and
                     term == "loss" else term, fontsize=10)
        if mixed and term == "loss":
            ax.legend(fontsize=7)  # the kinds are told apart here, beside the lines
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # whole epochs
        ax.set_ylabel(unit_of(term))
        ax.ticklabel_format(axis="y", useOffset=False)
        low, high = ax.get_ylim()  # noise between epochs is not blown up to fill the panel
        least = 0.02 * max(abs(low), abs(high))
        if high - low < least:
            middle = (low + high) / 2
            ax.set_ylim(middle - least / 2, middle + least / 2)
        ax.grid(alpha=0.3)
    handles, names = fig.axes[0].get_legend_handles_labels()
    names = [n.split(" [")[0] for n in names]
    legend_rows = math.ceil(len(names) / 2)
    fig.tight_layout(rect=(0, (14 * legend_rows + 10) / (300 * nrows + 14 * legend_rows + 10), 1, 1))
    fig.legend(handles, names, loc="lower center", ncol=2, fontsize=8, frameon=False)  # below the panels
    save(fig, path)


def unit_of(term):
    """The y axis of a term's panel."""
    if term.startswith("acc_"):
        return "fraction classified right"
    if term.startswith("skips_"):
        return "steps skipped per epoch"
    if term.startswith("grad"):
        return "gradient norm (mean per step)"
    if term.startswith("disc") or term.startswith("adv"):
        return "nats per image (GAN loss)"
    if term == "l1":
        return "sum of |weights|"
    return "nats per image"


def kl_bars(kl_per_dim, path):
    """KL per latent dimension (nats per image), one panel per run: {name: (D,)}. 640 x
    (60 + 200 R) px for R runs."""
    fig = figure(640, 60 + 200 * len(kl_per_dim))
    top = max(float(torch.as_tensor(kl).max()) for kl in kl_per_dim.values()) * 1.05 or 1.0
    for i, (name, kl) in enumerate(kl_per_dim.items()):
        ax = fig.add_subplot(len(kl_per_dim), 1, i + 1)
        kl = torch.as_tensor(kl).cpu()
        values, order = kl.sort(descending=True)  # the most used dimensions first
        ax.bar(range(len(kl)), values.tolist(), width=1.0 if len(kl) > 64 else 0.8,
               color="tab:blue", linewidth=0)
        if len(kl) <= 32:  # each bar named by its dimension (numbered from 1, as everywhere)
            ax.set_xticks(range(len(kl)), [str(d + 1) for d in order.tolist()], fontsize=8)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(-0.6, len(kl) - 0.4)
        ax.set_ylim(0, top)  # one scale for every run compared
        ax.set_title(f"{short(name, 40)}: KL {kl.sum():.2f} nats over {len(kl)} dimensions",
                     fontsize=9)
        ax.set_xlabel("latent dimension, sorted by KL" if len(kl) <= 32 else
                      "rank of the latent dimension by KL")
        ax.set_ylabel("KL (nats per image)")
    fig.tight_layout()
    save(fig, path)


def factor_heatmap(mutual_info, entropy, factors, path, title, unit="z"):
    """Mutual information of each latent unit (rows) with each factor (columns), over the
    factor's entropy (0 to 1: the share of the factor the unit pins down), each cell
    written out. (D, K) and (K,); 140 + 90 K (or the title's width) by 70 + 26 D px."""
    share = (torch.as_tensor(mutual_info, dtype=torch.float64)
             / torch.as_tensor(entropy, dtype=torch.float64).clamp_min(1e-12))
    D, K = share.shape
    width, height = max(140 + 90 * K, 7 * len(title) + 20), 70 + 26 * D  # the title fits
    fig = figure(width, height)
    left = (width - 90 * K) / 2 + 20  # the cells centred, with room for the unit names
    ax = fig.add_axes([left / width, 20 / height, 90 * K / width, 26 * D / height])
    ax.imshow(share.numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for d in range(D):
        for k in range(K):
            v = share[d, k].item()
            ax.text(k, d, f"{v:.2f}", ha="center", va="center", fontsize=8,
                    color="black" if v > 0.6 else "white")
    ax.set_xticks(range(K), factors, fontsize=9)
    ax.xaxis.tick_top()
    ax.set_yticks(range(D), [f"{unit}{d + 1}" for d in range(D)], fontsize=8)
    ax.tick_params(length=0)
    fig.suptitle(title, x=0.5, y=1 - 4 / height, va="top", fontsize=10)
    save(fig, path)


def roc_curves(scores, positive, path, title):
    """One ROC curve per score {name: (N,)} for the positives (N,) bools (the anomalies),
    each named with its AUROC; the diagonal is chance. 520 x 480 px."""
    import metrics
    fig = figure(520, 480)
    ax = fig.add_axes([0.13, 0.12, 0.82, 0.78])
    for name, s in scores.items():
        ax.plot(*metrics.roc_points(s, positive), label=f"{name} (AUROC {metrics.auroc(s, positive):.3f})")
    ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate (normal test images flagged)")
    ax.set_ylabel("true positive rate (anomalies flagged)")
    ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    save(fig, path)
