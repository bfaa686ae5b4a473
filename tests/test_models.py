import pytest
import torch
import torch.nn as nn

import models
from ae import AE
from cvae import CVAE
from vae import VAE
from vaegan import VAEGAN

SHAPES = [(1, 28, 28), (3, 32, 32)]  # MNIST / Fashion-MNIST, CIFAR-10


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("arch", ["mlp", "conv", "conv3x3"])
@pytest.mark.parametrize("output", ["sigmoid", "tanh"])
def test_shapes_and_ranges(shape, arch, output):
    torch.manual_seed(0)
    model = VAE(shape, latent_dim=6, arch=arch, output=output,
                recon="bce" if output == "sigmoid" else "mse")
    x = torch.rand(5, *shape) if output == "sigmoid" else torch.rand(5, *shape) * 2 - 1
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (5, 6)
    logits = model.decode(model.reparameterize(mu, logvar))
    assert logits.shape == (5, *shape)
    lo, hi = (0, 1) if output == "sigmoid" else (-1, 1)
    for images in (model.sample(7), model.reconstruct(x)):
        assert images.shape[1:] == shape
        assert images.min() >= lo and images.max() <= hi
    out = model.loss(x, x)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and out["kl"] >= 0
    assert all(p.grad is not None for p in model.parameters())


def test_conv_code_map_is_128x4x4_for_both_sizes():
    for shape in SHAPES:
        enc = VAE(shape, arch="conv").encoder
        h = enc[:-2](torch.rand(2, *shape))  # up to Flatten
        assert h.shape == (2, 128, 4, 4)


def test_conv3x3_is_the_gaussian_decoder_studys_cnn():
    # as the study prints it: 3x3 stride-2 convolutions 32-64-32 with batch norm and ELU,
    # Linear(512, 2d); Linear(d, 512), transposed convolutions 32-64-32-32, a 3x3 convolution
    model = VAE((1, 28, 28), latent_dim=2, arch="conv3x3", act="elu")
    convs = [m for m in model.encoder if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (32, (3, 3), (2, 2)), (64, (3, 3), (2, 2)), (32, (3, 3), (2, 2))]
    assert model.encoder[-1].in_features == 512 and model.encoder[-1].out_features == 4
    sides, h = [], torch.rand(2, 2)
    for m in model.decoder:
        h = m(h) if not isinstance(m, nn.BatchNorm2d) else h
        if isinstance(m, (nn.ConvTranspose2d, nn.Conv2d)):
            sides.append(tuple(h.shape[1:]))
    assert sides == [(64, 7, 7), (32, 14, 14), (32, 28, 28), (1, 28, 28)]
    assert count(model, nn.BatchNorm2d) == 6 and count(model, nn.ReLU) == 0
    n = sum(p.numel() for p in model.parameters())
    assert n == (320 + 18496 + 18464 + 2052 + (64 + 128 + 64)  # encoder, its BN
                 + 1536 + 18496 + 18464 + 9248 + 289 + (128 + 64 + 64))  # decoder, its BN
    for shape in ((3, 32, 32), (1, 9, 13)):  # any side of 8 or more, non-square too
        assert VAE(shape, arch="conv3x3").sample(2).shape == (2, *shape)
    with pytest.raises(ValueError, match="sides of 8"):
        VAE((1, 6, 6), arch="conv3x3")
    with pytest.raises(ValueError, match="arch='conv3x3' is unknown; use 'mlp', 'conv'"):
        VAEGAN(arch="conv3x3")


def test_conv64_is_disentanglement_libs_conv_networks():
    # conv_encoder: 4x4 stride-2 convolutions 32-32-64-64, linear 256, linear 2d; deconv_decoder: linear
    # 256, linear 1024, transposed 64-32-32-C; ReLU, no batch norm
    model = VAE((1, 64, 64), latent_dim=10, arch="conv64")
    convs = [m for m in model.encoder if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [(w, (4, 4), (2, 2)) for w in (32, 32, 64, 64)]
    linears = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears == [(1024, 256), (256, 20), (10, 256), (256, 1024)]
    ups = [m.out_channels for m in model.decoder if isinstance(m, nn.ConvTranspose2d)]
    assert ups == [64, 32, 32, 1] and count(model, nn.BatchNorm2d) == count(model, nn.BatchNorm1d) == 0
    x = torch.rand(3, 1, 64, 64)
    assert model.decode(model.encode(x)[0]).shape == (3, 1, 64, 64)
    assert count(VAE((1, 64, 64), arch="conv64", batchnorm=True), nn.BatchNorm2d) == 7
    with pytest.raises(ValueError, match="conv64 arch takes 64x64 images; resize them with --image-size 64"):
        VAE((1, 28, 28), arch="conv64")


def test_softplus_posterior_variance():
    torch.manual_seed(0)
    model = VAE(latent_dim=3, posterior_variance="softplus")
    x = torch.rand(4, 1, 28, 28)
    h = model.encoder(x)
    mu, logvar = model.encode(x)
    torch.testing.assert_close(mu, h[:, :3])
    torch.testing.assert_close(logvar.exp(), torch.nn.functional.softplus(h[:, 3:]) + 1e-8)
    torch.testing.assert_close(VAE(latent_dim=3).posterior(h)[1], h[:, 3:])  # the default
    with pytest.raises(ValueError, match="posterior_variance='exp' is unknown"):
        VAE(posterior_variance="exp")


def test_hidden_widths_and_activation():
    model = VAE((1, 28, 28), latent_dim=2, hidden=(300, 100, 10), act="elu")
    widths = [m.out_features for m in model.encoder if isinstance(m, nn.Linear)]
    assert widths == [300, 100, 10, 4]  # last: mu and logvar of a 2-D latent
    widths = [m.out_features for m in model.decoder if isinstance(m, nn.Linear)]
    assert widths == [10, 100, 300, 784]
    assert any(isinstance(m, nn.ELU) for m in model.modules())
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())


def count(model, kind):
    return sum(isinstance(m, kind) for m in model.modules())


def test_batchnorm_defaults_and_switch():
    assert count(VAE(arch="mlp"), nn.BatchNorm1d) == 0
    assert count(VAE(arch="mlp", batchnorm=True), nn.BatchNorm1d) == 2
    assert count(VAE(arch="conv"), nn.BatchNorm2d) == 5  # 3 encoder + 2 decoder
    assert count(VAE(arch="conv", batchnorm=False), nn.BatchNorm2d) == 0


def test_dropout_only_in_the_encoder():
    model = VAE(arch="conv", dropout=0.3)
    assert count(model.encoder, nn.Dropout) == 3 and count(model.decoder, nn.Dropout) == 0
    assert count(VAE(arch="mlp"), nn.Dropout) == 0


def test_pytorch_examples_size():
    # 784-400-20: fc1 784x400, heads 400x40, fc3 20x400, fc4 400x784, with biases
    n = sum(p.numel() for p in VAE((1, 28, 28), latent_dim=20).parameters())
    assert n == (784 * 400 + 400) + (400 * 40 + 40) + (20 * 400 + 400) + (400 * 784 + 784)




# The model contract (models.py), checked on every registered model.
OPTIONS = {"vae": {"beta": 2.0}, "ae": {"sparsity": 0.1, "code": "relu", "contractive": 0.01},
           "vaegan": {"beta": 2.0}, "cvae": {"beta": 2.0},
           "btcvae": {"beta": 6.0, "mi_weight": 0.5, "kl_warmup": 2.0},
           "factorvae": {"gamma": 5.0, "disc_hidden": (16,)}, "pca": {},
           "vqvae": {"codebook": 8, "width": 8}}


@pytest.mark.parametrize("arch", ["mlp", "conv", "conv3x3"])
@pytest.mark.parametrize("name", [n for n in models.MODELS if n != "prior"])  # it needs a vqvae run: test_prior.py
def test_every_registered_model_follows_the_contract(name, arch):
    archs = models.MODELS[name].ARCHS
    if arch not in archs and (archs or arch != "mlp"):  # a model without archs runs once
        pytest.skip(f"{name} has no {arch} arch")
    torch.manual_seed(0)
    model = models.build(name, (1, 28, 28), 10, {"latent_dim": 4, **OPTIONS[name],
                                                 **({"arch": arch} if archs else {})})
    x, y = torch.rand(6, 1, 28, 28), torch.arange(6) % 10
    out = model.loss(x, x, y)
    assert all(v.dim() == 0 for v in out.values())
    weighted = sum(w * out[k] for k, w in model.term_weights.items() if w)
    torch.testing.assert_close(out["loss"], out["recon"] + weighted)  # the terms add up
    groups = model.parameter_groups()
    params = [p for ps in groups.values() for p in ps]
    assert len({id(p) for p in params}) == len(params) == len(list(model.parameters()))
    steps = model.objectives(out)
    assert (steps or not groups) and set(steps) <= set(groups)  # PCA: no groups, fitted, not stepped
    assert "loss" in model.test_loss(x, x, y)
    code = model.latent(x, y)
    size = 4 * 7 * 7 if name == "vqvae" else 4  # the VQ-VAE's code: a 7x7 grid of 4-d code vectors
    assert code.shape == (6, size) and model.generate(code, y).shape == x.shape
    draw = model.posterior_sample(x, y)  # a draw of q(z|x); the code itself without a posterior
    assert draw.shape == (6, size) and (torch.equal(draw, code) != bool(model.likelihood))
    assert model.reconstruct(x, y).shape == x.shape
    images = model.sample(5, labels=y[:5])  # None: no prior (AE, PCA)
    assert images is None or images.shape == (5, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
    assert (images is None) == (name in ("ae", "pca", "vqvae"))  # (the VQ-VAE's prior: prior.py)
    if model.likelihood:  # latent is the posterior mean, in evaluation mode
        model.eval()
        mu, logvar = model.encode(x, y)
        torch.testing.assert_close(model.latent(x, y), mu)
        assert logvar.shape == mu.shape and model.nll(model.decode(mu, y), x).shape == (6,)
        model.train()
    assert isinstance(model.LOSS, str) and model.LOSS  # what its test loss is, in words
    options = models.resolved(model)  # every option is an attribute, resolved
    assert set(options) == set(model.OPTIONS) and options["latent_dim"] == 4
    again = models.build(name, (1, 28, 28), 10, options)
    assert models.resolved(again) == options
    assert {k: v.shape for k, v in again.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", list(models.MODELS))
def test_figures_helpers_leave_batch_norm_statistics_and_modes_alone(name):
    if "batchnorm" not in models.MODELS[name].OPTIONS:
        pytest.skip(f"{name} has no batch norm")
    torch.manual_seed(0)
    model = models.build(name, (1, 28, 28), 10, {"latent_dim": 4, "batchnorm": True}).train()
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8) % 10
    before = {k: v.clone() for k, v in model.state_dict().items()}
    code = model.latent(x, y)
    model.generate(code, y), model.reconstruct(x, y)
    model.sample(8, labels=y)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(m.training for m in model.modules())
    model.loss(x, x, y)  # the training step itself does move them
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("cls,kwargs,words", [
    (VAE, {"hidden": 400}, "hidden=400 must be positive widths"),
    (VAE, {"act": "leakyrelu"}, "act='leakyrelu' is unknown"),
    (VAE, {"arch": "resnet"}, "arch='resnet' is unknown"),
    (VAE, {"dropout": 1.0}, "dropout=1.0 must be in [0, 1)"),
    (VAE, {"latent_dim": 0}, "latent_dim=0 must be an integer >= 1"),
    (VAE, {"arch": "conv", "hidden": (300,)}, "the conv arch's channels are fixed"),
    (VAE, {"output": "tanh", "recon": "bce"}, "recon='bce' needs output='sigmoid'"),
    (AE, {"output": "tanh", "recon": "bce"}, "recon='bce' needs output='sigmoid'"),
    (VAEGAN, {"output": "tanh", "recon": "bce"}, "recon='bce' needs output='sigmoid'"),
    (CVAE, {"output": "tanh", "recon": "bce"}, "recon='bce' needs output='sigmoid'"),
    (VAE, {"recon": "feature"}, "recon='feature' is unknown"),
    (AE, {"code": "tanh"}, "code='tanh' is unknown"),
    (AE, {"sparsity_target": 0.05}, "needs sparsity > 0"),
    (VAEGAN, {"margin": 0.3}, "give equilibrium too"),
    (VAEGAN, {"feature_layer": 1}, "give recon='feature' too"),
    (VAEGAN, {"gamma": 0}, "gamma=0 must be > 0"),
    (CVAE, {"num_classes": None}, "needs labelled data"),
])
def test_bad_constructor_arguments_say_which_in_the_constructors_words(cls, kwargs, words):
    with pytest.raises(ValueError) as e:
        cls((1, 28, 28), **kwargs)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_an_unknown_option_is_named_by_the_registry():
    with pytest.raises(ValueError, match="gamma: not an option of the vae model"):
        models.build("vae", (1, 28, 28), 10, {"gamma": 2.0})


def test_the_conditional_vae_samples_the_class_it_is_given():
    torch.manual_seed(0)
    model = CVAE((1, 28, 28), num_classes=10, latent_dim=4)
    z = torch.randn(3, 4)
    threes, sevens = model.generate(z, torch.full((3,), 3)), model.generate(z, torch.full((3,), 7))
    assert not torch.allclose(threes, sevens)  # same z, another label: another image
    torch.testing.assert_close(model.generate(z, torch.full((3,), 3)), threes)
    assert model.encoder[1].in_features == 784 + 10 and model.decoder[0].in_features == 4 + 10
    assert CVAE((3, 32, 32), arch="conv").encoder[0].in_channels == 3 + 10
    torch.manual_seed(1)
    default = model.sample(12)  # labels 0, 1, ..., 9, 0, 1
    torch.manual_seed(1)
    given = model.sample(12, labels=torch.arange(12) % 10)
    torch.testing.assert_close(default, given)
    x = torch.rand(3, 1, 28, 28)  # no labels: its default ones, 0, 1, 2
    torch.testing.assert_close(model.reconstruct(x), model.reconstruct(x, torch.arange(3)))
