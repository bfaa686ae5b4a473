"""factorvae.py: the density-ratio estimate of the total correlation (its sign on codes of known
dependence), the shuffle it trains against, which parameters each objective moves through train.py's
step, the discriminator's Adam betas, and its flags."""
import pytest
import torch

import factorvae
import train
from factorvae import FactorVAE


def trained_discriminator(z, steps=300, seed=0):
    """A small discriminator trained on codes z (N, D) as the FactorVAE trains its own."""
    torch.manual_seed(seed)
    disc = factorvae.discriminator(z.shape[1], (64, 64))
    opt = torch.optim.Adam(disc.parameters(), lr=1e-3, betas=(0.5, 0.9))
    for _ in range(steps):
        loss = factorvae.discriminator_loss(disc, z[torch.randint(0, len(z), (256,))])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return disc


def test_the_total_correlation_estimate_is_near_0_for_independent_codes_and_large_for_copies():
    gen = torch.Generator().manual_seed(1)
    independent = torch.randn(8192, 4, generator=gen)
    copies = torch.randn(8192, 1, generator=gen).repeat(1, 4)  # one unit four times: TC is unbounded
    tc_independent = factorvae.tc_estimate(trained_discriminator(independent), independent).item()
    tc_copies = factorvae.tc_estimate(trained_discriminator(copies), copies).item()
    assert abs(tc_independent) < 0.1, tc_independent
    assert tc_copies > 2, tc_copies


def test_the_shuffle_keeps_each_column_and_breaks_the_rows():
    z = torch.arange(200.).view(50, 4)  # every row's columns tied: z[:, k] = 4 i + k
    shuffled = factorvae.permute_dims(z, torch.Generator().manual_seed(0))
    assert torch.equal(shuffled.sort(0).values, z)  # each column keeps its values
    assert (shuffled - shuffled[:, :1] != torch.tensor([0., 1., 2., 3.])).any(1).float().mean() > 0.9


def test_each_objective_moves_only_its_own_network_and_the_discriminator_has_the_papers_betas():
    torch.manual_seed(0)
    model = FactorVAE((1, 28, 28), latent_dim=4, disc_hidden=(16,))
    cfg = {"lr": 1e-2, "lr_disc": None, "weight_decay": 0.0}
    opt = train.build_optimizers(model, cfg, torch.device("cpu"))
    assert opt["discriminator"].defaults["betas"] == (0.5, 0.9) and opt["model"].defaults["betas"] == (0.9, 0.999)
    groups, x = model.parameter_groups(), torch.rand(16, 1, 28, 28)
    before = {n: [p.detach().clone() for p in ps] for n, ps in groups.items()}
    only = {"model": {"model": opt["model"]}, "discriminator": {"discriminator": opt["discriminator"]}}
    for name in groups:  # one group stepped: the other does not move
        model.objectives = lambda out, name=name: {name: FactorVAE.objectives(model, out)[name]}
        train.train_step(model, model.loss, only[name], groups, x, x, None)
        for n, ps in groups.items():
            moved = any(not torch.equal(p, q) for p, q in zip(ps, before[n]))
            assert moved == (n == name), (name, n)
            before[n] = [p.detach().clone() for p in ps]
    # the discriminator's loss does not reach the encoder, and the VAE's loss does reach it through D
    out = FactorVAE.loss(model, x, x)
    enc = list(model.encoder.parameters())
    assert all(g is None for g in torch.autograd.grad(out["disc"], enc, allow_unused=True))
    assert any(g is not None and g.abs().sum() > 0 for g in torch.autograd.grad(
        model.gamma * out["tc"], enc, allow_unused=True))


def test_a_factorvae_trains_and_its_flags_are_checked(tiny_data, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert train.main(["--model", "factorvae", "--data-root", tiny_data, "--epochs", "1", "--disc-hidden",
                       "8,8", "--gamma", "40", "--lr-disc", "1e-4", "--out", out]) == 0
    text = capsys.readouterr().out
    assert "40 x tc" in text and "0 x disc" in text and "grad_discriminator" in text
    for argv, words in ((["--gamma", "0"], "--gamma 0.0 must be > 0"),
                        (["--disc-hidden", "0"], "bad widths '0'"),
                        (["--model", "vae", "--disc-hidden", "8"], "--disc-hidden is not an option of --model vae")):
        argv = ["--model", "factorvae", *argv] if "--model" not in argv else argv
        assert train.main([*argv, "--data-root", tiny_data, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("bad", [(), (0,), (8, -1)])
def test_bad_discriminator_widths_are_refused_naming_the_option(bad):
    with pytest.raises(ValueError, match="disc_hidden=.* must be positive widths"):
        FactorVAE(disc_hidden=bad)
