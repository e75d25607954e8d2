"""Constraint layers and networks of downscaling_models.py (seed 003), checked against numpy formulas."""
import numpy as np
import pytest
import torch

import downscaling_models as dm
from config import UserError


def block_mean_np(a, f):
    """Independent block mean in float64: (..., H, W) -> (..., H/f, W/f)."""
    a = np.asarray(a, dtype=np.float64)
    return a.reshape(*a.shape[:-2], a.shape[-2] // f, f, a.shape[-1] // f, f).mean(axis=(-3, -1))


def up_np(x, f):
    return np.repeat(np.repeat(np.asarray(x, dtype=np.float64), f, -2), f, -1)


def random_case(f, seed, scale=5.0, size=32):
    rng = np.random.default_rng(seed)
    y = torch.tensor(rng.normal(0, scale, (3, 2, size, size)), dtype=torch.float32, requires_grad=True)
    x = rng.uniform(0, 1, (3, 2, size // f, size // f))
    x[0, 0, 0, 0] = 0.0  # a dry block
    return y, torch.tensor(x, dtype=torch.float32)


@pytest.mark.parametrize("factor", [2, 4, 8])
@pytest.mark.parametrize("name", dm.HARD_CONSTRAINTS)
def test_hard_constraints_conserve_the_block_mean_with_finite_gradients(name, factor):
    for seed in range(3):
        y, x = random_case(factor, seed)
        out = dm.apply_constraint(name, y, x, factor)
        error = np.abs(block_mean_np(out.detach(), factor) - x.numpy())
        size = np.maximum(np.abs(x.numpy()), block_mean_np(np.abs(out.detach().numpy()), factor))
        assert np.all(error <= 1e-5 * size + 1e-12), (name, factor, error.max())
        weights = torch.randn_like(out)
        (out * weights).sum().backward()
        assert torch.isfinite(y.grad).all()


def test_layers_are_the_stated_formulas():
    f = 4
    y, x = random_case(f, 7, scale=2.0)
    yn, xn = y.detach().double().numpy(), x.double().numpy()
    add = yn + up_np(xn - block_mean_np(yn, f), f)
    assert np.allclose(dm.apply_constraint("add", y, x, f).detach(), add, atol=1e-5)
    e = np.exp(yn)
    softmax = e / up_np(block_mean_np(e, f) * f * f, f) * up_np(f * f * xn, f)
    assert np.allclose(dm.apply_constraint("softmax", y, x, f).detach(), softmax, rtol=1e-5, atol=1e-7)
    s = np.log1p(np.exp(yn)) + dm.MULT_FLOOR
    assert np.allclose(dm.apply_constraint("mult", y, x, f).detach(), s * up_np(xn / block_mean_np(s, f), f),
                       rtol=1e-5, atol=1e-7)
    # scadd for LR inside the training range [0, 1]: the seed's formula y + d (sigma + y) / (sigma + mean)
    d = xn - block_mean_np(yn, f)
    sigma = np.sign(-d)
    seed_formula = yn + up_np(d, f) * (up_np(sigma, f) + yn) / up_np(sigma + block_mean_np(yn, f), f)
    assert np.allclose(dm.apply_constraint("scadd", y, x, f).detach(), seed_formula, rtol=1e-5, atol=1e-5)
    assert dm.apply_constraint("none", y, x, f) is y and dm.apply_constraint("soft", y, x, f) is y


def test_scadd_stays_exact_outside_the_training_range():
    y = torch.full((1, 1, 4, 4), 1.0)
    y[0, 0, 0, 0] = 1.0 + 1e-7  # block mean ~1: sigma + mean ~ 0 for the seed's formula when x > 1
    x = torch.tensor([[[[3.0, 2.0], [-2.0, 1.0]]]])
    out = dm.apply_constraint("scadd", y, x, 2)
    assert torch.isfinite(out).all()
    assert np.allclose(block_mean_np(out, 2), x.numpy(), rtol=1e-6, atol=1e-6)


def test_softmax_is_non_negative_even_for_extreme_outputs():
    y = torch.tensor(np.random.default_rng(0).normal(0, 300, (2, 1, 16, 16)), dtype=torch.float32)
    x = torch.rand(2, 1, 4, 4)
    x[0, 0, 1, 1] = 0.0
    out = dm.apply_constraint("softmax", y, x, 4)
    assert torch.isfinite(out).all() and (out >= 0).all()
    assert np.allclose(block_mean_np(out, 4), x.numpy(), rtol=1e-5, atol=1e-7)
    assert (out.reshape(2, 1, 4, 4, 4, 4)[0, 0, 1, :, 1, :] == 0).all()  # a dry LR pixel stays dry


def test_constraint_is_float32_under_bf16_autocast():
    y = torch.randn(2, 1, 16, 16).bfloat16()
    x = torch.rand(2, 1, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = dm.apply_constraint("softmax", y, x, 4)
    assert out.dtype == torch.float32
    assert np.allclose(block_mean_np(out, 4), x.numpy(), rtol=1e-6)


@pytest.mark.parametrize("factor", [2, 4, 8])
@pytest.mark.parametrize("name", list(dm.MODELS))
def test_every_model_has_the_right_shape_at_every_factor(name, factor):
    torch.manual_seed(0)
    model = dm.get_model(name, upsampling_factor=factor, constraints="add", number_channels=4,
                         number_residual_blocks=1)
    frames = 3 if "gru" in name else 1
    x = torch.rand(2, frames, 1, 32 // factor, 32 // factor)
    out = model(x)
    assert out.shape == (2, frames, 1, 32, 32)
    if name != "flowconvgru":  # its middle frame is conserved against the interpolated LR frame
        assert np.allclose(block_mean_np(out.detach(), factor), x.numpy(), atol=1e-6)
    else:
        assert np.allclose(block_mean_np(out.detach()[:, ::2], factor), x.numpy()[:, ::2], atol=1e-6)
        assert np.allclose(block_mean_np(out.detach()[:, 1], factor), model.last_lr[:, 1].detach(), atol=1e-6)


def test_single_frame_convgru_and_a_temporal_cnn():
    convgru = dm.get_model("convgru", number_channels=4, number_residual_blocks=1)
    assert convgru(torch.rand(3, 1, 1, 8, 8)).shape == (3, 1, 1, 32, 32)
    cnn = dm.get_model("cnn", number_channels=4, number_residual_blocks=1)
    x = torch.rand(2, 3, 1, 8, 8)
    out = cnn(x)
    assert torch.allclose(out[:, 1], cnn(x[:, 1:2])[:, 0], atol=1e-6)  # frames are independent


def test_gan_generator_uses_its_noise():
    gan = dm.get_model("gan", number_channels=4, number_residual_blocks=1)
    x = torch.rand(2, 1, 1, 8, 8)
    noise = torch.randn(2, 1, 8, 8)
    assert torch.equal(gan(x, noise), gan(x, noise))
    assert not torch.equal(gan(x, noise), gan(x, noise + 1))
    assert dm.Discriminator(number_channels=4)(torch.rand(2, 1, 1, 32, 32)).shape == (2, 1)


def test_flowconvgru_middle_frame_equals_the_input_for_equal_frames():
    torch.manual_seed(1)
    model = dm.get_model("flowconvgru", number_channels=4, number_residual_blocks=1)
    frame = torch.rand(2, 1, 16, 16)
    other = torch.roll(frame, 2, dims=-1)
    assert torch.allclose(model.interpolate(frame, other), (frame + other) / 2, atol=1e-6)  # untrained: the mean
    with torch.no_grad():
        for p in model.interpolation.parameters():
            p.add_(0.1 * torch.randn_like(p))  # any weights: equal frames still come back exactly
    assert torch.equal(model.interpolate(frame, frame), frame)
    middle = model.interpolate(frame, other)
    assert not torch.allclose(middle, (frame + other) / 2, atol=1e-3) and torch.isfinite(middle).all()


def test_warp_shifts_by_whole_pixels():
    image = torch.arange(16.0).reshape(1, 1, 4, 4)
    flow = torch.zeros(1, 2, 4, 4)
    flow[:, 0] = 1.0  # sample one column to the right
    out = dm.warp(image, flow)
    assert torch.equal(out[0, 0, :, :3], image[0, 0, :, 1:])
    assert torch.equal(out[0, 0, :, 3], image[0, 0, :, 3])  # border clamped


def test_bad_factor_and_constraint_are_user_errors():
    with pytest.raises(UserError, match="power of two"):
        dm.get_model("cnn", upsampling_factor=3)
    with pytest.raises(UserError, match="constraints"):
        dm.get_model("cnn", constraints="hard")
    with pytest.raises(UserError, match="model"):
        dm.get_model("unet")
