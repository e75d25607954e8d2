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


# --------------------------------------------------------------------------- smoothing
def test_discrete_gaussian_kernels_are_the_bessel_kernels():
    """exp(-v) I_n(v) (scipy.special.ive): sums to 1, variance v, the identity at v = 0."""
    from scipy.special import ive
    variance = torch.tensor([0.0, 0.3, 4.0, 50.0, 256.0], dtype=torch.float64)
    kernels = lagrangian.gaussian_kernels(variance, 64).numpy()
    n = np.arange(-64, 65)
    for v, kernel in zip(variance.numpy(), kernels):
        np.testing.assert_allclose(kernel, ive(np.abs(n), v), rtol=2e-4, atol=1e-12)  # cut at 4 sigma
        assert kernel.sum() == pytest.approx(1.0, abs=1e-12)
        assert (kernel * n ** 2).sum() == pytest.approx(v, abs=1e-3 * max(v, 1.0))
    np.testing.assert_allclose(kernels[0], n == 0, atol=1e-14)


def test_smoothing_equals_scipy_filtering_and_keeps_the_rain_mass():
    from scipy.ndimage import correlate1d
    from scipy.special import ive
    field = rain_field(shape=(60, 70))
    variance = torch.tensor([0.0, 2.0, 30.0], dtype=torch.float64)
    got = lagrangian.smooth(torch.from_numpy(field).expand(1, 3, 60, 70), lagrangian.gaussian_kernels(variance, 24))
    for i, v in enumerate(variance.numpy()):
        kernel = ive(np.abs(np.arange(-24, 25)), v)
        kernel /= kernel.sum()
        expected = correlate1d(correlate1d(field, kernel, axis=0, mode="nearest"), kernel, axis=1, mode="nearest")
        np.testing.assert_allclose(got[0, i].numpy(), expected, atol=1e-9)
    blob = np.zeros((60, 70))
    blob[25:35, 30:38] = 7.0  # far from the edges: nothing leaves the frame
    moved = lagrangian.smooth(torch.from_numpy(blob).expand(1, 3, 60, 70), lagrangian.gaussian_kernels(variance, 24))
    np.testing.assert_allclose(moved.sum(dim=(-2, -1))[0].numpy(), blob.sum(), rtol=1e-6)
    assert moved[0, 2].max() < 0.5 * blob.max()  # and it did spread


def test_smoothing_width_has_a_gradient_at_zero():
    """A width that starts at "no smoothing" can be learned: the loss has a nonzero derivative there."""
    variance = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    target = torch.from_numpy(rain_field())
    field = torch.from_numpy(rain_field(seed=1)).expand(1, 2, *target.shape)
    loss = ((lagrangian.smooth(field, lagrangian.gaussian_kernels(variance, 8)) - target) ** 2).sum()
    loss.backward()
    assert (variance.grad.abs() > 1e-3).all()
