"""Datasets as uint8 tensors on the training device, from one registry.

A dataset is named by --dataset: a torchvision one (mnist, fashion-mnist, cifar10), celeba,
or npz:PATH (arrays) or folder:PATH (image files), the last three read by images.py, or
dsprites (dsprites.py: generated, with its factors; its splits draw their images a batch
at a time). Each gives uint8 images (N, C, H, W),
int64 labels (N,) and class names (None: no labels), for a train and a test split; --image-size
and --channels fit any of them to one shape. Each split is read once and moved to the
device; batches are slices of a `torch.randperm` order, and scaling, flips, crops and noise
are batched tensor operations: no per-sample Python.
"""
import contextlib
import errno
import hashlib
import io
import math
import os
import pickle
import struct
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torchvision.datasets import utils as tv_utils

import dsprites
from images import DataError, fit, folder_header, npz_header, read_celeba, read_folder, read_npz

TEST_NOISE_SEED = 0  # the test split's corruption is the same in every run, whatever --seed
NOISE_KINDS = ("gaussian", "saltpepper", "mask")
IDX_FILES = ("train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz "
             "and t10k-labels-idx1-ubyte.gz")


@dataclass
class Record:
    """What a loader returns: the image shape as stored (C, H, W), the class names (None: no
    labels), and, when read, the splits {"train": (images, labels), "test": ..., and "val"
    where the dataset has its own}; factors: the ground truth's class (dsprites.GroundTruth)
    where the images' generative factors are known."""
    shape: tuple
    classes: list = None
    splits: dict = None
    own_val: bool = False
    factors: type = None


def torchvision_loader(name, cls, folder, files, shape, classes):
    """A loader of one of torchvision's datasets, in its own on-disk layout under the root."""
    def load(path, root, download, size, channels, skip_bad, read):
        if not read:
            return Record(shape, classes)
        splits = {split: load_split(name, root, split == "train", download)
                  for split in ("train", "test")}
        check_splits(name, os.path.normpath(os.path.join(root, folder)), splits, shape, len(classes))
        return Record(shape, classes, splits)
    load.torchvision = cls, folder, files
    return load


def celeba(path, root, download, size, channels, skip_bad, read):
    return Record((3, 64, 64), None, read and read_celeba(root, download, size, channels, skip_bad),
                  own_val=True)  # 64x64 after read_celeba's centre crop and resize


def sprites(path, root, download, size, channels, skip_bad, read):
    if (size or 64) != 64 or (channels or 1) != 1:
        raise ValueError("dsprites is drawn at 64x64 in grey: drop --image-size and --channels")
    return Record((1, 64, 64), dsprites.SHAPES, read and dsprites.read(root), factors=dsprites.GroundTruth)


def npz(path, root, download, size, channels, skip_bad, read):
    return Record(*npz_header(path), read and read_npz(path))


def folder(path, root, download, size, channels, skip_bad, read):
    return Record(*folder_header(path), read and read_folder(path, size, channels, skip_bad))


# --dataset NAME, or KIND:PATH for the kinds that take a path (npz, folder): name -> loader.
# A loader(path, root, download, size, channels, skip_bad, read) returns a Record; with
# read False, only its shape and class names (from headers: known before any work).
DATASETS = {
    "mnist": torchvision_loader("mnist", "MNIST", "MNIST/raw", IDX_FILES, (1, 28, 28),
                                [str(d) for d in range(10)]),
    "fashion-mnist": torchvision_loader("fashion-mnist", "FashionMNIST", "FashionMNIST/raw", IDX_FILES, (1, 28, 28), [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
        "Ankle boot"]),
    "cifar10": torchvision_loader("cifar10", "CIFAR10", ".", "cifar-10-python.tar.gz (or its extracted "
                                  "cifar-10-batches-py/)", (3, 32, 32), [
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]),
    "celeba": celeba,
    "dsprites": sprites,
    "npz": npz,
    "folder": folder,
}
WITH_PATH = ("npz", "folder")
ALIASES = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10"}


def canonical_name(name):
    kind, colon, path = name.partition(":")
    if colon and kind in WITH_PATH:
        if not path:
            raise ValueError(f"--dataset {name}: give a path, e.g. {kind}:~/my_images")
        return f"{kind}:{','.join(os.path.expanduser(p) for p in path.split(','))}"
    name = ALIASES.get(name.lower(), name.lower())
    if name not in DATASETS or name in WITH_PATH:
        names = [k + (":PATH" if k in WITH_PATH else "") for k in DATASETS]
        raise ValueError(f"unknown dataset {name!r}; use {', '.join(names[:-1])} or {names[-1]}")
    return name


def record(name, root="./data", download=True, size=None, channels=None, skip_bad=False, read=False):
    """The Record of --dataset NAME (read=False: its shape and classes only)."""
    kind, _, path = canonical_name(name).partition(":")
    return DATASETS[kind](path, root, download, size, channels, skip_bad, read)


def describe(name, size=None, channels=None, val_split=0):
    """(image shape (C, H, W), class names or None) of a dataset as --image-size and
    --channels make it, known before loading it (a source's files are looked at, not read);
    ValueError for a --val-split where the dataset has its own validation split."""
    header = record(name, size=size, channels=channels)
    if val_split and header.own_val:
        raise ValueError(f"--val-split: {name} has its own validation split (its official "
                         f"partition), used for best.pt; drop --val-split")
    channels = channels or header.shape[0]
    return ((channels, size, size) if size else (channels, *header.shape[1:])), header.classes


def load_split(name, root="./data", train=True, download=True):
    """One split of a torchvision dataset as (uint8 images (N, C, H, W), int64 labels (N,))
    on the CPU."""
    cls, folder, files = DATASETS[name].torchvision
    split = "train" if train else "test"
    denied = unreadable(os.path.join(root, folder, "cifar-10-batches-py" if cls == "CIFAR10" else ""))
    log = io.StringIO()  # torchvision prints each download attempt; keep it for errors only
    try:
        if denied:
            raise PermissionError(errno.EACCES, "permission denied", denied)
        with contextlib.redirect_stdout(log):
            ds = getattr(torchvision.datasets, cls)(root, train=train, download=download)
    except Exception as e:  # torchvision raises RuntimeError, OSError or URLError offline
        try:
            denied = e.filename if isinstance(e, PermissionError) else None
            bad = not denied and corrupted_file(name, root, train)
        except PermissionError as p:
            denied = p.filename
        if denied:
            raise DataError(f"{name} {split} split: {denied}: permission denied; check its "
                            f"permissions (chmod -R u+rwX), or pass another --data-root") from None
        if bad:
            raise DataError(f"{name} {split} split: {bad}; delete it and place the official "
                            f"file there, or let it download (README: offline use)") from None
        where = os.path.normpath(os.path.join(root, folder))
        how = "could not be downloaded" if download else "download is off"
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else "no message"
        raise DataError(f"{name} {split} split missing or corrupted in {where} and {how} "
                        f"({type(e).__name__}: {reason}); place {files} there "
                        f"(README: offline use)") from None
    if log.getvalue():
        print(log.getvalue(), end="")
    images = torch.as_tensor(ds.data)
    images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)  # CIFAR: NHWC
    return images.contiguous(), torch.as_tensor(ds.targets, dtype=torch.long)


def unreadable(folder):
    """The first existing folder on the way to `folder` that cannot be listed, or None."""
    parts = os.path.normpath(folder).split(os.sep)
    for i in range(1, len(parts) + 1):  # the folders above it need only be entered, not listed
        path = os.sep.join(parts[:i]) or os.sep
        need = os.R_OK | os.X_OK if i == len(parts) else os.X_OK
        if os.path.isdir(path) and not os.access(path, need):
            return path
    return None


def corrupted_file(name, root, train):
    """The first file of a split that is present but damaged, said in words, or None.

    MNIST-style IDX files: the header's sizes must match the file's length; their .gz
    archives and CIFAR-10's must match torchvision's md5 sums; CIFAR-10 batches must unpickle.
    """
    cls = getattr(torchvision.datasets, DATASETS[name].torchvision[0])
    if hasattr(cls, "base_folder"):  # CIFAR-10's pickled batches
        folder = os.path.join(root, cls.base_folder)
        present = [(os.path.join(folder, file), md5) for file, md5 in
                   (cls.train_list if train else cls.test_list)
                   if os.path.isfile(os.path.join(folder, file))]
        for path, _ in present:
            try:
                with open(path, "rb") as f:
                    pickle.load(f, encoding="latin1")  # the official batches are plain dicts
            except Exception:
                return f"{path} is corrupted (it does not unpickle)"
        for path, md5 in present:
            if not tv_utils.check_integrity(path, md5):
                return f"{path} is corrupted (its md5 is not the official one)"
        archive = os.path.join(root, cls.filename)
        if os.path.isfile(archive) and not tv_utils.check_integrity(archive, cls.tgz_md5):
            return f"{archive} is corrupted (its md5 is not the official one)"
        return None
    raw = os.path.join(root, cls.__name__, "raw")
    for gz, md5 in cls.resources:
        if gz.startswith("train") != train:
            continue
        path = os.path.join(raw, gz[:-3])
        if os.path.isfile(path):
            with open(path, "rb") as f:
                magic = f.read(4)
                ndim = magic[3] if len(magic) == 4 else 0
                sizes = f.read(4 * ndim)
            if magic[:3] != b"\x00\x00\x08" or not ndim or len(sizes) != 4 * ndim:
                return f"{path} is corrupted (not an IDX file of bytes: bad header)"
            expected = 4 + 4 * ndim + math.prod(struct.unpack(f">{ndim}I", sizes))
            if os.path.getsize(path) != expected:
                return (f"{path} is corrupted ({os.path.getsize(path)} bytes; its header "
                        f"promises {expected})")
        elif os.path.isfile(path + ".gz") and not tv_utils.check_integrity(path + ".gz", md5):
            return f"{path}.gz is corrupted (its md5 is not the official one)"
    return None


def load(name, root="./data", device="cpu", download=True, budget=float("inf"), size=None,
         channels=None, skip_bad=False, val_split=0, keep=None):
    """Both splits: {"train": (images, labels), "test": (images, labels)} (and "val" for a
    dataset with its own validation split: celeba), each on `device`
    when its images fit `budget` bytes, else left in host memory (pinned for a GPU), to be
    copied over a batch at a time: pass batches(..., device=device) for those.
    size, channels: --image-size and --channels (see fit); skip_bad: --skip-bad-images;
    val_split: --val-split, held out of the training split here (split_off), before the
    splits are placed. keep: the class indices the training split keeps (--classes; see
    kept_classes); the test split stays whole."""
    name = canonical_name(name)
    read = record(name, root, download, size, channels, skip_bad, read=True).splits
    read = {split: (fit(images, size, channels) if torch.is_tensor(images) else images, labels)
            for split, (images, labels) in read.items()}
    if keep is not None:
        read["train"] = keep_classes(*read["train"], keep, name)
    if val_split and "val" not in read:
        read["train"], read["val"] = split_off(*read["train"], val_split)
    splits = {}
    for split, (images, labels) in read.items():
        if fits(images, budget):
            splits[split] = images.to(device), labels.to(device)
        else:
            pin = torch.device(device).type == "cuda"
            splits[split] = (images.pin_memory(), labels.pin_memory()) if pin else (images, labels)
    return splits


def check_splits(name, where, splits, shape, k):
    """DataError unless each split has one label per image, in range, and images of the
    dataset's shape: files that each read well can still not belong together."""
    for split, (images, labels) in splits.items():
        if tuple(images.shape[1:]) != shape:
            bad = (f"its images are {'x'.join(map(str, images.shape[1:]))} (C x H x W), not "
                   f"{'x'.join(map(str, shape))}")
        elif len(labels) != len(images):
            bad = f"it has {len(images)} images but {len(labels)} labels"
        elif len(labels) and not 0 <= labels.min() <= labels.max() < k:
            bad = f"its labels reach {labels.max().item()}, outside 0..{k - 1}"
        else:
            continue
        raise DataError(f"{name} {split} split in {where}: {bad}; its files do not belong "
                        f"together: place the official files there (README: offline use)")


def identity(splits):
    """{split: [images, a hash of images and labels]}: recorded in config.json, so a resume on
    other data is noticed (blake2b of MNIST's 47 MB: about 0.1 s)."""
    out = {}
    for split, (images, labels) in splits.items():
        h = hashlib.blake2b(digest_size=8)
        for t in (images, labels):
            h.update(np.ascontiguousarray(t.cpu().numpy()))
        out[split] = [len(images), h.hexdigest()]
    return out


def kept_classes(cfg):
    """The class indices a run trains on (--classes, or all but --exclude-classes), or None
    for all of them."""
    if cfg.get("train_classes") is not None:
        return list(cfg["train_classes"])
    if cfg.get("exclude_classes") is not None:
        return [c for c in range(cfg["num_classes"]) if c not in cfg["exclude_classes"]]
    return None


def keep_classes(images, labels, keep, name="the data"):
    """(images, labels) of the classes in `keep` only."""
    index = torch.isin(labels, torch.tensor(keep, device=labels.device)).nonzero().squeeze(1)
    if not len(index):
        raise DataError(f"{name}: no training image is of class {', '.join(map(str, keep))}")
    return rows(images, index), labels.index_select(0, index)


def rows(images, index):
    """The images at `index` (N,), as the split's own kind (a Sprites stays positions)."""
    return images[index]


def ground_truth(name, splits):
    """The generative factors of a dataset that has them, for disentanglement metrics
    (dsprites.GroundTruth: sizes, names, uniform draws, the images of chosen factors), or
    None."""
    factors = record(name).factors
    return factors and factors(splits["train"][0], splits["train"][0].device)


def split_off(images, labels, size, seed=1):
    """(train, validation): `size` images (a count, or a fraction of the split when below 1)
    drawn with a fixed seed, whatever --seed, so every run of a comparison holds out the same."""
    n = len(images)
    count = round(size * n) if size < 1 else int(size)
    if not 1 <= count < n:
        raise DataError(f"--val-split {size} holds out {count} of the {n} training images; "
                        f"give a count in [1, {n - 1}] or a fraction in (0, 1)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(images.device)
    val, train = order[:count].sort().values, order[count:].sort().values
    return ((rows(images, train), labels.index_select(0, train)),
            (rows(images, val), labels.index_select(0, val)))


def fits(images, budget):
    """Whether a split's images may sit on the device (a Sprites split is only its positions)."""
    return images.numel() * images.element_size() <= budget


def parse_noise(spec):
    """'gaussian:0.5' -> ('gaussian', 0.5); None or '' -> None."""
    if not spec:
        return None
    kind, _, level = spec.partition(":")
    try:
        level = float(level)
    except ValueError:
        level = None
    if kind not in NOISE_KINDS or level is None or not 0 <= level < float("inf"):
        raise ValueError(f"bad --noise {spec!r}; use gaussian:STD, saltpepper:P or mask:P "
                         f"(e.g. gaussian:0.5)")
    if kind != "gaussian" and level > 1:
        raise ValueError(f"bad --noise {spec!r}: the fraction of pixels must be in [0, 1]")
    return kind, level


def random_hflip(x):
    """Flip each image left-right with probability 1/2. x: (B, C, H, W)."""
    B = x.shape[0]
    flip = torch.rand(B, device=x.device) < 0.5
    both = torch.cat([x, x.flip(3)])  # every image, then every image mirrored
    return both.index_select(0, torch.arange(B, device=x.device) + B * flip)  # (5x torch.where)


def random_crop(x, padding=4):
    """Zero-pad by `padding`, then cut a random HxW window per image (the CIFAR-10 standard)."""
    B, C, H, W = x.shape
    padded = F.pad(x, (padding,) * 4).flatten(2)  # (B, C, (H + 2p) (W + 2p))
    dy = torch.randint(0, 2 * padding + 1, (B, 1), device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (B, 1), device=x.device)
    rows = dy + torch.arange(H, device=x.device)  # (B, H): the window's rows in the padded image
    cols = dx + torch.arange(W, device=x.device)  # (B, W)
    flat = rows[:, :, None] * (W + 2 * padding) + cols[:, None, :]  # (B, H, W) positions
    # one gather over the flattened pixels: 4x faster than indexing with four index tensors
    return padded.gather(2, flat.view(B, 1, H * W).expand(B, C, H * W)).view(B, C, H, W)


def corrupt(x, noise, generator=None):
    """Corrupt x in [0, 1]: additive Gaussian (clipped), salt-and-pepper, or masking.

    Salt-and-pepper and masking pick pixel positions (all channels of a pixel together).
    """
    kind, level = noise
    B, C, H, W = x.shape
    rand = lambda *shape: torch.rand(*shape, device=x.device, generator=generator)  # noqa: E731
    if kind == "gaussian":
        noise = torch.randn(x.shape, device=x.device, generator=generator)
        return (x + level * noise).clamp(0, 1)
    hit = rand(B, 1, H, W) < level
    if kind == "saltpepper":
        return torch.where(hit, (rand(B, 1, H, W) < 0.5).to(x.dtype), x)
    return x.masked_fill(hit, 0.0)  # mask


def to_range(x, output="sigmoid"):
    """[0, 1] images for a sigmoid decoder, [-1, 1] for a tanh decoder."""
    return x if output == "sigmoid" else x * 2 - 1


def to_unit(x, output="sigmoid"):
    """The inverse of to_range: back to [0, 1] pixels (for MSE, PSNR and pictures)."""
    return x if output == "sigmoid" else (x + 1) / 2


def eval_batches(split, output="sigmoid", noise=None, device=None, batch_size=1000):
    """An evaluation pass: a split's (input, target, label) batches in order, the inputs with
    the test split's fixed corruption (TEST_NOISE_SEED) when noise is set."""
    return batches(*split, batch_size, output=output, noise=noise, noise_seed=TEST_NOISE_SEED,
                   device=device)


def batches(images, labels, batch_size, shuffle=False, output="sigmoid", hflip=False,
            crop=False, noise=None, noise_seed=None, order=None, start=0, device=None):
    """Yield (input, target, label) batches; input is the corrupted image when noise is set.

    shuffle draws a torch.randperm order from the global generator (seeded by --seed), or
    takes `order`; `start` skips that many batches (resuming mid-epoch, with the global
    generator restored to where the skipped batches left it). noise_seed gives the
    corruption its own generator, so it is the same on every pass.
    device: for a split kept in host memory (load's budget), each batch is gathered into
    one of two staging buffers (pinned for a GPU) and copied over asynchronously; batch
    k + 1 is gathered while batch k's copy is in flight.
    """
    if shuffle and order is None:
        order = torch.randperm(images.shape[0], device=images.device)
    n = images.shape[0] if order is None else len(order)  # an order may be a shard of the split
    generator = None
    if noise is not None and noise_seed is not None:
        generator = torch.Generator(device=device or images.device).manual_seed(noise_seed)
    buffers, copied = {}, {}
    for k, i in enumerate(range(start * batch_size, n, batch_size)):
        idx = order[i:i + batch_size] if order is not None else torch.arange(
            i, min(i + batch_size, n), device=images.device)
        if device is None:  # index_select: 10-20 times faster than images[idx] on a CPU
            x, y = images.index_select(0, idx), labels.index_select(0, idx)
        else:
            idx = idx.cpu()
            slot = (k % 2, len(idx))
            if slot in copied:
                copied[slot].synchronize()  # this buffer's previous copy has landed
            if slot not in buffers:
                buffers[slot] = torch.empty((len(idx), *images.shape[1:]), dtype=images.dtype,
                                            pin_memory=images.is_pinned())
            torch.index_select(images, 0, idx, out=buffers[slot])
            x = buffers[slot].to(device, non_blocking=True)
            y = labels.index_select(0, idx).to(device, non_blocking=True)
            if x.device.type == "cuda":
                copied[slot] = torch.cuda.Event()
                copied[slot].record()
            elif x.data_ptr() == buffers[slot].data_ptr():
                x = x.clone()  # the same device: never hand out the buffer itself
        if hflip:
            x = random_hflip(x)
        if crop:
            x = random_crop(x)
        clean = x.float().div_(255)  # in place: one allocation less than x.float() / 255
        noisy = corrupt(clean, noise, generator) if noise is not None else clean
        yield to_range(noisy, output), to_range(clean, output), y
