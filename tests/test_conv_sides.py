"""The conv networks at any side of 4 times a power of two (16, 64, 128, ...), the refusal naming the flag,
and the 28- and 32-pixel networks unchanged."""
import json
import os

import pytest
import torch
from PIL import Image

import nets
import train
import vae
import vaegan
from conftest import one_line
from test_own_data import SMALL, write_folder


@pytest.mark.parametrize("cls", [vae.VAE, vaegan.VAEGAN])
@pytest.mark.parametrize("side", [16, 64, 128])
def test_conv_networks_take_any_side_of_4_times_a_power_of_two(cls, side):
    model = cls((3, side, side), arch="conv", latent_dim=4)
    x = torch.rand(2, 3, side, side)
    assert model.reconstruct(x).shape == x.shape
    assert model.generate(torch.zeros(2, 4)).shape == x.shape
    assert len(nets.conv_kernels((3, side, side))) == {16: 2, 64: 4, 128: 5}[side]


def test_conv_refuses_a_side_it_cannot_halve_to_4_and_names_the_flag(tmp_path, capsys):
    assert train.main(["--arch", "conv", "--image-size", "48", "--out", str(tmp_path / "r"),
                       "--data-root", str(tmp_path / "none"), *SMALL]) == 2
    one_line(capsys.readouterr().err, "4 * 2^k", "--image-size", "--arch mlp")


@pytest.mark.parametrize("model", ["vae", "vaegan"])
def test_a_conv_model_trains_on_a_64_pixel_folder_end_to_end(tmp_path, capsys, model):
    root, out = str(tmp_path / "pics"), str(tmp_path / "run")
    write_folder(root, "classes", sizes=((70, 80), (64, 64)))
    assert train.main(["--model", model, "--dataset", f"folder:{root}", "--image-size", "64",
                       "--arch", "conv", "--out", out, *SMALL]) == 0
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["image_shape"] == [3, 64, 64] and cfg["classes"] == ["cat", "dog"]
    assert Image.open(os.path.join(out, "training_samples.png")).size[0] > 64 * 8


def test_28_and_32_pixel_conv_networks_are_those_of_before():
    """The parameter counts of the conv networks before any size was allowed (2026-11-21)."""
    import ae
    counts = {(cls.__name__, shape): sum(p.numel() for p in cls(shape, arch="conv").parameters())
              for cls in (vae.VAE, vaegan.VAEGAN, ae.AE) for shape in ((1, 28, 28), (3, 32, 32))}
    assert counts == {("VAE", (1, 28, 28)): 339945, ("VAE", (3, 32, 32)): 456683,
                      ("VAEGAN", (1, 28, 28)): 1546346, ("VAEGAN", (3, 32, 32)): 2240620,
                      ("AE", (1, 28, 28)): 298965, ("AE", (3, 32, 32)): 415703}
