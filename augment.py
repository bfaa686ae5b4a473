"""What a batch's pixels may go through on the device, batched (no per-image Python): random
flips and crops (--hflip, --crop) and the denoising corruption (--noise).
"""
import torch
import torch.nn.functional as F


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
