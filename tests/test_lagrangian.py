"""lagrangian.py: the torch semi-Lagrangian scheme against baselines.advect, warping, augmentation."""
import numpy as np
import pytest
import torch

import baselines
import lagrangian


def rain_field(shape=(40, 52), seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    field = sum(rng.uniform(2, 20) * np.exp(-((yy - rng.uniform(0, shape[0])) ** 2 + (xx - rng.uniform(0, shape[1])) ** 2)
                                             / (2 * rng.uniform(2, 6) ** 2)) for _ in range(6))
    return field


def curved_motion(shape=(40, 52)):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    return np.stack([1.3 + 0.4 * np.sin(yy / 9.0), -0.7 + 0.3 * np.cos(xx / 11.0)])


def test_advect_equals_baselines_advect_on_a_curved_flow():
    field, motion = rain_field(), curved_motion()
    leads = [1, 2, 5, 12]
    expected = baselines.advect(field, motion, leads, fill_value=0.0)
    got = lagrangian.advect(torch.from_numpy(field)[None, None], torch.from_numpy(motion)[None], leads)
    np.testing.assert_allclose(got[0, :, 0].numpy(), expected, atol=1e-9)
    # the departure points that left the domain are exactly where baselines fills in
    steps = lagrangian.trajectories(torch.from_numpy(motion)[None], 12)
    outside = ~steps[11].inside[0, 0].numpy()
    assert outside.any() and np.all(baselines.advect(field, motion, [12], fill_value=-1.0)[0][outside] == -1.0)


def test_zero_motion_is_the_identity_and_gradients_flow():
    field = torch.from_numpy(rain_field()).float()[None, None].requires_grad_()
    out = lagrangian.advect(field, torch.zeros(1, 2, 40, 52), [1, 3])
    torch.testing.assert_close(out[0, 0], field[0], rtol=1e-6, atol=1e-6)  # float32 grid arithmetic
    torch.testing.assert_close(out[0, 1], field[0], rtol=1e-6, atol=1e-6)
    motion = torch.from_numpy(curved_motion()).float()[None].requires_grad_()
    lagrangian.advect(field, motion, [2]).sum().backward()
    assert torch.isfinite(field.grad).all() and field.grad.abs().sum() > 0 and motion.grad.abs().sum() > 0


@pytest.mark.parametrize("turns, flip", [(1, False), (2, False), (3, False), (0, True), (1, True), (3, True)])
def test_turned_field_with_turned_motion_advects_to_the_turned_forecast(turns, flip):
    field, motion = rain_field((36, 36)), curved_motion((36, 36))
    forecast = baselines.advect(field, motion, [4], fill_value=0.0)[0]
    turned_field, turned_motion = lagrangian.rotate_flip(field, motion, turns, flip)
    expected, _ = lagrangian.rotate_flip(forecast, None, turns, flip)
    np.testing.assert_allclose(baselines.advect(turned_field, turned_motion, [4], fill_value=0.0)[0], expected,
                               atol=1e-9)
    if turns or flip:  # the premise: turning the field alone would not do
        assert not np.allclose(baselines.advect(turned_field, motion, [4], fill_value=0.0)[0], expected, atol=1e-3)
