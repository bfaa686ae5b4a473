"""Datasets as uint8 tensors on the training device, from one registry.

A dataset is named by --dataset: a torchvision one (mnist, fashion-mnist, cifar10), or
npz:PATH (arrays) or folder:PATH (image files). Each gives uint8 images (N, C, H, W),
int64 labels (N,) and class names (None: no labels), for a train and a test split; --image-size
and --channels fit any of them to one shape. Each split is read once and moved to the
device; batches are slices of a `torch.randperm` order, and scaling, flips, crops and noise
are batched tensor operations: no per-sample Python.
"""
import contextlib
import errno
import hashlib
import io
import json
import math
import os
import pickle
import shutil
import struct
import time
import warnings
import zipfile
import zlib

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.datasets import utils as tv_utils

# name -> (torchvision class, folder under the data root, files that must be there)
IDX_FILES = ("train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz "
             "and t10k-labels-idx1-ubyte.gz")
DATASETS = {
    "mnist": ("MNIST", "MNIST/raw", IDX_FILES),
    "fashion-mnist": ("FashionMNIST", "FashionMNIST/raw", IDX_FILES),
    "cifar10": ("CIFAR10", ".", "cifar-10-python.tar.gz (or its extracted cifar-10-batches-py/)"),
}
ALIASES = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10"}
CLASSES = {
    "mnist": [str(d) for d in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck"],
}
NOISE_KINDS = ("gaussian", "saltpepper", "mask")
TEST_NOISE_SEED = 0  # the test split's corruption is the same in every run, whatever --seed


SOURCES = ("npz", "folder")  # --dataset KIND:PATH, read by read_npz and read_folder
TEST_FRACTION = 0.2  # held out as the test split (seed 0) when a source has none
MAX_CLASSES = 10000


class DataError(ValueError):
    """A dataset that cannot be read; the message is one line saying what to do."""


def canonical_name(name):
    kind, colon, path = name.partition(":")
    if colon and kind in SOURCES:
        if not path:
            raise ValueError(f"--dataset {name}: give a path, e.g. {kind}:~/my_images")
        return f"{kind}:{','.join(os.path.expanduser(p) for p in path.split(','))}"
    name = ALIASES.get(name.lower(), name.lower())
    if name not in DATASETS and name != "celeba":
        raise ValueError(f"unknown dataset {name!r}; use mnist, fashion-mnist, cifar10, "
                         f"celeba, npz:PATH or folder:PATH")
    return name


def describe(name, size=None, channels=None):
    """(image shape (C, H, W), class names or None) of a dataset as --image-size and
    --channels make it, known before loading it (a source's files are looked at, not read)."""
    name = canonical_name(name)
    kind, _, path = name.partition(":")
    if kind == "npz":
        shape, classes = npz_header(path)
    elif kind == "folder":
        shape, classes = folder_header(path)
    elif name == "celeba":
        shape, classes = (3, 64, 64), None  # after the centre crop and resize of read_celeba
    else:
        shape, classes = ((3, 32, 32) if name == "cifar10" else (1, 28, 28)), CLASSES[name]
    channels = channels or shape[0]
    return ((channels, size, size) if size else (channels, *shape[1:])), classes


def image_shape(name):
    """(C, H, W) of a dataset's images at their own size."""
    return describe(name)[0]


def num_classes(name):
    classes = describe(name)[1]
    return len(classes) if classes else None


def load_split(name, root="./data", train=True, download=True):
    """One split as (uint8 images (N, C, H, W), int64 labels (N,)) on the CPU."""
    name = canonical_name(name)
    cls, folder, files = DATASETS[name]
    split = "train" if train else "test"
    denied = unreadable(os.path.join(root, folder, "cifar-10-batches-py" if name == "cifar10" else ""))
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
    cls = getattr(torchvision.datasets, DATASETS[name][0])
    if name == "cifar10":
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
         channels=None, skip_bad=False, val_split=0):
    """Both splits: {"train": (images, labels), "test": (images, labels)} (and "val" for a
    dataset with its own validation split: celeba), each on `device`
    when its images fit `budget` bytes, else left in host memory (pinned for a GPU), to be
    copied over a batch at a time: pass batches(..., device=device) for those.
    size, channels: --image-size and --channels (see fit); skip_bad: --skip-bad-images;
    val_split: --val-split, held out of the training split here (split_off), before the
    splits are placed."""
    name = canonical_name(name)
    kind, _, path = name.partition(":")
    if kind == "npz":
        read = read_npz(path)
    elif kind == "folder":
        read = read_folder(path, size, channels, skip_bad)
    elif name == "celeba":
        read = read_celeba(root, download, size, channels, skip_bad)  # with its own validation split
    else:
        read = {split: load_split(name, root, split == "train", download) for split in ("train", "test")}
        check_splits(name, root, read)
    read = {split: (fit(images, size, channels), labels) for split, (images, labels) in read.items()}
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


def check_splits(name, root, splits):
    """DataError unless each split has one label per image, in range, and images of the
    dataset's shape: files that each read well can still not belong together."""
    where = os.path.normpath(os.path.join(root, DATASETS[name][1]))
    shape, k = image_shape(name), num_classes(name)
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
            h.update(t.detach().cpu().contiguous().numpy())
        out[split] = [len(images), h.hexdigest()]
    return out


def fit(images, size=None, channels=None):
    """--channels C: grey (1) or colour (3), converted; --image-size S: the shorter side
    resized to S (bilinear, antialiased), then the centre S x S cut (as torchvision's
    Resize + CenterCrop). uint8 (N, C, H, W) in and out, a thousand images at a time."""
    if channels and images.shape[1] != channels:
        images = images.repeat(1, 3, 1, 1) if channels == 3 else TF.rgb_to_grayscale(images)
    if size and tuple(images.shape[-2:]) != (size, size) and len(images):
        images = torch.cat([TF.center_crop(TF.resize(part, size, antialias=True), size)
                            for part in images.split(1000)])
    return images.contiguous()


def held_out(images, labels, fraction=TEST_FRACTION):
    """{"train", "test"}: a fixed (seed 0) random `fraction` of the images as the test split."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    n_test = round(fraction * len(images))
    if n_test < 1 or n_test == len(images):
        raise DataError(f"{len(images)} image(s) cannot be split into a training and a test "
                        f"split; give at least {math.ceil(2 / fraction)}, or a test split of "
                        f"your own")
    test, train = order[:n_test].sort().values, order[n_test:].sort().values
    return {"train": (images[train], labels[train]), "test": (images[test], labels[test])}


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
    return ((images.index_select(0, train), labels.index_select(0, train)),
            (images.index_select(0, val), labels.index_select(0, val)))


def npz_arrays(path):
    """{name: (shape, dtype)} of the arrays in an .npz file, read from their headers only."""
    if not os.path.isfile(path):
        raise DataError(f"npz file {path} not found; pass --dataset npz:PATH of an existing file")
    try:
        with zipfile.ZipFile(path) as z:
            found = {}
            for member in z.namelist():
                with z.open(member) as f:
                    version = np.lib.format.read_magic(f)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read(f)
                found[member.removesuffix(".npy")] = (shape, dtype)
            return found
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise DataError(f"{path} is not a readable .npz file ({first_words(e)}); write it with "
                        f"numpy.savez(path, x=images, y=labels)") from None


def first_words(e):
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:100]}" if str(e).strip() else type(e).__name__


def npz_header(spec):
    """(C, H, W) and class names of npz:TRAIN[,TEST], checking each file's arrays: x uint8
    (N, H, W) or (N, H, W, C) with C 1 or 3, y (optional) one integer label per image."""
    shape, labelled = None, []
    for path in spec.split(","):
        arrays = npz_arrays(path)
        for xk, yk in (("x", "y"), ("x_test", "y_test")):
            if xk not in arrays:
                if xk == "x":
                    raise DataError(f"{path} has no array 'x' (it has {', '.join(arrays) or 'none'}); "
                                    f"save the images as x (and labels as y)")
                continue
            (xs, xd), ys = arrays[xk], arrays.get(yk)
            if xd != np.uint8 or len(xs) not in (3, 4) or (len(xs) == 4 and xs[3] not in (1, 3)):
                raise DataError(f"{path}: {xk} is {xd} of shape {xs}; it must be uint8 (N, H, W) "
                                f"or (N, H, W, C) with C 1 or 3 (pixels 0..255)")
            here = (xs[3] if len(xs) == 4 else 1, xs[1], xs[2])
            if shape and here != shape:
                raise DataError(f"{path}: {xk} holds {here[1]}x{here[2]}x{here[0]} images, the "
                                f"training ones {shape[1]}x{shape[2]}x{shape[0]}; give them one shape")
            shape = here
            if ys is not None and (tuple(ys[0]) != (xs[0],) or ys[1].kind not in "iu"):
                raise DataError(f"{path}: {yk} is {ys[1]} of shape {ys[0]}; it must hold one "
                                f"integer label per image of {xk} ({xs[0]})")
            labelled.append(ys is not None)
    if any(labelled) and not all(labelled):
        raise DataError(f"npz:{spec}: some splits have labels (y) and some not; give all or none")
    if not all(labelled):
        return shape, None
    labels = [np.load(p)[k] for p in spec.split(",") for k in ("y", "y_test") if k in npz_arrays(p)]
    low, top = min(int(y.min(initial=0)) for y in labels), max(int(y.max(initial=0)) for y in labels)
    if low < 0 or top >= MAX_CLASSES:
        raise DataError(f"npz:{spec}: labels run from {low} to {top}; they must be class "
                        f"numbers 0..K-1 (K at most {MAX_CLASSES}): renumber them, e.g. with "
                        f"numpy.unique(y, return_inverse=True)")
    return shape, [str(k) for k in range(top + 1)]


def read_npz(spec):
    """{"train", "test"} of npz:TRAIN[,TEST] (see npz_header): the test split from TEST, or
    the arrays x_test and y_test, or held out (held_out)."""
    paths = spec.split(",")
    if len(paths) > 2:
        raise DataError(f"npz:{spec}: give one file, or two (training, test) separated by a comma")
    npz_header(spec)
    splits = {}
    for path, split, xk, yk in ((paths[0], "train", "x", "y"), (paths[-1], "test", "x", "y"),
                                (paths[0], "test", "x_test", "y_test")):
        if split in splits or (len(paths) == 1 and xk == "x" and split == "test"):
            continue  # one file: its test split is x_test, or held out below
        try:
            with np.load(path) as z:
                if xk not in z.files:
                    continue
                x, y = z[xk], z[yk] if yk in z.files else np.zeros(len(z[xk]), np.int64)
        except (zipfile.BadZipFile, ValueError, OSError, zlib.error) as e:
            raise DataError(f"{path}: {xk} cannot be read ({first_words(e)}); write the file "
                            f"again with numpy.savez") from None
        x = x[..., None] if x.ndim == 3 else x  # (N, H, W) -> (N, H, W, 1)
        splits[split] = (torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(),
                         torch.from_numpy(y.astype(np.int64)))
    return splits if "test" in splits else held_out(*splits["train"])


IMAGE_TYPES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L")  # Pillow's grey modes
CACHE = ".autoencoder-cache"  # folder:PATH's decoded images, in PATH/.autoencoder-cache/


def folder_files(path):
    """{split or None: [(file, class index or None)]} and the class names (None: no labels)
    of folder:PATH. train/ and test/ subfolders give the splits; subfolders of a split
    give its classes (torchvision's ImageFolder layout), else its images are unlabelled."""
    if not os.path.isdir(path):
        raise DataError(f"folder {path} not found; pass --dataset folder:PATH of a folder of images")
    parts = {"train": os.path.join(path, "train"), "test": os.path.join(path, "test")}
    if not all(os.path.isdir(p) for p in parts.values()):
        parts = {None: path}
    classes = subfolders(parts.get("train", path))
    files = {}
    for split, root in parts.items():
        extra = set(subfolders(root)) - set(classes)
        if extra:
            raise DataError(f"{root}: class folder {sorted(extra)[0]} is not among the "
                            f"training classes ({', '.join(classes)})")
        if classes:
            files[split] = [(f, k) for k, c in enumerate(classes)
                            for f in image_files(os.path.join(root, c))]
        else:
            files[split] = [(f, None) for f in image_files(root)]
        if not files[split]:
            raise DataError(f"{root} holds no images ({', '.join(IMAGE_TYPES)}"
                            f"{', in class subfolders' if classes else ''})")
    return files, classes or None


def listing(folder):
    """The names in folder ([] if it does not exist); DataError when it cannot be listed."""
    try:
        return sorted(n for n in os.listdir(folder) if not n.startswith(".")) if os.path.isdir(folder) else []
    except PermissionError:
        raise DataError(f"{folder}: permission denied; make it readable (chmod -R u+rX)") from None


def subfolders(folder):
    return [n for n in listing(folder) if os.path.isdir(os.path.join(folder, n))]


def image_files(folder):
    """The image files of a folder (a broken link is no file)."""
    return [os.path.join(folder, n) for n in listing(folder)
            if n.lower().endswith(IMAGE_TYPES) and os.path.isfile(os.path.join(folder, n))]


def folder_header(path):
    """(C, H, W) of folder:PATH's first image (read from its header alone) and the class names."""
    files, classes = folder_files(path)
    every = [f for fs in files.values() for f, _ in fs]
    sample = every[::max(1, len(every) // 100)]  # up to 100 headers, spread over the folder
    modes, size = [], None
    for f in sample:
        try:
            with Image.open(f) as im:
                modes.append(im.mode)
                size = size or (im.height, im.width)  # the first image's
        except Exception:  # decoding names it later (or --skip-bad-images leaves it out)
            continue
    if not modes:
        raise DataError(f"no image of {path} can be read (the first: {sample[0]}); place "
                        f"image files there")
    grey = all(m in GREY_MODES for m in modes)  # one colour image: the folder is in colour
    return (1 if grey else 3, *size), classes


def decode(file, channels, size, crop=None):
    """One image file as uint8 (C, H, W): grey (1) or RGB (3); its centre crop x crop first
    when crop is given (CelebA's 148), then fitted to size when given."""
    try:
        with Image.open(file) as im:
            if im.mode.startswith("I"):  # 16-bit grey (PNG, TIFF): keep the 8 high bits
                im = Image.fromarray((np.asarray(im, dtype=np.int64) >> 8).clip(0, 255).astype(np.uint8))
            x = torch.from_numpy(np.array(im.convert("L" if channels == 1 else "RGB")))
    except Exception as e:
        raise DataError(f"{file} cannot be decoded ({first_words(e)}); delete or replace it, "
                        f"or pass --skip-bad-images") from None
    x = x.unsqueeze(0) if x.dim() == 2 else x.permute(2, 0, 1)
    x = TF.center_crop(x, crop) if crop else x
    return fit(x.unsqueeze(0), size)[0]


def decoded(files, folder, name, channels, size, crop=None, skip_bad=False):
    """{split: (images, labels)} of files ({split: [(file, label or None)]}; split None:
    held out as train and test), each file decoded once: the result is cached in
    folder/.autoencoder-cache/<key>/, the key made of every file's name, size and time and of
    the options, and read back from there the next time (seconds, not minutes). A cache
    larger than half the host's memory is read through a memory map, not loaded whole.
    skip_bad: a file that does not decode is left out (and counted), not an error."""
    key = hashlib.blake2b(json.dumps([size, channels, crop, skip_bad, TEST_FRACTION, sorted(
        (split or "", f, os.stat(f).st_size, os.stat(f).st_mtime_ns, k)
        for split, fs in files.items() for f, k in fs)]).encode(), digest_size=8).hexdigest()
    cache = os.path.join(folder, CACHE, key)
    if os.path.isfile(os.path.join(cache, "complete")):
        return read_cache(cache)
    out, t0, done, total = {}, time.perf_counter(), 0, sum(len(fs) for fs in files.values())
    skipped, first = [], None
    for split, fs in files.items():
        images, labels = [], []
        for f, k in fs:
            done += 1
            try:
                image = decode(f, channels, size, crop)
            except DataError:
                if not skip_bad:
                    raise
                skipped.append(f)
                continue
            if images and image.shape != images[0].shape:
                raise DataError(f"{first} is {tuple(images[0].shape[1:])} and {f} "
                                f"{tuple(image.shape[1:])} (H, W): pass --image-size to "
                                f"resize every image to one size")
            if not images:
                first = f  # the file whose size the others must have
            images.append(image)
            labels.append(k or 0)
            if done % 1000 == 0 or done == total:
                print(f"Decoding {name}: {done}/{total} images, "
                      f"{done / (time.perf_counter() - t0):.0f} per second", flush=True)
        if not images:
            raise DataError(f"{name}: no image of the {split or 'whole'} split decodes")
        out[split] = torch.stack(images), torch.tensor(labels, dtype=torch.long)
    if skipped:
        print(f"Skipped {len(skipped)} image(s) that do not decode (--skip-bad-images), the "
              f"first {skipped[0]}")
    out = held_out(*out[None]) if None in out else out
    tmp = f"{cache}.tmp{os.getpid()}"
    try:  # written whole into a temporary folder, then renamed: never half a cache
        os.makedirs(tmp, exist_ok=True)
        for split, (x, y) in out.items():
            np.save(os.path.join(tmp, f"{split}_x.npy"), x.numpy())
            np.save(os.path.join(tmp, f"{split}_y.npy"), y.numpy())
        open(os.path.join(tmp, "complete"), "w").close()
        os.replace(tmp, cache)
    except BaseException as e:  # Ctrl-C too: never leave a half-written cache behind
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(e, OSError):
            raise
        print(f"Note: could not write the cache {cache} ({first_words(e)}); the images will be "
              f"decoded again next time")
    return out


def read_cache(cache):
    names = sorted(n[:-6] for n in os.listdir(cache) if n.endswith("_x.npy"))
    size = sum(os.path.getsize(os.path.join(cache, f"{n}_x.npy")) for n in names)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    mmap = "r" if ram and size > ram / 2 else None
    with warnings.catch_warnings():  # a memory map is read-only; batches only read it
        warnings.simplefilter("ignore", UserWarning)
        return {n: (torch.from_numpy(np.load(os.path.join(cache, f"{n}_x.npy"), mmap_mode=mmap)),
                    torch.from_numpy(np.load(os.path.join(cache, f"{n}_y.npy"))))
                for n in names}


def read_folder(path, size=None, channels=None, skip_bad=False):
    """{"train", "test"} of folder:PATH (see folder_files), decoded once (decoded)."""
    files, _ = folder_files(path)
    return decoded(files, path, path, channels or folder_header(path)[0][0], size, None, skip_bad)


CELEBA_FILES = "img_align_celeba/ (the aligned JPEGs) and list_eval_partition.txt"


def read_celeba(root, download, size=None, channels=None, skip_bad=False):
    """{"train", "val", "test"} of CelebA's official partition, from its real layout:
    root/celeba/img_align_celeba/*.jpg and root/celeba/list_eval_partition.txt ("000001.jpg 0"
    lines; 0 train, 1 validation, 2 test). Each 178x218 image is cut to its centre 148x148 and
    resized to 64x64 (--image-size), as the VAE literature does (PyTorch-VAE; Larsen et al.).
    torchvision downloads the files where they are missing and there is a network."""
    folder = os.path.join(root, "celeba")
    images, partition = os.path.join(folder, "img_align_celeba"), os.path.join(folder, "list_eval_partition.txt")
    if not (os.path.isdir(images) and os.path.isfile(partition)):
        why = "download is off"
        if download:
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    torchvision.datasets.CelebA(root, split="all", target_type=[], download=True)
            except Exception as e:
                why = f"could not be downloaded ({first_words(e)})"
        if not (os.path.isdir(images) and os.path.isfile(partition)):
            raise DataError(f"celeba missing in {folder} and {why}; place {CELEBA_FILES} there "
                            f"(README: offline use)")
    files = {"train": [], "val": [], "test": []}
    with open(partition) as f:
        for number, line in enumerate(f, 1):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise DataError(f"{partition}, line {number}: {line.strip()[:60]!r} is not "
                                f"'<file> <0, 1 or 2>'; place the official file there")
            path = os.path.join(images, parts[0])
            if not os.path.isfile(path):
                raise DataError(f"{path} is listed in {partition} but missing; place the "
                                f"official images there")
            files[("train", "val", "test")[int(parts[1])]].append((path, None))
    return decoded(files, folder, "celeba", channels or 3, size or 64, 148, skip_bad)


def fits(images, budget):
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
        idx = order[i:i + batch_size] if order is not None else slice(i, i + batch_size)
        if device is None:  # index_select: 10-20 times faster than images[idx] on a CPU
            x, y = (images[idx], labels[idx]) if isinstance(idx, slice) else (
                images.index_select(0, idx), labels.index_select(0, idx))
        else:
            idx = torch.arange(n)[idx] if isinstance(idx, slice) else idx.cpu()
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
