"""The VAE-GAN (Larsen et al. 2016, "Autoencoding beyond pixels using a learned similarity
metric"): a VAE whose decoder is also a GAN generator, with a discriminator beside it.

Imports only torch and losses.py, so it can be copied into a notebook and run alone:

    from vaegan import VAEGAN
    model = VAEGAN(image_shape=(1, 28, 28), latent_dim=20)      # reference 001's MLP, d = 20
    opt = {name: torch.optim.Adam(getattr(model, name).parameters(), lr=1e-3)
           for name in ("encoder", "decoder", "discriminator")}
    out = model.train_step(x, x, opt)  # x: (B, 1, 28, 28) in [0, 1]; updates all three nets
    images = model.sample(64)          # (64, 1, 28, 28) in [0, 1]

Three networks, three losses (all nats per image, averaged over the batch):
    encoder        recon + beta * KL
    decoder        gamma * recon + adversarial       adversarial = -log D(x_rec) - log D(x_prior)
    discriminator  -log D(x) - log(1 - D(x_rec)) - log(1 - D(x_prior))
recon is pixel-wise (bce, mse, gaussian) or Larsen's feature-wise error on a layer of the
discriminator ("feature"). Each network is updated by the gradient of its own loss only,
all three computed from one forward pass (the paper's Algorithm 1).
"""
import contextlib
import math

import torch
import torch.nn as nn

import losses

ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU}


def mlp_networks(image_shape, latent_dim, hidden, act="relu", dropout=0.0, batchnorm=True):
    """Reference 001's networks; with hidden = (d*d,) and latent_dim = d:

    encoder        784 -> d^2 (BN, ReLU) -> 2d (BN): mu and log sigma^2
    decoder        d -> d^2 (BN, ReLU) -> 784 logits
    discriminator  784 -> 256 (BN, ReLU) -> 1 logit
    """
    pixels = math.prod(image_shape)
    bn = (lambda n: [nn.BatchNorm1d(n)]) if batchnorm else (lambda n: [])
    enc, width = [nn.Flatten()], pixels
    for h in hidden:
        enc += [nn.Linear(width, h), *bn(h), ACTIVATIONS[act]()]
        enc += [nn.Dropout(dropout)] if dropout > 0 else []
        width = h
    enc += [nn.Linear(width, 2 * latent_dim), *bn(2 * latent_dim)]
    dec, width = [], latent_dim
    for h in reversed(hidden):
        dec += [nn.Linear(width, h), *bn(h), ACTIVATIONS[act]()]
        width = h
    dec += [nn.Linear(width, pixels), nn.Unflatten(1, image_shape)]
    disc = nn.ModuleList([nn.Sequential(nn.Flatten(), nn.Linear(pixels, 256), *bn(256), nn.ReLU())])
    return nn.Sequential(*enc), nn.Sequential(*dec), disc, nn.Linear(256, 1)


def conv_networks(image_shape, latent_dim, act="relu", dropout=0.0, batchnorm=True):
    """DCGAN guidelines (Radford et al. 2016) with three stride-2 stages 64-128-256:

    encoder        convolutions with BN and act, then a linear layer to mu, log sigma^2
    decoder        linear to 256x4x4 (BN, ReLU), transposed convolutions with BN and ReLU,
                   the last one without BN (the output activation comes after it)
    discriminator  convolutions with LeakyReLU 0.2 and BN on all but the first, then a
                   linear layer to one logit
    Kernels 4, 4, 4 take 32x32 to 4x4 exactly; 4, 4, 3 take 28 -> 14 -> 7 -> 4, and the
    decoder mirrors them (3, 4, 4) back to 28.
    """
    channels, size = image_shape[0], tuple(image_shape[1:])
    if size not in ((28, 28), (32, 32)):
        raise ValueError(f"conv arch supports 28x28 and 32x32 images, got {size[0]}x{size[1]}")
    kernels = (4, 4, 4) if size == (32, 32) else (4, 4, 3)
    bn2 = (lambda n: [nn.BatchNorm2d(n)]) if batchnorm else (lambda n: [])
    enc, c_in = [], channels
    for width, k in zip((64, 128, 256), kernels):
        enc += [nn.Conv2d(c_in, width, k, stride=2, padding=1), *bn2(width), ACTIVATIONS[act]()]
        enc += [nn.Dropout(dropout)] if dropout > 0 else []
        c_in = width
    enc += [nn.Flatten(), nn.Linear(256 * 4 * 4, 2 * latent_dim)]
    dec = [nn.Linear(latent_dim, 256 * 4 * 4)]
    dec += [nn.BatchNorm1d(256 * 4 * 4)] if batchnorm else []
    dec += [nn.ReLU(), nn.Unflatten(1, (256, 4, 4))]
    for c_in, c_out, k in ((256, 128, kernels[2]), (128, 64, kernels[1])):
        dec += [nn.ConvTranspose2d(c_in, c_out, k, stride=2, padding=1), *bn2(c_out), nn.ReLU()]
    dec += [nn.ConvTranspose2d(64, channels, kernels[0], stride=2, padding=1)]
    disc, c_in = nn.ModuleList(), channels
    for i, (width, k) in enumerate(zip((64, 128, 256), kernels)):
        disc.append(nn.Sequential(nn.Conv2d(c_in, width, k, stride=2, padding=1),
                                  *(bn2(width) if i > 0 else []), nn.LeakyReLU(0.2)))
        c_in = width
    head = nn.Sequential(nn.Flatten(), nn.Linear(256 * 4 * 4, 1))
    return nn.Sequential(*enc), nn.Sequential(*dec), disc, head


class Discriminator(nn.Module):
    """D(x) = sigmoid(head(blocks(x))); also returns the output of one block, Dis_l(x)."""

    def __init__(self, blocks, head):
        super().__init__()
        self.blocks, self.head = blocks, head

    def forward(self, x, layer):
        features = None
        for i, block in enumerate(self.blocks, start=1):
            x = block(x)
            features = x if i == layer else features
        logits = self.head(x).squeeze(1)
        return logits.to(torch.promote_types(logits.dtype, torch.float32)), features  # (B,), (B, ...)


class VAEGAN(nn.Module):
    """Encoder q(z|x), decoder p(x|z) and discriminator D(x) = sigmoid(logit).

    recon: "bce", "mse", "gaussian" (pixels) or "feature" (Larsen's Dis_l error).
    gamma weights the reconstruction in the decoder's loss against the adversarial term.
    feature_layer: which discriminator block (1-based) the feature-wise error compares;
    None is the deepest. equilibrium, margin: optional gating (see train_step).
    """

    def __init__(self, image_shape=(1, 28, 28), latent_dim=20, arch="mlp", hidden=None,
                 act="relu", dropout=0.0, batchnorm=True, output="sigmoid", recon="bce",
                 beta=1.0, c=0.05, gamma=1.0, feature_layer=None, equilibrium=None, margin=0.35):
        super().__init__()
        if output not in ("sigmoid", "tanh"):
            raise ValueError(f"unknown output {output!r}; use sigmoid or tanh")
        if recon == "bce" and output != "sigmoid":
            raise ValueError("bce needs a sigmoid output on [0, 1] data; use --recon mse or gaussian")
        self.image_shape, self.latent_dim = tuple(image_shape), latent_dim
        self.output, self.recon, self.beta, self.c, self.gamma = output, recon, beta, c, gamma
        self.equilibrium, self.margin = equilibrium, margin
        batchnorm = True if batchnorm is None else batchnorm  # None: the default, on
        # The test loss is always a pixel likelihood, also when training on features.
        self.pixel_recon = recon if recon != "feature" else (
            "bce" if output == "sigmoid" else "mse")
        if arch == "mlp":
            hidden = (latent_dim * latent_dim,) if hidden is None else tuple(hidden)
            nets = mlp_networks(self.image_shape, latent_dim, hidden, act, dropout, batchnorm)
        elif arch == "conv":
            nets = conv_networks(self.image_shape, latent_dim, act, dropout, batchnorm)
        else:
            raise ValueError(f"unknown arch {arch!r}; use mlp or conv")
        self.encoder, self.decoder = nets[:2]
        self.discriminator = Discriminator(*nets[2:])
        n_blocks = len(self.discriminator.blocks)
        self.feature_layer = n_blocks if feature_layer is None else feature_layer
        if not 1 <= self.feature_layer <= n_blocks:
            raise ValueError(f"feature layer must be in 1..{n_blocks} for the {arch} "
                             f"discriminator, got {feature_layer}")

    def encode(self, x):
        h = self.encoder(x)
        mu, logvar = h.to(torch.promote_types(h.dtype, torch.float32)).chunk(2, dim=1)  # (B, D)
        # at least float32 (under --amp the networks run in bfloat16): the KL sums in full precision
        return mu, logvar

    def reparameterize(self, mu, logvar):
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)  # z = mu + sigma * eps

    def decode(self, z):
        return self.decoder(z)  # (B, C, H, W) logits (sigmoid) or pre-activations (tanh)

    def activate(self, logits):
        return torch.sigmoid(logits) if self.output == "sigmoid" else torch.tanh(logits)

    def discriminate(self, x):
        """(logit (B,), features of block feature_layer (B, ...)) for images x."""
        return self.discriminator(x, self.feature_layer)

    def forward(self, x):
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar

    @torch.no_grad()
    def sample(self, n):
        z = torch.randn(n, self.latent_dim, device=next(self.parameters()).device)
        return self.activate(self.decode(z))

    @torch.no_grad()
    def reconstruct(self, x):
        return self.activate(self.decode(self.encode(x)[0]))  # decode z = mu

    def loss(self, input, target):
        """Every term of one forward pass, as batch means (nats per image).

        loss: the encoder's (recon + beta * KL); decoder: gamma * recon + adv; disc: the
        discriminator's. acc_*: the fraction of real, reconstructed and prior-sampled
        images the discriminator classifies correctly. disc_real and disc_fake (the mean
        of the reconstructed and sampled halves) are what equilibrium gating compares.
        """
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
            recon = losses.reconstruction(self.recon, rec_logits, target, self.output, self.c)
        out = {"recon": recon.mean(), "kl": losses.kl_normal(mu, logvar).mean()}
        out["loss"] = out["recon"] + self.beta * out["kl"]
        out["adv"] = (losses.gan_real(rec_logit) + losses.gan_real(prior_logit)).mean()
        out["decoder"] = self.gamma * out["recon"] + out["adv"]
        out["disc_real"] = losses.gan_real(real_logit).mean()
        out["disc_fake"] = 0.5 * (losses.gan_fake(rec_logit) + losses.gan_fake(prior_logit)).mean()
        out["disc"] = out["disc_real"] + 2 * out["disc_fake"]
        out.update(accuracies(real_logit, rec_logit, prior_logit))
        return out

    def train_step(self, input, target, opt, l1=0.0, grad_clip=None, autocast=contextlib.nullcontext,
                   loss_fn=None):
        """Update encoder, decoder and discriminator, each by the gradient of its own loss.

        opt: {"encoder": ..., "decoder": ..., "discriminator": ...} optimizers. l1 adds
        l1 * sum|w| of each network to that network's loss. grad_clip caps each network's
        gradient norm; grad_<network> reports the norm before clipping. autocast: a context
        for the forward pass only (train.py's --amp). loss_fn: the forward pass, self.loss
        or a DistributedDataParallel wrapper of it (train.py under torchrun).
        Equilibrium gating (Larsen's code; equilibrium 0.68 ~ ln 2, margin 0.35): when the
        discriminator's loss on real or on fake images is below equilibrium - margin it is
        too good and is not updated; when either is above equilibrium + margin it is too
        bad, and the decoder drops its adversarial term; if both would be skipped, neither
        is. Deciding needs the two numbers on the host: one sync per step, with gating only.
        """
        with autocast():
            out = (loss_fn or self.loss)(input, target)
        train_disc = train_adv = True
        if self.equilibrium is not None:
            real, fake = out["disc_real"].item(), out["disc_fake"].item()
            low, high = self.equilibrium - self.margin, self.equilibrium + self.margin
            train_disc = not (real < low or fake < low)
            train_adv = not (real > high or fake > high)
            if not (train_disc or train_adv):
                train_disc = train_adv = True
        decoder_loss = out["decoder"] if train_adv else self.gamma * out["recon"]
        steps = [("encoder", out["loss"]), ("decoder", decoder_loss)]
        steps += [("discriminator", out["disc"])] if train_disc else []
        penalties = []
        for name, loss in steps:
            if l1:
                penalties.append(losses.l1_penalty(getattr(self, name).parameters()))
                loss = loss + l1 * penalties[-1]
            opt[name].zero_grad(set_to_none=True)
            # inputs=: this loss's gradient reaches only this network's weights
            loss.backward(inputs=list(getattr(self, name).parameters()),
                          retain_graph=name != steps[-1][0])
        out["grad_discriminator"] = torch.zeros_like(out["loss"])  # stays 0 on a skipped step
        for name, _ in steps:  # step only after every backward: they share one graph
            out[f"grad_{name}"] = grad_norm(getattr(self, name).parameters(), grad_clip)
            opt[name].step()
        if l1:
            out["l1"] = sum(penalties).detach()
        # full_like fills on the device; new_tensor would copy from the host every step
        out["skips_disc"] = torch.full_like(out["loss"], float(not train_disc))
        out["skips_adv"] = torch.full_like(out["loss"], float(not train_adv))
        return {k: v.detach() for k, v in out.items()}

    def test_loss(self, input, target):
        """Reference 001's test loss, pixel recon + KL with z = mu (loss), the honest
        negative ELBO with z sampled (nelbo), and the discriminator's accuracies on test
        images, reconstructions (z = mu) and prior samples, one batch of each kind."""
        mu, logvar = self.encode(input)
        kl = losses.kl_normal(mu, logvar)
        rec_mu = self.decode(mu)
        recon = losses.reconstruction(self.pixel_recon, rec_mu, target, self.output, self.c)
        rec_z = self.decode(self.reparameterize(mu, logvar))
        recon_z = losses.reconstruction(self.pixel_recon, rec_z, target, self.output, self.c)
        prior = self.activate(self.decode(torch.randn_like(mu)))
        with batch_statistics(self.discriminator):
            logits = [self.discriminate(x)[0] for x in (target, self.activate(rec_mu), prior)]
        return {"loss": (recon + kl).mean(), "recon": recon.mean(), "kl": kl.mean(),
                "nelbo": (recon_z + kl).mean(), **accuracies(*logits)}


def grad_norm(parameters, clip=None):
    """The L2 norm of all gradients together, on the device; with clip, scaled down to it."""
    if clip:
        return nn.utils.clip_grad_norm_([p for p in parameters if p.grad is not None], clip)
    return nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])


@contextlib.contextmanager
def batch_statistics(net):
    """Batch norm in `net` normalizes each batch with its own statistics, as in training,
    and leaves the running averages alone. D is trained on all-real and all-generated
    batches, so its running averages mix the two, and in evaluation mode it would be a
    different classifier from the one the decoder was trained against."""
    layers = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.track_running_stats) for m in layers]
    for m in layers:
        m.training, m.track_running_stats = True, False
    try:
        yield
    finally:
        for m, (training, track) in zip(layers, saved):
            m.training, m.track_running_stats = training, track


def accuracies(real_logit, rec_logit, prior_logit):
    """The fraction of each kind the discriminator gets right (real: D > 1/2, fakes: D < 1/2)."""
    return {"acc_real": (real_logit > 0).float().mean(), "acc_rec": (rec_logit < 0).float().mean(),
            "acc_prior": (prior_logit < 0).float().mean()}


if __name__ == "__main__":
    # Runs alone: builds each network and takes one training step on a random batch.
    for shape in ((1, 28, 28), (3, 32, 32)):
        for arch in ("mlp", "conv"):
            model = VAEGAN(shape, latent_dim=20, arch=arch)
            opt = {name: torch.optim.Adam(getattr(model, name).parameters(), lr=1e-3)
                   for name in ("encoder", "decoder", "discriminator")}
            x = torch.rand(8, *shape)
            out = model.train_step(x, x, opt)
            params = {n: sum(p.numel() for p in getattr(model, n).parameters())
                      for n in ("encoder", "decoder", "discriminator")}
            print(f"{arch:4s} {shape}: parameters {params}, sample "
                  f"{tuple(model.sample(4).shape)}, losses: encoder {out['loss']:.1f}, "
                  f"decoder {out['decoder']:.1f}, discriminator {out['disc']:.3f} nats/image")
