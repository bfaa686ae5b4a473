"""The VQ-VAE's learned prior (nets.Model): a small causal transformer over a trained vqvae run's grid of
code indices, read in raster order, trained after it by one command:

    python train.py --model vqvae --dataset mnist --out runs/vq
    python train.py --model prior --prior-of runs/vq --dataset mnist --out runs/vq-prior
    python evaluate.py runs/vq-prior          # samples: codes drawn one by one, decoded by the vqvae

The vqvae is frozen (its weights are saved with the prior's, so a prior run holds both). The loss is the
codes' negative log-likelihood, nats per image. The test loss adds the vqvae's reconstruction: with a
deterministic one-hot posterior, KL(q || prior) is the codes' NLL, so recon + NLL is the negative ELBO
under this prior, the vqvae's own bound with grid log K replaced by what the prior learned. Blocks as in
nanoGPT: pre-norm, causal self-attention, a 4x MLP.
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

import runs
from nets import Model, at_least, evaluating
from vqvae import VQVAE

SAMPLE_BATCH = 1000  # codes drawn in parallel by sample()


class Block(nn.Module):
    """x + attention(norm(x)), then x + mlp(norm(x)); each position sees itself and those before."""

    def __init__(self, width, heads, dropout):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width),
                                 nn.Dropout(dropout))

    def forward(self, x, cache=None):
        """x (B, t, width); with cache (a list, empty at first) x is the next position alone, and the keys and
        values of those before it are kept there, so drawing a grid costs one pass, not one per code."""
        b, t, w = x.shape
        q, k, v = (a.view(b, t, self.heads, w // self.heads).transpose(1, 2)
                   for a in self.qkv(self.norm1(x)).split(w, dim=2))
        if cache is not None:
            k, v = (torch.cat([old, new], 2) for old, new in zip(cache, (k, v))) if cache else (k, v)
            cache[:] = k, v
        y = F.scaled_dot_product_attention(q, k, v, is_causal=cache is None,
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + F.dropout(self.proj(y.transpose(1, 2).reshape(b, t, w)), self.dropout, self.training)
        return x + self.mlp(self.norm2(x))


def frozen_vqvae(run, image_shape):
    """The VQVAE a finished train.py run describes, weights loaded (not on the meta device), frozen."""
    cfg = runs.load_config(run)
    if cfg.get("model") != "vqvae":
        raise ValueError(f"prior_of={run}: a run of --model {cfg.get('model')}; give a --model vqvae run")
    if list(image_shape) != list(cfg["image_shape"]):
        raise ValueError(f"prior_of={run}: its images are {tuple(cfg['image_shape'])}, these "
                         f"{tuple(image_shape)}; use --dataset {cfg['dataset']} with its --image-size/--channels")
    vqvae = VQVAE(cfg["image_shape"], None, **{k: cfg[k] for k in VQVAE.OPTIONS})
    if not torch.empty(0).is_meta:  # train.py checks its flags on the meta device first
        ckpt = runs.load_checkpoint(os.path.join(run, "checkpoint.pt"))
        if ckpt["epoch"] < cfg["epochs"]:
            raise ValueError(f"prior_of={run}: it has trained {ckpt['epoch']} of its {cfg['epochs']} epochs; "
                             f"finish it first (python train.py --resume {run})")
        vqvae.load_state_dict(ckpt["model"])
    return vqvae.requires_grad_(False).eval()


class Prior(Model):
    OPTIONS = {"prior_of": (str, "prior: the finished vqvae run folder whose codes it models"),
               "layers": (int, "prior: transformer blocks"),
               "heads": (int, "prior: attention heads of each block"),
               "width": (int, "prior: the transformer's width (a multiple of --heads)"),
               "dropout": (float, "prior: dropout in the attention and MLP"),
               "output": (str, "prior: the vqvae run's decoder output, which it takes (default: the run's)")}
    LOSS = "negative ELBO, learned prior over codes"
    CODE, UNIT = VQVAE.CODE, VQVAE.UNIT
    ARCHS = ()

    def __init__(self, image_shape=(1, 28, 28), num_classes=None, prior_of=None, layers=4, heads=4, width=128,
                 dropout=0.1, output=None):
        super().__init__()
        if not prior_of:
            raise ValueError("a prior needs prior_of, the vqvae run folder whose codes it models "
                             "(train.py: --prior-of RUN)")
        for name, v in (("layers", layers), ("heads", heads), ("width", width)):
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name}={v!r} must be an integer >= 1")
        if width % heads:
            raise ValueError(f"width={width} must be a multiple of heads={heads}")
        at_least(0, dropout=dropout)
        if dropout >= 1:
            raise ValueError(f"dropout={dropout} must be below 1")
        self.vqvae = frozen_vqvae(prior_of, image_shape)
        if output not in (None, self.vqvae.output):
            raise ValueError(f"output={output}: the vqvae run decodes with {self.vqvae.output}; leave --output out")
        self.prior_of, self.layers, self.heads, self.width, self.dropout = prior_of, layers, heads, width, dropout
        self.image_shape, self.output = tuple(image_shape), self.vqvae.output
        self.size, self.length = self.vqvae.codebook, self.vqvae.grid[0] * self.vqvae.grid[1]
        self.embedding = nn.Embedding(self.size + 1, width)  # the last index starts every sequence
        self.position = nn.Parameter(torch.zeros(self.length, width))
        self.blocks = nn.Sequential(*(Block(width, heads, dropout) for _ in range(layers)))
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, self.size))

    def train(self, mode=True):
        super().train(mode)
        self.vqvae.eval()  # frozen: its codebook's counts must not move
        return self

    def logits(self, codes):
        """Logits (B, t, K) of codes 0..t-1 from codes (B, t) shifted right behind the start index."""
        start = torch.full_like(codes[:, :1], self.size)
        tokens = torch.cat([start, codes[:, :-1]], 1)
        return self.head(self.blocks(self.embedding(tokens) + self.position[:tokens.shape[1]]))

    def encode(self, x, labels=None):
        return self.vqvae.encode(x)

    def decode(self, z, labels=None):
        return self.vqvae.decode(z)

    def parameter_groups(self):
        return {"model": [p for name, p in self.named_parameters() if not name.startswith("vqvae.")]}

    def loss(self, input, target, labels=None):
        codes = self.vqvae.code_indices(target)
        nll = F.cross_entropy(self.logits(codes).flatten(0, 1), codes.flatten(), reduction="none")
        nll = nll.view(len(codes), -1).sum(1).mean()
        return {"loss": nll, "nll": nll}

    def test_loss(self, input, target, labels=None):
        """The vqvae's reconstruction plus the codes' NLL: the negative ELBO, nats per image."""
        nll = self.loss(input, target)["nll"]
        recon = self.vqvae.test_loss(input, target)["recon"]
        return {"loss": recon + nll, "recon": recon, "kl": nll}

    def next_logits(self, token, i, caches):
        """Logits (B, K) of code i from code i - 1 (token (B, 1); the start index for i = 0), the blocks'
        keys and values of the codes before it in caches (one list per block): logits(codes)[:, i]."""
        h = self.embedding(token) + self.position[i]
        for block, cache in zip(self.blocks, caches):
            h = block(h, cache)
        return self.head(h)[:, -1]

    @torch.no_grad()
    def sample_codes(self, n, generator=None):
        """n grids of code indices (n, h*w), each drawn given those before it (Gumbel-max, noise on the CPU)."""
        device = self.position.device
        codes, caches = [torch.full((n, 1), self.size, dtype=torch.long, device=device)], [[] for _ in self.blocks]
        with evaluating(self):
            for i in range(self.length):
                logits = self.next_logits(codes[-1], i, caches).float()
                u = torch.rand(n, self.size, generator=generator).clamp_(1e-12, 1 - 1e-7).to(device)
                codes.append((logits - torch.log(-torch.log(u))).argmax(1, keepdim=True))
        return torch.cat(codes[1:], 1)

    @torch.no_grad()
    def sample(self, n, generator=None, labels=None):
        chunks = [self.sample_codes(min(SAMPLE_BATCH, n - i), generator) for i in range(0, n, SAMPLE_BATCH)]
        return self.generate(self.vqvae.embed(torch.cat(chunks)))
