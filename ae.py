"""Autoencoders: plain (under- or overcomplete), denoising, sparse and contractive (nets.Model).

The networks are the VAE's (nets.build_networks), so AE vs VAE changes one thing: a code h
instead of q(z|x). Denoising is the data's job (train.py --noise). Copy with nets.py, losses.py.

    from ae import AE
    model = AE((1, 28, 28), latent_dim=32, contractive=0.1)
    out = model.loss(x, x)      # {"loss", "recon", "contractive"}, nats (or squared error) per image
"""
import contextlib

import torch
import torch.nn as nn

import losses
from nets import (ACTIVATIONS, ARCHS, BATCHNORM, HIDDEN, NETWORK_OPTIONS, Model, at_least, batch_norms,
                  build_networks, check_networks, overriding, positive)

CODES = {"linear": lambda h: h, "relu": torch.relu, "sigmoid": torch.sigmoid}


class AE(Model):
    """x -> h = encoder(x) -> decoder(h), with weighted penalties: sparsity (L1 on h, or Ng's KL
    form on a sigmoid code) and contractive ||dh/dx||_F^2 (Rifai et al. 2011)."""
    OPTIONS = {**NETWORK_OPTIONS,
               "code": (str, "the code's activation: linear, relu or sigmoid (relu for L1 "
                             "sparsity; --sparsity-target implies sigmoid) (default: linear)"),
               "sparsity": (float, "weight L of the sparsity penalty, L * sum|h| (or the KL "
                                   "form with --sparsity-target)"),
               "sparsity_target": (float, "target mean activation rho of a sigmoid code; the "
                                          "penalty becomes L * sum_j KL(rho || rho_hat_j)"),
               "contractive": (float, "weight L of the contractive penalty "
                                      "L * ||dh/dx||_F^2 per image")}
    LOSS = "reconstruction term"
    ARCHS = ARCHS

    def __init__(self, image_shape=(1, 28, 28), num_classes=None, latent_dim=20, arch="mlp",
                 hidden=None, act="relu", dropout=0.0, batchnorm=None, output="sigmoid",
                 recon=None, c=0.05, code=None, sparsity=0.0, sparsity_target=None,
                 contractive=0.0):
        super().__init__()
        self.image_shape = tuple(image_shape)
        check_networks(self.image_shape, latent_dim, arch, hidden, act, dropout)
        recon = losses.check_recon(recon, output)
        positive(c=c)
        at_least(0, sparsity=sparsity, contractive=contractive)
        if code is not None and code not in CODES:
            raise ValueError(f"code={code!r} is unknown; use {', '.join(map(repr, CODES))}")
        if sparsity_target is not None:
            if not (0 < sparsity_target < 1 and sparsity):
                raise ValueError(f"sparsity_target={sparsity_target!r} must be in (0, 1) and "
                                 f"needs sparsity > 0")
            if code not in (None, "sigmoid"):
                raise ValueError(f"sparsity_target={sparsity_target!r} needs a sigmoid code "
                                 f"(rho_hat in (0, 1)); leave code out or use code='sigmoid'")
        # L1 on a linear code is dodged by shrinking h and growing the decoder: use relu codes
        self.code = code or ("sigmoid" if sparsity_target is not None else "linear")
        self.latent_dim, self.arch, self.act, self.dropout = latent_dim, arch, act, dropout
        self.output, self.recon, self.c = output, recon, c
        self.batchnorm = BATCHNORM.get(arch, False) if batchnorm is None else bool(batchnorm)
        self.hidden = tuple(hidden or HIDDEN) if arch == "mlp" else None
        self.sparsity, self.sparsity_target, self.contractive = sparsity, sparsity_target, contractive
        self.encoder, self.decoder = build_networks(
            self.image_shape, latent_dim, latent_dim, arch, self.hidden, act, dropout, self.batchnorm)

    @property
    def term_weights(self):
        return {"sparsity": self.sparsity, "contractive": self.contractive}

    def encode(self, x, labels=None):
        return CODES[self.code](self.encoder(x))  # (B, D)

    def decode(self, h, labels=None):
        return self.decoder(h)  # (B, C, H, W) logits (sigmoid) or pre-activations (tanh)

    def forward(self, x, labels=None):
        h = self.encode(x)
        return self.decode(h), h

    def jacobian_norm2(self, x, h=None):
        """||dh/dx||_F^2 per image (B,), differentiable in the weights.

        One-hidden-layer MLP h = W2 a(W1 x + b1) + b2: closed form ||J||_F^2 = s^T [(W1 W1^T) *
        (W2^T W2)] s, s = a'(W1 x + b1). Otherwise exact autograd, D vector-Jacobian products in
        one batched backward; x must require grad and h = self.encode(x) must not couple images
        (batch norm in training: pass frozen_statistics' code, as loss does; else 44% too small)."""
        layers = [m for m in self.encoder if not isinstance(m, nn.Flatten)]
        kinds = [type(m) for m in layers]
        if (self.code == "linear" and len(layers) == 3 and kinds[0] is nn.Linear
                and kinds[1] in ACTIVATIONS.values() and kinds[2] is nn.Linear):
            first, act, last = layers
            a = first(x.flatten(1))  # (B, H)
            s = (a > 0).to(a.dtype) if isinstance(act, nn.ReLU) else torch.where(
                a > 0, torch.ones_like(a), act.alpha * torch.exp(a))  # ELU'
            w1, w2 = first.weight, last.weight  # (H, P), (D, H)
            A = (w1 @ w1.T) * (w2.T @ w2)  # (H, H)
            return ((s @ A) * s).sum(1)
        B, D = h.shape
        basis = torch.eye(D, device=h.device, dtype=h.dtype).unsqueeze(1).expand(D, B, D)
        (jac,) = torch.autograd.grad(h, x, grad_outputs=basis, is_grads_batched=True,
                                     create_graph=True)  # (D, B, C, H, W): row k of each J
        return jac.pow(2).flatten(2).sum(2).sum(0)

    def loss(self, input, target, labels=None):
        """Batch means of the per-image terms: loss = recon + weighted penalties."""
        x = input.detach().requires_grad_(True) if self.contractive else input
        layers = [m for m in batch_norms(self.encoder) if m.training] if self.contractive else []
        if layers:  # each batch-norm layer's batch statistics, for the contractive penalty
            stats, rng = [], saved_generators(x.device)
            hooks = [m.register_forward_hook(lambda m, i, o: stats.append(batch_moments(i[0]))) for m in layers]
        h = self.encode(x)
        for hook in hooks if layers else []:
            hook.remove()
        out = self.recon_term(h, target)
        if self.sparsity:
            out["sparsity"] = (losses.l1_activity(h).mean() if self.sparsity_target is None
                               else losses.kl_sparsity(h, self.sparsity_target))
            out["loss"] = out["loss"] + self.sparsity * out["sparsity"]
        if self.contractive:
            if layers:  # the same pass, each image alone: statistics constant, same dropout
                with frozen_statistics(layers, stats), replayed(rng, x.device):
                    h = self.encode(x)
            out["contractive"] = self.jacobian_norm2(x, h).mean()
            out["loss"] = out["loss"] + self.contractive * out["contractive"]
        return out

    def test_loss(self, input, target, labels=None):
        """The reconstruction term alone: the AE's number in the VAE's units."""
        return self.recon_term(self.encode(input), target)

    def recon_term(self, h, target):
        recon = losses.reconstruction(self.recon, self.decode(h), target, self.output, self.c).mean()
        return {"loss": recon, "recon": recon}


def batch_moments(t):
    """(mean, biased variance) per channel of a batch-norm layer's input, as constants."""
    dims = [0, *range(2, t.dim())]
    return t.mean(dims).detach(), t.var(dims, unbiased=False).detach()


def frozen_statistics(layers, stats):
    """Batch-norm layers normalizing by the given constant (mean, variance), as running statistics."""
    return overriding(layers, [{"training": False, "running_mean": mean, "running_var": var}
                               for mean, var in stats])


def saved_generators(device):
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


@contextlib.contextmanager
def replayed(states, device):
    """The random generators at `states` inside (the same dropout masks again), restored after."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.set_rng_state(states[0])
        if states[1] is not None:
            torch.cuda.set_rng_state(states[1], device)
        yield


if __name__ == "__main__":
    # Runs alone: each variant on a random batch, with its terms.
    x = torch.rand(16, 1, 28, 28)
    for name, kw in (("plain", {}), ("sparse L1", {"sparsity": 1e-3}),
                     ("sparse KL", {"sparsity": 1.0, "sparsity_target": 0.05}), ("contractive", {"contractive": 0.1}),
                     ("contractive conv", {"contractive": 0.1, "arch": "conv"})):
        out = AE((1, 28, 28), latent_dim=32, **kw).loss(x, x)
        print(f"{name:17s}" + " ".join(f"{k} {v.item():.3f}" for k, v in out.items()))
