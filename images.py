"""Your own images for data.py: npz arrays, folders of image files and CelebA's files as uint8
tensors, a folder decoded once into a cache; fit (--image-size, --channels) serves every dataset."""
import contextlib
import hashlib
import json
import math
import os
import shutil
import time
import warnings
import zipfile
import zlib

import numpy as np
from numpy.lib import format as npy
import torch
import torchvision
import torchvision.transforms.v2.functional as TF
from PIL import Image

TEST_FRACTION = 0.2  # held out as the test split (seed 0) when a source has none
MAX_CLASSES = 10000
IMAGE_TYPES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L")  # Pillow's grey modes
CACHE = ".autoencoder-cache"  # folder:PATH's decoded images, in PATH/.autoencoder-cache/


class DataError(ValueError):
    """A dataset that cannot be read; the message is one line saying what to do."""


def fit(images, size=None, channels=None):
    """uint8 (N, C, H, W) to --channels (1 grey, 3 colour) and --image-size S: the shorter side
    resized to S (bilinear, antialiased), then the centre S x S (torchvision's Resize + CenterCrop)."""
    if channels and images.shape[1] != channels:
        images = images.repeat(1, 3, 1, 1) if channels == 3 else TF.rgb_to_grayscale(images)
    if size and tuple(images.shape[-2:]) != (size, size) and len(images):
        images = torch.cat([TF.center_crop(TF.resize(part, size, antialias=True), size)
                            for part in images.split(1000)])  # a thousand images at a time
    return images.contiguous()


def held_out(images, labels, fraction=TEST_FRACTION):
    """{"train", "test"}: a fixed (seed 0) random `fraction` of the images as the test split."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    n_test = round(fraction * len(images))
    if n_test < 1 or n_test == len(images):
        raise DataError(f"{len(images)} image(s) cannot be split into a training and a test split; "
                        f"give at least {math.ceil(2 / fraction)}, or a test split of your own")
    test, train = order[:n_test].sort().values, order[n_test:].sort().values
    return {"train": (images[train], labels[train]), "test": (images[test], labels[test])}


def first_words(e):
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:100]}" if str(e).strip() else type(e).__name__


def npz_arrays(path):
    """{name: (shape, dtype)} of the arrays in an .npz file, read from their headers only."""
    if not os.path.isfile(path):
        raise DataError(f"npz file {path} not found; pass --dataset npz:PATH of an existing file")
    try:
        found = {}
        with zipfile.ZipFile(path) as z:
            for member in z.namelist():
                with z.open(member) as f:
                    v1 = npy.read_magic(f) == (1, 0)
                    shape, _, dtype = (npy.read_array_header_1_0 if v1 else npy.read_array_header_2_0)(f)
                found[member.removesuffix(".npy")] = (shape, dtype)
        return found
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise DataError(f"{path} is not a readable .npz file ({first_words(e)}); write it with "
                        f"numpy.savez(path, x=images, y=labels)") from None


def npz_header(spec):
    """(C, H, W) and class names of npz:TRAIN[,TEST], checking each file's arrays: x uint8
    (N, H, W) or (N, H, W, C) with C 1 or 3, y (optional) one integer label per image."""
    shape, labelled = None, []
    for path in spec.split(","):
        arrays = npz_arrays(path)
        if "x" not in arrays:
            raise DataError(f"{path} has no array 'x' (it has {', '.join(arrays) or 'none'}); "
                            f"save the images as x (and labels as y)")
        for xk, yk in ((x, y) for x, y in (("x", "y"), ("x_test", "y_test")) if x in arrays):
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
        raise DataError(f"npz:{spec}: labels run from {low} to {top}; they must be class numbers 0..K-1 "
                        f"(K at most {MAX_CLASSES}): renumber them, e.g. with numpy.unique(y, return_inverse=True)")
    return shape, [str(k) for k in range(top + 1)]


def read_npz(spec):
    """{"train", "test"} of npz:TRAIN[,TEST]: the test split from TEST, else x_test, else held out."""
    paths = spec.split(",")
    if len(paths) > 2:
        raise DataError(f"npz:{spec}: give one file, or two (training, test) separated by a comma")
    npz_header(spec)
    splits = {}  # one file: its test split is x_test, or held out below
    for split, (path, xk, yk) in {"train": (paths[0], "x", "y"), "test": (paths[1], "x", "y")
                                  if len(paths) == 2 else (paths[0], "x_test", "y_test")}.items():
        try:
            with np.load(path) as z:
                if xk in z.files:
                    x, y = z[xk], z[yk] if yk in z.files else np.zeros(len(z[xk]), np.int64)
                    x = x[..., None] if x.ndim == 3 else x  # (N, H, W) -> (N, H, W, 1)
                    splits[split] = (torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(),
                                     torch.from_numpy(y.astype(np.int64)))
        except (zipfile.BadZipFile, ValueError, OSError, zlib.error) as e:
            raise DataError(f"{path}: {xk} cannot be read ({first_words(e)}); write the file again "
                            f"with numpy.savez") from None
    return splits if "test" in splits else held_out(*splits["train"])


def folder_files(path):
    """{split or None: [(file, class index or None)]} and the class names (None: no labels) of
    folder:PATH: train/ and test/ give the splits, a split's subfolders its classes (ImageFolder)."""
    if not os.path.isdir(path):
        raise DataError(f"folder {path} not found; pass --dataset folder:PATH of a folder of images")
    parts = {"train": os.path.join(path, "train"), "test": os.path.join(path, "test")}
    if not all(os.path.isdir(p) for p in parts.values()):
        parts = {None: path}
    classes = listing(parts.get("train", path))[0]
    files = {}
    for split, root in parts.items():
        extra = set(listing(root)[0]) - set(classes)
        if extra:
            raise DataError(f"{root}: class folder {sorted(extra)[0]} is not among the "
                            f"training classes ({', '.join(classes)})")
        files[split] = ([(f, k) for k, c in enumerate(classes) for f in listing(os.path.join(root, c))[1]]
                        if classes else [(f, None) for f in listing(root)[1]])
        if not files[split]:
            raise DataError(f"{root} holds no images ({', '.join(IMAGE_TYPES)}"
                            f"{', in class subfolders' if classes else ''})")
    return files, classes or None


def listing(folder):
    """(subfolder names, image files: no broken links) in folder ([] if none), sorted, hidden ones out."""
    try:
        names = sorted(n for n in os.listdir(folder) if not n.startswith(".")) if os.path.isdir(folder) else []
    except PermissionError:
        raise DataError(f"{folder}: permission denied; make it readable (chmod -R u+rX)") from None
    paths = [os.path.join(folder, n) for n in names]
    return ([n for n, p in zip(names, paths) if os.path.isdir(p)],
            [p for p in paths if p.lower().endswith(IMAGE_TYPES) and os.path.isfile(p)])


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
        raise DataError(f"no image of {path} can be read (the first: {sample[0]}); place image files there")
    grey = all(m in GREY_MODES for m in modes)  # one colour image: the folder is in colour
    return (1 if grey else 3, *size), classes


def decode(file, channels, size, crop=None):
    """A file as uint8 (C, H, W), grey (1) or RGB (3): its centre crop x crop (CelebA's 148), then fit."""
    try:
        with Image.open(file) as im:
            if im.mode.startswith("I"):  # 16-bit grey (PNG, TIFF): keep the 8 high bits
                im = Image.fromarray((np.asarray(im, dtype=np.int64) >> 8).clip(0, 255).astype(np.uint8))
            x = TF.pil_to_tensor(im.convert("L" if channels == 1 else "RGB"))
    except Exception as e:
        raise DataError(f"{file} cannot be decoded ({first_words(e)}); delete or replace it, or pass "
                        f"--skip-bad-images") from None
    x = TF.center_crop(x, crop) if crop else x
    return fit(x.unsqueeze(0), size)[0]


def decoded(files, folder, name, channels, size, crop=None, skip_bad=False):
    """{split: (images, labels)} of files {split: [(file, label or None)]} (None: held out), decoded once
    into folder/.autoencoder-cache/<key>/, keyed by the options and each file's name, size and time."""
    key = hashlib.blake2b(json.dumps([size, channels, crop, skip_bad, TEST_FRACTION, sorted(
        (split or "", f, os.stat(f).st_size, os.stat(f).st_mtime_ns, k)
        for split, fs in files.items() for f, k in fs)]).encode(), digest_size=8).hexdigest()
    cache = os.path.join(folder, CACHE, key)
    if os.path.isfile(os.path.join(cache, "complete")):
        names = sorted(n[:-6] for n in os.listdir(cache) if n.endswith("_x.npy"))
        nbytes = sum(os.path.getsize(os.path.join(cache, f"{n}_x.npy")) for n in names)
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
        mmap = "r" if ram and nbytes > ram / 2 else None  # over half the host's memory: a memory map
        with warnings.catch_warnings():  # a memory map is read-only; batches only read it
            warnings.simplefilter("ignore", UserWarning)
            return {n: (torch.from_numpy(np.load(os.path.join(cache, f"{n}_x.npy"), mmap_mode=mmap)),
                        torch.from_numpy(np.load(os.path.join(cache, f"{n}_y.npy")))) for n in names}
    out = decode_all(files, name, channels, size, crop, skip_bad)
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
        print(f"Note: could not write the cache {cache} ({first_words(e)}); the images will be decoded "
              f"again next time")
    return out


def decode_all(files, name, channels, size, crop, skip_bad):
    """{split: (images, labels)} of files; skip_bad: one that does not decode is left out, and counted."""
    every = [(split, f, k) for split, fs in files.items() for f, k in fs]
    out, first, skipped, t0 = {split: ([], []) for split in files}, {}, [], time.perf_counter()
    for done, (split, f, k) in enumerate(every, 1):
        try:
            image = decode(f, channels, size, crop)
        except DataError:
            if not skip_bad:
                raise
            skipped.append(f)
            continue
        f0, shape = first.setdefault(split, (f, image.shape))  # the size the split's others must have
        if image.shape != shape:
            raise DataError(f"{f0} is {tuple(shape[1:])} and {f} {tuple(image.shape[1:])} (H, W): "
                            f"pass --image-size to resize every image to one size")
        out[split][0].append(image)
        out[split][1].append(k or 0)
        if done % 1000 == 0 or done == len(every):
            print(f"Decoding {name}: {done}/{len(every)} images, "
                  f"{done / (time.perf_counter() - t0):.0f} per second", flush=True)
    if skipped:
        print(f"Skipped {len(skipped)} image(s) that do not decode (--skip-bad-images), the first "
              f"{skipped[0]}")
    for split, (images, _) in out.items():
        if not images:
            raise DataError(f"{name}: no image of the {split or 'whole'} split decodes")
    return {split: (torch.stack(x), torch.tensor(y, dtype=torch.long)) for split, (x, y) in out.items()}


def read_folder(path, size=None, channels=None, skip_bad=False):
    """{"train", "test"} of folder:PATH (see folder_files), decoded once (decoded)."""
    files, _ = folder_files(path)
    return decoded(files, path, path, channels or folder_header(path)[0][0], size, None, skip_bad)


def read_celeba(root, download, size=None, channels=None, skip_bad=False):
    """{"train", "val", "test"} of root/celeba/img_align_celeba/*.jpg by list_eval_partition.txt
    ("000001.jpg 0": 0 train, 1 val, 2 test; downloaded where missing if it can be), each 178x218
    image cut to its centre 148x148, then 64x64 (--image-size), as PyTorch-VAE and Larsen et al. do."""
    folder = os.path.join(root, "celeba")
    images, partition = (os.path.join(folder, n) for n in ("img_align_celeba", "list_eval_partition.txt"))
    why = "download is off"
    if download and not (os.path.isdir(images) and os.path.isfile(partition)):
        try:
            with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
                torchvision.datasets.CelebA(root, split="all", target_type=[], download=True)
        except Exception as e:
            why = f"could not be downloaded ({first_words(e)})"
    if not (os.path.isdir(images) and os.path.isfile(partition)):
        raise DataError(f"celeba missing in {folder} and {why}; place img_align_celeba/ (the aligned JPEGs) "
                        f"and list_eval_partition.txt there (README: offline use)")
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
