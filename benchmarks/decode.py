"""How fast folder:PATH decodes a folder of small JPEGs into its cache, and how fast the
cache loads the next time.

    python benchmarks/decode.py --npz ../cifar10_train_uint8.npz --n 20000 --folder /tmp/jpegs

Writes N JPEG files (quality 90) into --folder, in class subfolders, from the images of an
npz (x, y; cycled with flips and shifts so that no two files are alike) or, without one,
from random smooth pictures; then times data.load twice: the first decodes every file and
writes the cache, the second reads the cache. Prints images per second and seconds.
"""
import argparse
import os
import shutil
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import data  # noqa: E402
import flags  # noqa: E402


def pictures(args):
    if args.npz:
        with np.load(args.npz) as z:
            x, y = z["x"], z["y"] if "y" in z.files else np.zeros(len(z["x"]), int)
    else:
        rng = np.random.default_rng(0)
        x = (rng.random((1000, 8, 8, 3)) * 255).astype(np.uint8).repeat(4, 1).repeat(4, 2)
        y = np.arange(1000) % 10
    for i in range(args.n):
        img = x[i % len(x)]
        variant = i // len(x)  # 0: as is; then flipped and shifted copies
        img = np.roll(img[:, ::-1] if variant % 2 else img, variant // 2, axis=1)
        yield i, np.ascontiguousarray(img), int(y[i % len(y)])


def main():
    p = argparse.ArgumentParser(description=flags.description(__doc__), formatter_class=flags.Help)
    p.add_argument("--npz", default=None, help="images to write as JPEGs (arrays x, y)")
    p.add_argument("--n", type=int, default=20000, help="number of files")
    p.add_argument("--folder", default="/tmp/decode-benchmark", help="where to write them")
    p.add_argument("--image-size", type=int, default=None, help="also resize (data.load's size)")
    args = p.parse_args()
    shutil.rmtree(args.folder, ignore_errors=True)
    t0 = time.perf_counter()
    for i, img, label in pictures(args):
        folder = os.path.join(args.folder, f"class{label}")
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(img).save(os.path.join(folder, f"{i:06d}.jpg"), quality=90)
    print(f"wrote {args.n} JPEGs in {time.perf_counter() - t0:.1f} s")
    for attempt in ("first load (decode every file, write the cache)", "second load (the cache)"):
        t0 = time.perf_counter()
        splits = data.load(f"folder:{args.folder}", size=args.image_size)
        seconds = time.perf_counter() - t0
        n = sum(len(x) for x, _ in splits.values())
        print(f"{attempt}: {n} images {tuple(splits['train'][0].shape[1:])} in {seconds:.2f} s, "
              f"{n / seconds:,.0f} images per second")


if __name__ == "__main__":
    main()
