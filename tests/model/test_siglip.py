"""The vision tower's own choices: the GELU form per dtype and the residual stream's layout."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from omnivision.model import siglip
from omnivision.model.siglip import SiglipEmbeddings, SiglipVisionTower


def test_gelu_is_the_exact_tanh_form_in_full_precision():
    x = torch.linspace(-8, 8, 10_001, dtype=torch.float64)
    assert torch.equal(siglip.gelu(x), F.gelu(x, approximate="tanh"))
    assert torch.equal(siglip.gelu(x.float()), F.gelu(x.float(), approximate="tanh"))


def test_gelu_in_bf16_stays_within_rounding_plus_5e4_of_the_tanh_form():
    x = torch.linspace(-8, 8, 100_001, dtype=torch.float32).bfloat16()
    exact = F.gelu(x.double(), approximate="tanh")
    got = siglip.gelu(x).double()
    half_ulp = torch.finfo(torch.bfloat16).eps / 2 * exact.abs()
    assert ((got - exact).abs() <= half_ulp + 5e-4).all()
    # and it is not simply the tanh form: the point of the switch is speed, measured elsewhere
    assert not torch.equal(siglip.gelu(x), F.gelu(x, approximate="tanh"))


def test_residual_stream_is_contiguous(tiny_config):
    # A channel-first residual stream costs a strided copy in every LayerNorm and residual add.
    emb = SiglipEmbeddings(tiny_config.vision)
    pixels = torch.randn(2, 3, tiny_config.vision.image_size, tiny_config.vision.image_size)
    assert emb(pixels).is_contiguous()


def test_bf16_tower_is_as_close_to_fp32_as_with_the_tanh_form(tiny_config, monkeypatch):
    torch.manual_seed(0)
    tower = SiglipVisionTower(tiny_config.vision).eval()
    with torch.no_grad():
        for m in tower.modules():  # pre-activations of a few units, where the two forms differ most
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(0, 2.5 / m.in_features ** 0.5)
                m.bias.normal_(0, 0.5)
    pixels = torch.randn(4, 3, tiny_config.vision.image_size, tiny_config.vision.image_size)
    with torch.no_grad():
        reference = tower(pixels).double()
        tower.bfloat16()
        ours = (tower(pixels.bfloat16()).double() - reference).abs().mean()
        monkeypatch.setattr(siglip, "gelu", lambda x: F.gelu(x, approximate="tanh"))
        tanh_form = (tower(pixels.bfloat16()).double() - reference).abs().mean()
    assert ours <= 1.1 * tanh_form
