"""dSprites (Matthey et al. 2017): 64x64 binary images of one shape on a grid of five factors,
737,280 in the original order (the last fastest): shape 3 (square, ellipse, heart), scale 6
(0.5 to 1), orientation 40 (2 pi k / 40, counter-clockwise), x 32 and y 32 (0 to 1, left to
right, top to bottom), all evenly spaced. Generated, or read from DeepMind's FILE in the data
root ('imgs' of 0/1 bytes, the same order; orientations linspace(0, 2 pi, 40), repeating 0). A
split is grid positions (`Sprites`, not 2.8 GB of images), drawn or unpacked from the file's bits
(360 MB) a batch at a time on its device. The renderer is exact about its own geometry, not
pixel-identical to DeepMind's (unpublished): at scale s the radius is R = 12 s pixels, the centre
at 14 + 36 p on each axis (p the position; pixel i spans [i, i + 1)); no pixel of a shape lies over
14 px from it, so all stay whole. A pixel is on when its centre, rotated by minus the orientation
about the shape's centre and divided by R, lands in the unit shape:
    square   max(|u|, |v|) <= 1 / sqrt(2)   (its corners reach R when rotated)
    ellipse  u^2 + (2 v)^2 <= 1              (semi-axes R and R / 2)
    heart    (a^2 + b^2 - 1)^3 <= a^2 b^3, with (a, b) = 1.15 (u, v + 0.1)   (lobes up)
"""
import hashlib
import math
import os

import numpy as np
import torch

FACTORS = ("shape", "scale", "orientation", "x", "y")
SIZES = (3, 6, 40, 32, 32)
SHAPES = ["square", "ellipse", "heart"]
COUNT = math.prod(SIZES)  # 737,280
SIDE = 64
FILE = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
TEST_SIZE = 10_000  # a fixed random 10,000 positions held out as the test split
VERSION = 2  # of the renderer: a run records it in its data hash


def factors_of(index):
    """Grid positions (N,) -> factor indices (N, 5), mixed radix, the last factor fastest."""
    return torch.stack(torch.unravel_index(index, SIZES), 1)


def index_of(factors):
    """Factor indices (N, 5) -> grid positions (N,)."""
    strides = [math.prod(SIZES[k + 1:]) for k in range(len(SIZES))]
    return (factors * torch.tensor(strides, device=factors.device)).sum(1)


def values(factors):
    """Factor indices (N, 5) -> their values (N, 5): shape 1-3, scale, angle, x, y."""
    f = factors.double()
    return torch.stack([f[:, 0] + 1, 0.5 + f[:, 1] * 0.1, f[:, 2] * 2 * math.pi / 40,
                        f[:, 3] / 31, f[:, 4] / 31], 1)


WINDOW = 31  # every pixel a shape covers lies within 14 px of its centre (13.97 at scale 1)


def render(factors):
    """uint8 images (N, 1, 64, 64), 0 or 255, of factor indices (N, 5), on their device:
    each shape tested on the 31x31 window of pixels around its centre, then placed."""
    v = values(factors).float()
    shape, radius, angle = factors[:, 0, None, None], 12 * v[:, 1, None, None], v[:, 2, None, None]
    centre_x, centre_y = 14 + 36 * v[:, 3], 14 + 36 * v[:, 4]
    step = torch.arange(WINDOW, device=factors.device)
    left = (centre_x.floor().long() - WINDOW // 2).clamp(0, SIDE - WINDOW)  # (N,)
    top = (centre_y.floor().long() - WINDOW // 2).clamp(0, SIDE - WINDOW)
    cols, rows = left[:, None] + step, top[:, None] + step  # (N, 31) pixel indices
    dx = (cols + 0.5 - centre_x[:, None])[:, None, :]  # (N, 1, 31)
    dy = (centre_y[:, None] - rows - 0.5)[:, :, None]  # (N, 31, 1): y up
    cos, sin = angle.cos(), angle.sin()
    u = (dx * cos + dy * sin) / radius  # rotated by -angle, in radii: (N, 31, 31)
    w = (dy * cos - dx * sin) / radius
    square = torch.maximum(u.abs(), w.abs()) <= 2 ** -0.5
    ellipse = u * u + 4 * w * w <= 1
    a, b = 1.15 * u, 1.15 * (w + 0.1)
    heart = (a * a + b * b - 1) ** 3 <= a * a * b ** 3
    on = torch.where(shape == 0, square, torch.where(shape == 1, ellipse, heart))
    canvas = torch.zeros(len(factors), SIDE * SIDE, dtype=torch.uint8, device=factors.device)
    where = (rows[:, :, None] * SIDE + cols[:, None, :]).flatten(1)  # (N, 961)
    canvas.scatter_(1, where, on.flatten(1).to(torch.uint8) * 255)
    return canvas.view(-1, 1, SIDE, SIDE)


MOVED = {}  # (the real file's bits, device) -> their copy there, shared by the splits


class Sprites:
    """A split standing in for uint8 images (N, 1, 64, 64): grid positions `index` (N,), drawn (or
    unpacked from `bits`, the file's packed pixels (737,280, 512) uint8) when a batch is taken."""
    dtype = torch.uint8

    def __init__(self, index, bits=None):
        self.index, self.bits = index, bits

    @property
    def shape(self):
        return torch.Size((len(self.index), 1, SIDE, SIDE))

    @property
    def device(self):
        return self.index.device

    def __len__(self):
        return len(self.index)

    def at(self, positions):
        """Images (n, 1, 64, 64) uint8 of grid positions (n,)."""
        if self.bits is None:
            return render(factors_of(positions))
        packed = self.bits.index_select(0, positions.to(self.bits.device))  # (n, 512)
        shifts = torch.arange(7, -1, -1, device=packed.device, dtype=torch.uint8)
        pixels = (packed[:, :, None] >> shifts) & 1  # np.packbits order: the first pixel highest
        return (pixels.view(-1, 1, SIDE, SIDE) * 255).to(self.device)

    def index_select(self, dim, idx):
        return self.at(self.index.index_select(0, idx.to(self.device)))

    def __getitem__(self, idx):
        """The split of some of these positions (still drawn on demand), as tensor[idx] is."""
        return Sprites(self.index[idx.to(self.device) if torch.is_tensor(idx) else idx], self.bits)

    def to(self, device):
        key = None if self.bits is None else (self.bits.data_ptr(), str(torch.device(device)))
        if key and key not in MOVED:
            MOVED[key] = self.bits.to(device)
        return Sprites(self.index.to(device), key and MOVED[key])

    def cpu(self):
        return self.to("cpu")

    def numel(self):  # what the split holds in memory: its positions (for data.fits)
        return self.index.numel()

    def element_size(self):
        return self.index.element_size()

    def numpy(self):  # its fingerprint, for data.identity's hash
        return np.frombuffer(self.fingerprint(), np.uint8)

    def factors(self):
        """Factor indices (N, 5) of the split's images."""
        return factors_of(self.index)

    def fingerprint(self):
        """Bytes naming the split exactly: its positions and the renderer (or the file's pixels)."""
        h = hashlib.blake2b(self.index.cpu().numpy().tobytes(), digest_size=16)
        h.update(f"render v{VERSION}".encode() if self.bits is None else
                 hashlib.blake2b(self.bits.cpu().numpy().tobytes(), digest_size=16).digest())
        return h.digest()


def read(root):
    """{"train": (Sprites, shape labels), "test": (...)}: the fixed test positions (seed 0) and
    the rest in a fixed random order, drawn by the renderer or unpacked from root/FILE."""
    order = torch.randperm(COUNT, generator=torch.Generator().manual_seed(0))
    bits, path = None, os.path.join(root, FILE)
    if os.path.isfile(path):
        images = np.load(path)["imgs"]  # (737280, 64, 64) of 0/1
        if images.shape != (COUNT, SIDE, SIDE):
            raise ValueError(f"{path}: 'imgs' is {images.shape}, not ({COUNT}, 64, 64); place "
                             f"DeepMind's file there, or remove it to use the generated grid")
        bits = torch.from_numpy(np.packbits(images.reshape(COUNT, -1), axis=1))
    return {split: (Sprites(index, bits), factors_of(index)[:, 0].clone())
            for split, index in (("test", order[:TEST_SIZE].sort().values), ("train", order[TEST_SIZE:]))}


class GroundTruth:
    """The grid as disentanglement.py uses it: sizes, uniform draws, images in [0, 1] of factors."""
    def __init__(self, sprites, device="cpu"):
        self.sprites, self.device = sprites, torch.device(device)
        self.factor_sizes, self.factor_names = list(SIZES), list(FACTORS)  # SIZES as now (tests shrink it)

    def sample_factors(self, n, generator):
        return torch.stack([torch.randint(0, s, (n,), generator=generator) for s in SIZES], 1)

    def index_of(self, factors):
        return index_of(factors.to(self.device))

    def labels_of(self, positions):
        """The class label (the shape) of grid positions."""
        return factors_of(positions)[:, 0]

    def images(self, factors):
        return self.sprites.at(self.index_of(factors)).float() / 255
