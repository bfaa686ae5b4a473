"""The beta-TCVAE (Chen et al. 2018, "Isolating Sources of Disentanglement in VAEs"): the KL
split in three, each weighted (imports only torch, losses.py, nets.py and vae.py):
    E_x KL(q(z|x) || p(z)) = I_q(x; z)                    index-code mutual information (MI)
                           + KL(q(z) || prod_d q(z_d))     total correlation (TC)
                           + sum_d KL(q(z_d) || p(z_d))    dimension-wise KL
    loss = recon + mi_weight * MI + beta * TC + dim_kl_weight * dimension-wise KL
q(z) is estimated on each batch of M codes (minibatch-weighted sampling, eq. S6): log q(z_i) ~
logsumexp_j log q(z_i | x_j) - log M, and per dimension likewise. Chen et al.'s log(N M) shifts
the three by constants adding up to 0 (the same training); with log M they add up to the KL.
"""
import math

import torch

import losses
from nets import at_least
from vae import VAE

LOG_2PI = math.log(2 * math.pi)


def log_normal(z, mu, logvar):
    """log N(z; mu, exp(logvar)) per element, broadcast."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) / logvar.exp())


def kl_decomposition(z, mu, logvar):
    """(MI, TC, dimension-wise KL), batch means in nats, of codes z (M, D) ~ N(mu, exp(logvar))."""
    pairs = log_normal(z[:, None, :], mu[None, :, :], logvar[None, :, :])  # (M, M, D): log q(z_id | x_j)
    constant = math.log(z.shape[0])
    log_qz = torch.logsumexp(pairs.sum(2), dim=1) - constant  # (M,)
    log_prod = (torch.logsumexp(pairs, dim=1) - constant).sum(1)  # (M,): sum_d log q(z_id)
    log_qz_x = log_normal(z, mu, logvar).sum(1)
    log_pz = log_normal(z, torch.zeros_like(z), torch.zeros_like(z)).sum(1)
    return (log_qz_x - log_qz).mean(), (log_qz - log_prod).mean(), (log_prod - log_pz).mean()


class BetaTCVAE(VAE):
    """The VAE's networks and options; beta weighs the total correlation alone."""
    OPTIONS = {**{k: v for k, v in VAE.OPTIONS.items() if k not in ("free_bits", "capacity", "capacity_epochs")},
               "beta": (float, "weight of the total correlation (beta-TCVAE; Chen et al. use 6 on "
                               "dSprites); 1 with the other weights 1 is the ELBO"),
               "mi_weight": (float, "weight of the index-code mutual information (alpha)"),
               "dim_kl_weight": (float, "weight of the dimension-wise KL (gamma)")}
    LOSS = "negative ELBO"

    def __init__(self, image_shape=(1, 28, 28), num_classes=None, mi_weight=1.0,
                 dim_kl_weight=1.0, **options):
        super().__init__(image_shape, num_classes, **options)
        at_least(0, mi_weight=mi_weight, dim_kl_weight=dim_kl_weight)
        self.mi_weight, self.dim_kl_weight = mi_weight, dim_kl_weight

    @property
    def term_weights(self):
        beta = "tc_term" if self.scheduled else "tc"
        return {"kl": 0, "mi": self.mi_weight, beta: 1 if self.scheduled else self.beta,
                "dim_kl": self.dim_kl_weight, **({"tc": 0} if self.scheduled else {})}

    def loss(self, input, target, labels=None):
        """Batch means: loss = recon + mi_weight MI + beta TC + dim_kl_weight dim-KL; kl closed-form."""
        mu, logvar = self.encode(input, labels)
        z = self.reparameterize(mu, logvar)
        recon = self.nll(self.decode(z, labels), target).mean()
        mi, tc, dim_kl = kl_decomposition(z, mu, logvar)
        beta = self.beta_at(math.inf if self.progress is None else self.progress)
        out = {"loss": recon + self.mi_weight * mi + beta * tc + self.dim_kl_weight * dim_kl,
               "recon": recon, "kl": losses.kl_normal(mu, logvar).mean(), "mi": mi, "tc": tc,
               "dim_kl": dim_kl}
        if self.scheduled:  # beta ramped: the TC's share of the loss, logged as it was added
            out["tc_term"] = beta * tc
        return out


if __name__ == "__main__":
    # Runs alone: one batch through it; with every weight 1 the three parts add up to about the KL.
    model = BetaTCVAE((1, 64, 64), hidden=(256,), latent_dim=10, beta=1.0)
    x = (torch.rand(64, 1, 64, 64) < 0.1).float()
    out = model.loss(x, x)
    print(", ".join(f"{k} {v.item():.2f}" for k, v in out.items()), "(nats per image)")
