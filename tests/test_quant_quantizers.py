"""Fake quantizers: numerics against hand-computed values, straight-through gradients, calibration."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from gcompiler.errors import ConfigError, DataError
from gcompiler.quant.calibrate import calibrate
from gcompiler.quant.qmodules import QConv2d
from gcompiler.quant.quantizers import (ActFakeQuant, WeightFakeQuant, act_qrange, fake_quant_act, fake_quant_weight,
                                        weight_scale)


# ------------------------------------------------------------------------------------------------ numerics
def test_integer_ranges_and_8bit_scales():
    assert act_qrange(8, "unsigned") == (0, 255)
    assert act_qrange(8, "signed") == (-127, 127)
    assert act_qrange(4, "unsigned") == (0, 15)
    w = torch.tensor([0.5, -1.0, 0.25])
    assert weight_scale(w, 8, per_channel=False)[0].item() == pytest.approx(1 / 127)
    assert ActFakeQuant(8, "unsigned", 4.0).scale().item() == pytest.approx(4 / 255)
    assert ActFakeQuant(8, "signed", 4.0).scale().item() == pytest.approx(4 / 127)


def test_weight_per_tensor_2bit_hand_computed():
    # L = 1, s = max|w| = 1: w/s rounds half to even (0.5 -> 0, -0.5 -> -0), 0.75 -> 1.
    w = torch.tensor([0.5, -1.0, 0.75, -0.5, 0.25, 0.9])
    q = fake_quant_weight(w, 2)
    assert q.tolist() == [0.0, -1.0, 1.0, 0.0, 0.0, 1.0]


def test_weight_per_channel_vs_per_tensor_hand_computed():
    # conv weight [2, 1, 1, 2]; 3 bits, L = 3.
    w = torch.tensor([3.0, 1.0, -0.6, 0.2]).reshape(2, 1, 1, 2)
    per_ch = fake_quant_weight(w, 3, per_channel=True)  # s = [1, 0.2]: integers [3, 1], [-3, 1]
    assert torch.allclose(per_ch.reshape(-1), torch.tensor([3.0, 1.0, -0.6, 0.2]), atol=1e-6)
    per_t = fake_quant_weight(w, 3, per_channel=False)  # s = 1: -0.6 -> -1, 0.2 -> 0
    assert per_t.reshape(-1).tolist() == [3.0, 1.0, -1.0, 0.0]
    assert torch.allclose(weight_scale(w, 3, per_channel=True), torch.tensor([1.0, 0.2]))


def test_transposed_weight_quantizes_on_dim1():
    # ConvTranspose weight [C_in=2, C_out=2, 1, 1]; output channel 0 holds {1.0, 0.5}, channel 1 {-0.25, 0.5}.
    w = torch.tensor([[1.0, -0.25], [0.5, 0.5]]).reshape(2, 2, 1, 1)
    s = weight_scale(w, 2, per_channel=True, transposed=True)
    assert s.tolist() == [1.0, 0.5]
    q = fake_quant_weight(w, 2, per_channel=True, transposed=True)
    # channel 0 (s=1): 1 -> 1, 0.5 -> 0 (tie to even); channel 1 (s=0.5): -0.25 -> -0.5/.. -> 0, 0.5 -> 1 -> 0.5
    assert q.reshape(2, 2).tolist() == [[1.0, 0.0], [0.0, 0.5]]


def test_grouped_transposed_per_channel_scales():
    # groups=2, C_in=2, C_out=4: weight [2, 2, 1, 1]; output channel c = g*2 + j is w[g, j].
    w = torch.tensor([[1.0, -2.0], [4.0, 0.5]]).reshape(2, 2, 1, 1)
    s = weight_scale(w, 8, per_channel=True, transposed=True, groups=2)
    assert torch.allclose(s * 127, torch.tensor([1.0, 2.0, 4.0, 0.5]))


def test_unsigned_activation_hand_computed():
    x = torch.tensor([-1.0, 0.4, 0.5, 1.5, 2.6, 3.0, 5.0])
    q = fake_quant_act(x, 3.0, 2, "unsigned")  # L = 3, s = 1, integers [0, 3]
    assert q.tolist() == [0.0, 0.0, 0.0, 2.0, 3.0, 3.0, 3.0]


def test_signed_activation_hand_computed():
    x = torch.tensor([-5.0, -2.5, -0.5, 0.7, 3.5])
    q = fake_quant_act(x, 3.0, 3, "signed")  # L = 3, s = 1, integers [-3, 3]
    assert q.tolist() == [-3.0, -2.0, 0.0, 1.0, 3.0]


@given(st.integers(2, 16), st.sampled_from(["unsigned", "signed"]), st.floats(0.1, 20.0))
def test_activation_error_is_half_a_step_inside_the_range(bits, act_range, clip):
    x = torch.linspace(-clip, clip, 301, dtype=torch.float64)
    q = fake_quant_act(x, torch.tensor([clip], dtype=torch.float64), bits, act_range)
    qmin, qmax = act_qrange(bits, act_range)
    s = clip / qmax
    inside = (x >= qmin * s) & (x <= qmax * s)
    assert float((q - x)[inside].abs().max()) <= s / 2 + 1e-12
    assert float(q.max()) <= clip + 1e-9 and float(q.min()) >= (-clip if act_range == "signed" else 0.0) - 1e-9


def test_bad_bits_and_ranges_are_clear_errors():
    with pytest.raises(ConfigError, match="bits"):
        WeightFakeQuant(1)
    with pytest.raises(ConfigError, match="bits"):
        ActFakeQuant(17)
    with pytest.raises(ConfigError, match="act_range"):
        ActFakeQuant(8, "both")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="clip"):
        ActFakeQuant(8, "unsigned", -1.0)


# ------------------------------------------------------------------------------------------------ gradients
def test_weight_ste_gradient_is_identity():
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    g = torch.randn(4, 3, 3, 3)
    fake_quant_weight(w, 4, per_channel=True).backward(g)
    assert torch.equal(w.grad, g)


def test_unsigned_activation_gradients_hand_computed():
    x = torch.tensor([-1.0, 0.4, 0.5, 1.5, 2.6, 3.0, 5.0], requires_grad=True)
    clip = torch.tensor([3.0], requires_grad=True)
    g = torch.arange(1.0, 8.0)
    fake_quant_act(x, clip, 2, "unsigned", learn_clip=True).backward(g)
    # dq/dx: 1 inside [0, 3] (3.0 included), 0 outside
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0]
    # dq/dclip: (round(z)-z)/3 inside, 1 above, 0 below:
    # 2*(-0.4) + 3*(-0.5) + 4*(0.5) + 5*(0.4) + 6*0 over 3, plus 7*1
    assert clip.grad.item() == pytest.approx((-0.8 - 1.5 + 2.0 + 2.0) / 3 + 7.0, abs=1e-6)


def test_signed_activation_gradients_hand_computed():
    x = torch.tensor([-5.0, -2.5, -0.5, 0.7, 3.5], requires_grad=True)
    clip = torch.tensor([3.0], requires_grad=True)
    fake_quant_act(x, clip, 3, "signed", learn_clip=True).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
    # below: -1; -2.5: (-2 + 2.5)/3; -0.5: (0 + 0.5)/3; 0.7: (1 - 0.7)/3; above: +1
    assert clip.grad.item() == pytest.approx(-1 + 0.5 / 3 + 0.5 / 3 + 0.3 / 3 + 1, abs=1e-6)


def _surrogate(x: torch.Tensor, clip: torch.Tensor, bits: int, act_range: str) -> torch.Tensor:
    """The STE written with the detach trick: autograd of this is the gradient the brief specifies."""
    qmin, qmax = act_qrange(bits, act_range)  # type: ignore[arg-type]
    s = clip / qmax
    z = torch.clamp(x / s, qmin, qmax)  # the clip decides the x-gradient mask (BRIEF: 1 inside, 0 outside)
    return (z + (torch.round(z) - z).detach()) * s


@given(st.integers(2, 8), st.sampled_from(["unsigned", "signed"]), st.floats(0.5, 6.0), st.integers(0, 2**16))
def test_activation_gradients_match_the_autograd_surrogate(bits, act_range, clip_value, seed):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(200, generator=gen, dtype=torch.float64) * clip_value
    g = torch.randn(200, generator=gen, dtype=torch.float64)
    grads = []
    for fn in (lambda x, c: fake_quant_act(x, c, bits, act_range, learn_clip=True),
               lambda x, c: _surrogate(x, c, bits, act_range)):
        x = x0.clone().requires_grad_()
        c = torch.tensor([clip_value], dtype=torch.float64, requires_grad=True)
        out = fn(x, c)
        out.backward(g)
        grads.append((out.detach(), x.grad, c.grad))
    (o1, gx1, gc1), (o2, gx2, gc2) = grads
    assert torch.allclose(o1, o2, atol=1e-12)
    assert torch.allclose(gx1, gx2)
    assert torch.allclose(gc1, gc2, atol=1e-9)


def test_clip_gradcheck_in_the_clipped_region():
    # Where every input is clipped the output is +-clip exactly, a smooth function of clip: gradcheck applies.
    x = torch.tensor([5.0, 7.0, -6.0, -9.0], dtype=torch.float64)
    for act_range in ("unsigned", "signed"):
        clip = torch.tensor([3.0], dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda c: fake_quant_act(x, c, 4, act_range, learn_clip=True), (clip,))


def test_module_learn_clip_is_a_parameter_and_trains():
    q = ActFakeQuant(4, "unsigned", 1.0, learn_clip=True)
    assert isinstance(q.clip, nn.Parameter)
    x = torch.rand(1000) * 3  # most values above the clip: the loss pulls the clip up
    opt = torch.optim.SGD(q.parameters(), lr=0.2)
    for _ in range(20):
        opt.zero_grad()
        ((q(x) - x) ** 2).mean().backward()
        opt.step()
    assert q.clip.item() > 2.0
    assert not isinstance(ActFakeQuant(4).clip, nn.Parameter)


# ------------------------------------------------------------------------------------------------ calibration
def _net_with_two_quantized_convs() -> nn.Sequential:
    torch.manual_seed(0)
    a = nn.Conv2d(3, 4, 3, padding=1)
    b = nn.Conv2d(4, 2, 3, padding=1)
    qa = QConv2d.from_float(a, weight_bits=8, act_bits=8, act_range="signed", act_clip=1.0)
    qb = QConv2d.from_float(b, weight_bits=8, act_bits=8, act_range="unsigned", act_clip=1.0)
    return nn.Sequential(qa, nn.ReLU(), qb)


def test_calibrate_minmax_sets_clip_to_the_observed_maximum():
    net = _net_with_two_quantized_convs()
    batches = [torch.randn(2, 3, 8, 8) for _ in range(3)]
    clips = calibrate(net, batches, method="minmax")
    with torch.no_grad():
        # the first layer's weight stays fake-quantized while calibrating (only activations pass through)
        h = [torch.relu(torch.nn.functional.conv2d(b, net[0].quantized_weight(), net[0].bias, padding=1))
             for b in batches]
    assert clips["0.input_quant"] == pytest.approx(max(float(b.abs().max()) for b in batches), rel=1e-6)
    assert clips["2.input_quant"] == pytest.approx(max(float(t.max()) for t in h), rel=1e-6)
    assert net[0].input_quant.observer is None  # quantizing again after calibration
    x = batches[0]
    assert not torch.equal(net[0].input_quant(x), x)


def test_calibrate_percentile_matches_torch_quantile():
    net = _net_with_two_quantized_convs()
    batches = [torch.randn(1, 3, 8, 8) for _ in range(2)]
    clips = calibrate(net, batches, method="percentile", percentile=90.0)
    vals = torch.cat([b.abs().reshape(-1) for b in batches])
    assert clips["0.input_quant"] == pytest.approx(float(torch.quantile(vals, 0.9)), rel=1e-6)
    assert clips["0.input_quant"] < float(vals.max())


def test_calibrate_errors():
    net = _net_with_two_quantized_convs()
    with pytest.raises(DataError):
        calibrate(net, [])
    with pytest.raises(ConfigError, match="method"):
        calibrate(net, [torch.randn(1, 3, 8, 8)], method="mse")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="insert-fake-quant"):
        calibrate(nn.Conv2d(3, 3, 1), [torch.randn(1, 3, 8, 8)])
