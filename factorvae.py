"""The FactorVAE (Kim & Mnih 2018, "Disentangling by Factorising"): a VAE whose loss adds gamma times the
total correlation of its codes, TC = KL(q(z) || prod_d q(z_d)), estimated by a discriminator D with the
density-ratio trick (imports only torch, nets.py and vae.py; copy losses.py too, which vae.py needs):
    D(z) = sigmoid(logit(z)) tells codes z ~ q(z) from codes whose every dimension is shuffled across
    the batch (draws of prod_d q(z_d));  TC ~ E_q(z) log(D(z) / (1 - D(z))) = E_q(z) logit(z)
    loss          = recon + beta * KL + gamma * TC        (the encoder and decoder; beta = 1 as the paper)
    discriminator = -1/2 [E log D(z) + E log(1 - D(shuffled z))]     (on detached codes: D alone)
The paper shuffles a second batch's codes; this shuffles the same batch's (one forward pass a step, as
every model here). D is 6 layers of 1000 LeakyReLU(0.2) units, trained with Adam betas (0.5, 0.9).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from nets import positive
from vae import VAE


def permute_dims(z, generator=None):
    """Each column of z (B, D) shuffled on its own: draws of prod_d q(z_d) from draws of q(z)."""
    order = torch.rand(z.shape, generator=generator).to(z.device).argsort(0)
    return z.gather(0, order)


def discriminator(latent_dim, hidden=(1000,) * 6):
    """z (B, D) -> the logit (B, 1) that z is a draw of q(z) rather than of prod_d q(z_d)."""
    layers, width = [], latent_dim
    for h in hidden:
        layers += [nn.Linear(width, h), nn.LeakyReLU(0.2)]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, 1))


def tc_estimate(disc, z):
    """The density-ratio estimate of the total correlation of codes z (B, D), in nats: mean logit."""
    return disc(z).mean()


def discriminator_loss(disc, z, generator=None):
    """D's loss on codes z (B, D), detached: real codes labelled 1, their shuffled columns 0."""
    z = z.detach()
    real, shuffled = disc(z), disc(permute_dims(z, generator))
    return 0.5 * (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                  + F.binary_cross_entropy_with_logits(shuffled, torch.zeros_like(shuffled)))


class FactorVAE(VAE):
    """The VAE's networks and options, gamma times the total correlation, and the discriminator."""
    OPTIONS = {**VAE.OPTIONS,
               "gamma": (float, "weight of the total correlation (Kim & Mnih: 10 on dSprites, 40 "
                                "also reported)"),
               "disc_hidden": (tuple, "the total-correlation discriminator's hidden widths, comma-"
                                      "separated (default: 6 layers of 1000, Kim & Mnih's)")}
    ADAM = {"discriminator": {"betas": (0.5, 0.9)}}  # the paper's, beside train.py's --lr / --lr-disc

    def __init__(self, image_shape=(1, 28, 28), num_classes=None, gamma=10.0, disc_hidden=(1000,) * 6,
                 **options):
        super().__init__(image_shape, num_classes, **options)
        positive(gamma=gamma)
        if not (disc_hidden and all(isinstance(w, int) and w >= 1 for w in disc_hidden)):
            raise ValueError(f"disc_hidden={disc_hidden!r} must be positive widths, e.g. (1000, 1000)")
        self.gamma, self.disc_hidden = gamma, tuple(disc_hidden)
        self.discriminator = discriminator(self.latent_dim, self.disc_hidden)

    @property
    def term_weights(self):
        return {**super().term_weights, "tc": self.gamma, "disc": 0}

    def loss(self, input, target, labels=None):
        """Batch means: loss = recon + beta * KL + gamma * TC (the encoder and decoder's); disc (D's)."""
        mu, logvar = self.encode(input, labels)
        z = self.reparameterize(mu, logvar)
        recon = self.nll(self.decode(z, labels), target).mean()
        terms, kl_loss = self.kl_terms(mu, logvar)
        tc = tc_estimate(self.discriminator, z)  # D's weights are not in the "model" group
        return {"loss": recon + kl_loss + self.gamma * tc, "recon": recon, **terms, "tc": tc,
                "disc": discriminator_loss(self.discriminator, z)}

    def parameter_groups(self):
        own = {id(p) for p in self.discriminator.parameters()}
        return {"model": [p for p in self.parameters() if id(p) not in own],
                "discriminator": list(self.discriminator.parameters())}

    def objectives(self, out):
        return {"model": out["loss"], "discriminator": out["disc"]}


if __name__ == "__main__":
    # Runs alone: the total correlation D finds in independent codes (about 0) and in copies of one unit.
    for name, z in (("independent", torch.randn(4096, 4)), ("copies", torch.randn(4096, 1).repeat(1, 4))):
        disc = discriminator(4, (64, 64))
        opt = torch.optim.Adam(disc.parameters(), lr=1e-3, betas=(0.5, 0.9))
        for step in range(300):
            batch = z[torch.randint(0, len(z), (256,))]
            opt.zero_grad()
            discriminator_loss(disc, batch).backward()
            opt.step()
        print(f"{name}: TC estimate {tc_estimate(disc, z).item():.2f} nats")
    model = FactorVAE((1, 64, 64), hidden=(256,), latent_dim=10)
    x = (torch.rand(64, 1, 64, 64) < 0.1).float()
    print(", ".join(f"{k} {v.item():.2f}" for k, v in model.loss(x, x).items()), "(nats per image)")
