import pytest
import torch
import torch.nn as nn

from vae import VAE

SHAPES = [(1, 28, 28), (3, 32, 32)]  # MNIST / Fashion-MNIST, CIFAR-10


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("arch", ["mlp", "conv"])
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


def test_bce_with_tanh_is_refused():
    with pytest.raises(ValueError, match="sigmoid"):
        VAE(output="tanh", recon="bce")
