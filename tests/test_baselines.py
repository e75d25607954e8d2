"""baselines.py: persistence exact, advection against pysteps and exact shifts, motion of moving fields."""
import numpy as np
import pytest
from scipy import ndimage

import baselines
import config


def rain_blobs(shape, seed):
    """Smooth rain-like field (mm/h): Gaussian-filtered noise, cut at a level, many zeros."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.normal(size=shape), 5)
    return np.clip(noise / noise.std() - 0.3, 0, None) ** 1.5 * 10


def moving_frames(velocity, n_frames, size=64, seed=0):
    """Frames of a rain field moving at a constant (vx, vy) pixels/step, cut from a larger field.

    Frame t is the big field shifted by t * velocity (cubic spline for sub-pixel shifts), so
    content at x is at x + t * v in frame t.
    """
    big = rain_blobs((3 * size, 3 * size), seed)
    frames = [ndimage.shift(big, (velocity[1] * t, velocity[0] * t), order=3, mode="constant")
              [size:2 * size, size:2 * size] for t in range(n_frames)]
    return np.clip(np.array(frames), 0, None)


# --------------------------------------------------------------------------- persistence
def test_persistence_repeats_the_last_frame():
    rng = np.random.default_rng(0)
    inputs = rng.random((4, 8, 9)).astype(np.float32)
    inputs[-1, 2, 3] = np.nan
    forecast = baselines.persistence(inputs, 5)
    assert forecast.shape == (5, 8, 9) and forecast.dtype == np.float32
    for lead in range(5):
        np.testing.assert_array_equal(forecast[lead], inputs[-1])  # NaN stays NaN
    batched = rng.random((2, 3, 4, 8, 9))
    forecast = baselines.persistence(batched, [6, 12])
    assert forecast.shape == (2, 3, 2, 8, 9)
    np.testing.assert_array_equal(forecast[1, 2, 1], batched[1, 2, -1])
    forecast[0, 0, 0, 0, 0] = -1.0
    assert batched[0, 0, -1, 0, 0] != -1.0  # a copy


def test_lead_list_and_get_method():
    assert baselines.lead_list(3) == [1, 2, 3]
    assert baselines.lead_list([2, 5]) == [2, 5]
    for bad in (0, [], [3, 2], [0, 1], [1, 1]):
        with pytest.raises(ValueError):
            baselines.lead_list(bad)
    assert baselines.get_method("persistence") is baselines.persistence
    with pytest.raises(config.UserError, match="unknown baseline method 'rover'"):
        baselines.get_method("rover")


# --------------------------------------------------------------------------- advection
def test_advect_integer_translation_is_an_exact_shift():
    field = rain_blobs((40, 50), 1)
    velocity = np.zeros((2, 40, 50))
    velocity[0], velocity[1] = 2.0, -1.0          # 2 columns right, 1 row up per step
    forecast = baselines.advect(field, velocity, [1, 3], fill_value=-9.0)
    np.testing.assert_allclose(forecast[0][:-1, 2:], field[1:, :-2], atol=1e-12)
    np.testing.assert_allclose(forecast[1][:-3, 6:], field[3:, :-6], atol=1e-12)
    # pixels whose departure point is outside the domain get fill_value
    assert np.all(forecast[1][:, :6] == -9.0) and np.all(forecast[1][-3:, :] == -9.0)


def test_advect_equals_pysteps_semilagrangian():
    semilagrangian = pytest.importorskip("pysteps.extrapolation.semilagrangian")
    H, W = 48, 56
    field = rain_blobs((H, W), 2)
    yy, xx = np.mgrid[0:H, 0:W].astype(float)
    # rotation about the centre plus a drift: curved trajectories
    velocity = np.stack([0.8 - 0.05 * (yy - H / 2), 0.3 + 0.05 * (xx - W / 2)])
    ours = baselines.advect(field, velocity, 6)
    theirs = semilagrangian.extrapolate(field, velocity, 6)
    both = np.isfinite(ours) & np.isfinite(theirs)
    assert both[-1].mean() > 0.7
    np.testing.assert_allclose(ours[both], theirs[both], rtol=1e-10, atol=1e-12)


def test_advect_nan_source_pixels():
    field = rain_blobs((30, 30), 3)
    field[10:14, 10:14] = np.nan
    velocity = np.zeros((2, 30, 30))
    velocity[0] = 1.0
    forecast = baselines.advect(field, velocity, [2])[0]
    assert np.all(np.isnan(forecast[10:14, 12:16]))         # moved with the flow
    np.testing.assert_allclose(forecast[10:14, 16:20], field[10:14, 14:18])
    assert np.isfinite(forecast[:, 2:]).sum() == 30 * 28 - 16


# --------------------------------------------------------------------------- motion and extrapolation
@pytest.mark.parametrize("velocity", [(1.0, 0.0), (0.6, -0.4), (-1.5, 2.0)])
def test_motion_field_of_a_translated_field(velocity):
    frames = moving_frames(velocity, 3, seed=4)
    motion = baselines.motion_field(frames)
    assert motion.shape == (2, 64, 64)
    inner = (slice(12, -12), slice(12, -12))
    wet = frames[-1][inner] > 0.1
    assert wet.mean() > 0.2
    for axis in (0, 1):
        error = np.abs(motion[axis][inner][wet] - velocity[axis])
        assert np.median(error) < 0.02 and np.percentile(error, 95) < 0.05, axis


@pytest.mark.parametrize("velocity", [(2.0, 1.0), (0.7, -0.3)])
def test_extrapolation_beats_persistence_on_a_moving_field(velocity):
    frames = moving_frames(velocity, 3 + 6, seed=5)
    inputs, truth = frames[:3], frames[3:]
    forecast = baselines.extrapolation(inputs, 6)
    persistence = baselines.persistence(inputs, 6)
    inner = (slice(None), slice(14, -14), slice(14, -14))
    error = np.sqrt(np.mean((forecast - truth)[inner] ** 2, axis=(1, 2)))
    persistence_error = np.sqrt(np.mean((persistence - truth)[inner] ** 2, axis=(1, 2)))
    assert np.all(np.isfinite(forecast[inner]))
    assert np.all(error < 0.15 * persistence_error), (error, persistence_error)
    assert error[0] < 0.05 * truth[0][inner[1:]].max()
    assert np.nanmin(forecast) >= 0


def test_extrapolation_with_a_coverage_gap_batches_and_dtype():
    velocity = (1.0, 0.5)
    frames = moving_frames(velocity, 3 + 4, seed=6).astype(np.float32)
    inputs, truth = frames[:3].copy(), frames[3:]
    inputs[:, 40:52, 5:20] = np.nan                      # outside radar coverage in every frame
    motion = baselines.motion_field(inputs)
    assert np.all(np.isfinite(motion))
    wet = (inputs[-1] > 0.1)[12:-12, 12:-12]
    assert np.median(motion[0][12:-12, 12:-12][wet]) == pytest.approx(1.0, abs=0.1)
    batch = np.stack([inputs, inputs])
    forecast = baselines.extrapolation(batch, [1, 4], fill_value=0.0)
    assert forecast.shape == (2, 2, 64, 64) and forecast.dtype == np.float32
    np.testing.assert_array_equal(forecast[0], forecast[1])
    lead4 = forecast[0, 1]
    # the gap moves with the flow (about 4 columns right, 2 rows down): NaN there, finite far away
    assert np.all(np.isnan(lead4[44:50, 12:22]))
    assert np.all(np.isfinite(lead4[:30])) and np.all(np.isfinite(lead4[:, 30:]))
    assert np.all(lead4[:30, 0] == 0.0)                   # came from outside the domain: fill_value
    inner = (slice(14, 36), slice(14, -14))
    assert np.sqrt(np.mean((lead4[inner] - truth[3][inner]) ** 2)) < 0.15 * np.sqrt(
        np.mean((inputs[-1][inner] - truth[3][inner]) ** 2))


def test_dry_and_missing_inputs():
    dry = np.zeros((3, 32, 32))
    assert np.all(baselines.motion_field(dry) == 0.0)
    np.testing.assert_array_equal(baselines.extrapolation(dry, 3), np.zeros((3, 32, 32)))
    frames = moving_frames((1.0, 0.0), 4, size=64, seed=7)
    frames[1] = np.nan                                    # a missing scan among the motion frames
    motion = baselines.motion_field(frames[:3])
    wet = frames[2][12:-12, 12:-12] > 0.1
    assert np.median(np.abs(motion[0][12:-12, 12:-12][wet] - 1.0)) < 0.05
