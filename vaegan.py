"""The VAE-GAN (Larsen et al. 2016, "Autoencoding beyond pixels using a learned similarity
metric"): a VAE whose decoder is also a GAN generator. Imports only torch, losses.py, nets.py
and vae.py; `python vaegan.py` shows the step any loop needs. Three losses, nats per image:
    encoder        recon + beta * KL
    decoder        gamma * recon + adversarial       adversarial = -log D(x_rec) - log D(x_prior)
    discriminator  -log D(x) - log(1 - D(x_rec)) - log(1 - D(x_prior))
recon is pixel-wise (bce, mse, gaussian) or Larsen's error on a discriminator layer ("feature").
Each network descends its own loss, all from one forward pass (the paper's Algorithm 1);
out["loss"] is the encoder's, for reporting: backpropagating it alone raises an error.
"""
import math
import os

import torch
import torch.nn as nn

import losses
from nets import (batch_norms, block, conv_encoder, conv_kernels, conv_widths, evaluating, mlp_decoder,
                  mlp_encoder, overriding, positive)
from vae import VAE


def mlp_networks(image_shape, latent_dim, hidden, act="relu", dropout=0.0, batchnorm=True):
    """The MNIST VAE-GAN batch-norm study's: encoder 784 -> d^2 (BN, ReLU) -> 2d (BN), decoder
    d -> d^2 (BN, ReLU) -> 784, discriminator 784 -> 256 (BN, ReLU) -> 1 logit."""
    pixels = math.prod(image_shape)
    enc = mlp_encoder(image_shape, hidden, 2 * latent_dim, act, dropout, batchnorm)
    enc = nn.Sequential(*enc, *([nn.BatchNorm1d(2 * latent_dim)] if batchnorm else []))
    dec = mlp_decoder(image_shape, hidden, latent_dim, act, batchnorm)
    disc = nn.ModuleList([nn.Sequential(nn.Flatten(), *block(nn.Linear(pixels, 256), 256, batchnorm, "relu"))])
    return enc, dec, disc, nn.Linear(256, 1)


def conv_networks(image_shape, latent_dim, act="relu", dropout=0.0, batchnorm=True):
    """DCGAN guidelines (Radford et al. 2016), stride-2 stages 64-128-256 (nets.conv_kernels): the
    decoder's linear and transposed convolutions have BN and ReLU but the last; the
    discriminator LeakyReLU 0.2 and BN on all but the first block, then a linear logit."""
    channels, kernels = image_shape[0], conv_kernels(image_shape)
    widths = conv_widths(kernels, first=64)  # 64-128-256 for 28x28 and 32x32
    last = widths[-1]
    enc = conv_encoder(image_shape, 2 * latent_dim, act, dropout, batchnorm, widths, kernels)
    dec = [*block(nn.Linear(latent_dim, last * 4 * 4), last * 4 * 4, batchnorm, "relu"),
           nn.Unflatten(1, (last, 4, 4))]
    for i in reversed(range(1, len(widths))):  # back up the encoder's stages but the first
        dec += block(nn.ConvTranspose2d(widths[i], widths[i - 1], kernels[i], stride=2, padding=1),
                     widths[i - 1], batchnorm, "relu", dims=2)
    dec += [nn.ConvTranspose2d(widths[0], channels, kernels[0], stride=2, padding=1)]
    disc = nn.ModuleList(nn.Sequential(*block(nn.Conv2d(c_in, width, k, stride=2, padding=1), width,
                                              batchnorm and i > 0, nn.LeakyReLU(0.2), dims=2))
                         for i, (c_in, width, k) in enumerate(zip([channels, *widths], widths, kernels)))
    return enc, nn.Sequential(*dec), disc, nn.Sequential(nn.Flatten(), nn.Linear(last * 4 * 4, 1))


class Discriminator(nn.Module):
    """D(x) = sigmoid(head(blocks(x))); also returns the output of one block, Dis_l(x)."""

    def __init__(self, blocks, head):
        super().__init__()
        self.blocks, self.head = blocks, head

    def forward(self, x, layer):
        features = None
        for i, stage in enumerate(self.blocks, start=1):
            x = stage(x)
            features = x if i == layer else features
        logits = self.head(x).squeeze(1)
        return logits.to(torch.promote_types(logits.dtype, torch.float32)), features  # (B,), (B, ...)


class VAEGAN(VAE):
    """The VAE's encoder q(z|x) and decoder p(x|z), and a discriminator D(x) = sigmoid(logit)."""
    OPTIONS = {**VAE.OPTIONS,
               "gamma": (float, "weight of the reconstruction in the decoder's loss, gamma * "
                                "recon + adversarial (both nats per image)"),
               "feature_layer": (int, "--recon feature: the discriminator block whose output "
                                      "is compared: 1 for mlp, 1-3 for conv (default: the last)"),
               "equilibrium": (float, "gate updates around this discriminator loss (Larsen: "
                                      "0.68); off by default"),
               "margin": (float, "with equilibrium: skip the discriminator's update below "
                                 "equilibrium - margin, the decoder's adversarial term above "
                                 "equilibrium + margin (default 0.35)")}
    RECONS, ARCHS = VAE.RECONS + ("feature",), ("mlp", "conv")
    LOSS = "z = μ decode + KL, not a bound"

    def __init__(self, image_shape=(1, 28, 28), num_classes=None, batchnorm=True, gamma=1.0,
                 feature_layer=None, equilibrium=None, margin=None, **options):
        super().__init__(image_shape, num_classes, batchnorm=batchnorm, **options)
        positive(gamma=gamma)
        if equilibrium is not None:
            positive(equilibrium=equilibrium)
        if margin is not None and equilibrium is None:
            raise ValueError(f"margin={margin!r} sets the width of equilibrium gating; give "
                             f"equilibrium too (e.g. equilibrium=0.68)")
        if margin is not None and not 0 <= margin < math.inf:
            raise ValueError(f"margin={margin!r} must be >= 0")
        if equilibrium is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun
            raise ValueError(f"equilibrium={equilibrium!r} decides each step's updates from its "
                             f"numbers, which each process would do alone: not supported under "
                             f"torchrun yet (drop it or run one process)")
        self.gamma, self.equilibrium = gamma, equilibrium
        self.margin = 0.35 if margin is None and equilibrium is not None else margin
        blocks = len(self.discriminator.blocks)
        if feature_layer is not None and self.recon != "feature":
            raise ValueError(f"feature_layer={feature_layer!r} picks the layer of "
                             f"recon='feature'; give recon='feature' too")
        self.feature_layer = blocks if feature_layer is None and self.recon == "feature" else feature_layer
        if self.feature_layer is not None and not 1 <= self.feature_layer <= blocks:
            raise ValueError(f"feature_layer={feature_layer!r} must be in 1..{blocks} for the "
                             f"{self.arch} discriminator")
        if self.recon == "feature":  # the test loss is a pixel likelihood all the same
            self.likelihood = losses.check_recon(None, self.output)

    def default_hidden(self):
        return (self.latent_dim ** 2,)  # d^2, the MNIST VAE-GAN study's

    def networks(self):
        shape, d = self.image_shape, self.latent_dim
        nets = (mlp_networks(shape, d, self.hidden, self.act, self.dropout, self.batchnorm) if self.arch == "mlp"
                else conv_networks(shape, d, self.act, self.dropout, self.batchnorm))
        return dict(zip(("encoder", "decoder"), nets[:2]), discriminator=Discriminator(*nets[2:]))

    def discriminate(self, x):
        """(logit (B,), features of block feature_layer (B, ...)) for images x."""
        return self.discriminator(x, self.feature_layer)

    def loss(self, input, target, labels=None):
        """Every term of one forward pass, batch means (nats per image): each network's loss, the
        discriminator's accuracies, and disc_real, disc_fake that equilibrium gating compares."""
        mu, logvar = self.encode(input)
        rec_logits = self.decode(self.reparameterize(mu, logvar))
        rec = self.activate(rec_logits)
        prior = self.activate(self.decode(torch.randn_like(mu)))
        real_logit, real_features = self.discriminate(target)
        rec_logit, rec_features = self.discriminate(rec)
        prior_logit, _ = self.discriminate(prior)
        if self.recon == "feature":
            # -log N(Dis_l(x) | Dis_l(x_rec), I) up to a constant (Larsen et al., eq. 6)
            f32 = torch.promote_types(rec_features.dtype, torch.float32)
            recon = losses.gaussian(rec_features.to(f32), real_features.detach().to(f32), c=1.0)
        else:
            recon = self.nll(rec_logits, target)
        terms, kl_loss = self.kl_terms(mu, logvar)  # beta * KL, or its schedule (vae.py)
        out = {"recon": recon.mean(), **terms}
        out["encoder"] = out["recon"] + kl_loss
        out["adv"] = (losses.gan_real(rec_logit) + losses.gan_real(prior_logit)).mean()
        out["decoder"] = self.gamma * out["recon"] + out["adv"]
        out["disc_real"] = losses.gan_real(real_logit).mean()
        out["disc_fake"] = 0.5 * (losses.gan_fake(rec_logit) + losses.gan_fake(prior_logit)).mean()
        out["disc"] = out["disc_real"] + 2 * out["disc_fake"]
        out["loss"] = reported(out["encoder"])
        out.update(accuracies(real_logit, rec_logit, prior_logit))
        return out

    def parameter_groups(self):
        return {n: list(getattr(self, n).parameters()) for n in ("encoder", "decoder", "discriminator")}

    def objectives(self, out):
        """Each network's loss this step; out gains the step's skip counts. Equilibrium gating
        (Larsen's code): a discriminator loss below equilibrium - margin skips its update, above
        equilibrium + margin the decoder's adversarial term; both: neither. One host sync a step."""
        train_disc = train_adv = True
        if self.equilibrium is not None:
            real, fake = out["disc_real"].item(), out["disc_fake"].item()
            low, high = self.equilibrium - self.margin, self.equilibrium + self.margin
            train_disc, train_adv = not (real < low or fake < low), not (real > high or fake > high)
            if not (train_disc or train_adv):
                train_disc = train_adv = True
        # full_like fills on the device; new_tensor would copy from the host every step
        out["skips_disc"] = torch.full_like(out["recon"], float(not train_disc))
        out["skips_adv"] = torch.full_like(out["recon"], float(not train_adv))
        steps = {"encoder": out["encoder"],
                 "decoder": out["decoder"] if train_adv else self.gamma * out["recon"]}
        return {**steps, "discriminator": out["disc"]} if train_disc else steps

    @torch.no_grad()
    def anomaly_scores(self, input, target, labels=None):
        """The VAE's scores, and -logit D(x) (running batch-norm statistics: each image its own)."""
        scores = super().anomaly_scores(input, target, labels)
        with evaluating(self):
            scores["discriminator"] = -self.discriminate(target)[0]
        return scores

    @torch.no_grad()
    def test_loss(self, input, target, labels=None):
        """The MNIST VAE-GAN study's loss, pixel recon + KL at z = mu; nelbo with z sampled; and
        the discriminator's accuracies on test images, reconstructions (z = mu) and prior samples."""
        mu, logvar = self.encode(input)
        kl = losses.kl_normal(mu, logvar)
        rec_mu = self.decode(mu)
        recon = self.nll(rec_mu, target)
        recon_z = self.nll(self.decode(self.reparameterize(mu, logvar)), target)
        prior = self.activate(self.decode(torch.randn_like(mu)))
        with batch_statistics(self.discriminator):
            logits = [self.discriminate(x)[0] for x in (target, self.activate(rec_mu), prior)]
        return {"loss": (recon + kl).mean(), "recon": recon.mean(), "kl": kl.mean(),
                "nelbo": (recon_z + kl).mean(), **accuracies(*logits)}


def reported(loss):
    """loss, as a tensor whose backward raises: each network trains on its own (objectives)."""
    if not loss.requires_grad:
        return loss
    logged = loss * 1  # a node of its own: the hook fires only for a backward through it

    def refuse(grad):
        raise RuntimeError("VAEGAN: out['loss'] is the encoder's loss, for reporting; "
                           "backpropagating it alone would train a plain VAE. Train each "
                           "network on its own loss: model.objectives(out) (see vaegan.py)")
    logged.register_hook(refuse)
    return logged


def batch_statistics(net):
    """Batch norm in `net` normalizes each batch by its own statistics, running averages left
    alone: D trains on all-real and all-fake batches, so its running averages mix the two."""
    return overriding(batch_norms(net), {"training": True, "track_running_stats": False})


def accuracies(real_logit, rec_logit, prior_logit):
    """The fraction of each kind the discriminator gets right (real: D > 1/2, fakes: D < 1/2)."""
    return {"acc_real": (real_logit > 0).float().mean(), "acc_rec": (rec_logit < 0).float().mean(),
            "acc_prior": (prior_logit < 0).float().mean()}


if __name__ == "__main__":
    # Runs alone: one training step of each VAE-GAN on a random batch, as train.py takes it.
    for shape, arch in (((1, 28, 28), "mlp"), ((1, 28, 28), "conv"), ((3, 32, 32), "conv")):
        model = VAEGAN(shape, latent_dim=20, arch=arch)
        groups = model.parameter_groups()  # encoder, decoder, discriminator
        opt = {name: torch.optim.Adam(params, lr=1e-3) for name, params in groups.items()}
        out = model.loss(*(2 * [torch.rand(8, *shape)]))  # every term of one forward pass
        steps = model.objectives(out)  # each network's own loss
        for i, (name, loss) in enumerate(steps.items()):
            opt[name].zero_grad()
            loss.backward(inputs=groups[name], retain_graph=i < len(steps) - 1)
        for name in steps:  # step only after every backward: they share one graph
            opt[name].step()
        print(f"{arch} {shape}: encoder {out['encoder']:.1f}, decoder {out['decoder']:.1f}, "
              f"discriminator {out['disc']:.3f} nats/image; parameters "
              f"{ {n: sum(p.numel() for p in ps) for n, ps in groups.items()} }")
