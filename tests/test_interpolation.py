"""Gap-filling kernels: stage 1 on hand cases, stage 2 (separable) against the brute-force oracle
and against hand-computed weighted means."""
import numpy as np
import pytest

from interpolation import (MIN_WEIGHT_SUM, fill_gaussian, fill_gaussian_bruteforce, fill_time_linear,
                           gaussian_weights)

NAN = np.nan


# --------------------------------------------------------------------------- stage 1
def series_stack(*series):
    """Stack 1-D series (T,) as pixels of a (T, 1, N) float32 array."""
    return np.ascontiguousarray(np.array(series, dtype=np.float32).T[:, None, :])


def test_time_linear_hand_cases():
    stack = series_stack(
        [0, NAN, NAN, 3, 3, 3, 3, 3],          # run of 2 = max_gap: filled 1, 2
        [10, NAN, NAN, NAN, 40, 40, 40, 40],   # run of 3 > max_gap: left
        [NAN, NAN, 5, 6, 7, 8, 9, 10],         # touches the first day: left
        [1, 2, 3, 4, 5, 6, NAN, NAN],          # touches the last day: left
        [1, NAN, 2, NAN, NAN, 8, NAN, 7],      # several short runs
    )
    filled = fill_time_linear(stack, 2)
    expected = series_stack(
        [0, 1, 2, 3, 3, 3, 3, 3],
        [10, NAN, NAN, NAN, 40, 40, 40, 40],
        [NAN, NAN, 5, 6, 7, 8, 9, 10],
        [1, 2, 3, 4, 5, 6, NAN, NAN],
        [1, 1.5, 2, 4, 6, 8, 7.5, 7],
    )
    np.testing.assert_array_equal(stack, expected)
    np.testing.assert_array_equal(filled, np.isnan(series_stack(
        [0, NAN, NAN, 3, 3, 3, 3, 3], [1] * 8, [1] * 8, [1] * 8, [1, NAN, 2, NAN, NAN, 8, NAN, 7])))


def test_time_linear_longest_run_and_zero_gap():
    stack = series_stack([10, NAN, NAN, NAN, NAN, NAN, 40], [10, NAN, NAN, NAN, NAN, NAN, 40])
    untouched = stack.copy()
    assert not fill_time_linear(untouched, 0).any()  # max_gap 0 fills nothing
    assert np.isnan(untouched).sum() == 10
    assert not fill_time_linear(untouched, 4).any()  # run of 5 > 4
    fill_time_linear(stack, 5)
    np.testing.assert_allclose(stack[:, 0, 0], [10, 15, 20, 25, 30, 35, 40], rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- stage 2 by hand
def test_gaussian_hand_computed_space():
    values = np.array([[[10, 20, 30], [40, NAN, 60], [70, 80, NAN]]], np.float32)  # (1, 3, 3)
    sigma = 1.3
    # the centre: 7 valid neighbours, w = exp(-(dy^2 + dx^2) / (2 sigma^2))
    edge, corner = np.exp(-1 / (2 * sigma ** 2)), np.exp(-2 / (2 * sigma ** 2))
    centre = (edge * (20 + 40 + 60 + 80) + corner * (10 + 30 + 70)) / (4 * edge + 3 * corner)
    for fill in (fill_gaussian, fill_gaussian_bruteforce):
        out, no_neighbour = fill(values, None, None, 0, 1, 1.0, sigma)
        assert out[0, 1, 1] == pytest.approx(centre, rel=1e-6)
        assert out[0, 2, 2] == pytest.approx(70.0, rel=1e-6)  # 60 and 80 at d = 1; the centre is missing
        assert out[0, 0, 0] == 10 and not no_neighbour.any()


def test_gaussian_hand_computed_time():
    values = np.full((5, 1, 1), NAN, np.float32)
    values[0, 0, 0], values[3, 0, 0] = 10.0, 40.0  # missing at 1, 2 and 4 (stage 2 alone)
    alpha, sigma = 2.0, 1.5
    w = lambda dt: np.exp(-alpha * dt ** 2 / (2 * sigma ** 2))  # noqa: E731
    for fill in (fill_gaussian, fill_gaussian_bruteforce):
        out, _ = fill(values, None, None, 2, 3, alpha, sigma)
        assert out[1, 0, 0] == pytest.approx((w(1) * 10 + w(2) * 40) / (w(1) + w(2)), rel=1e-6)
        assert out[2, 0, 0] == pytest.approx((w(2) * 10 + w(1) * 40) / (w(2) + w(1)), rel=1e-6)
        assert out[4, 0, 0] == pytest.approx(40.0, rel=1e-6)  # frame 0 is 4 days away: outside the window


def test_no_neighbour_gives_zero_and_underflow_is_exact():
    """sigma 0.3: weight exp(-d^2 / 0.18); d = 3 gives 2e-22 < 1e-9 (no neighbour),
    d = 1 gives 4e-3, and d = 10 (1e-241, far below 1e-9 but not 0) must not disturb the mean."""
    values = np.full((1, 1, 25), NAN, np.float32)
    values[0, 0, 0] = 50.0   # pixel 3 has it at d = 3 only
    values[0, 0, 12] = 70.0  # pixel 13 has it at d = 1 and pixel 23 (77.0) at d = 10
    values[0, 0, 23] = 77.0
    for fill in (fill_gaussian, fill_gaussian_bruteforce):
        out, no_neighbour = fill(values, None, None, 0, 10, 1.0, 0.3)
        assert no_neighbour[0, 0, 3] and out[0, 0, 3] == 0.0
        assert not no_neighbour[0, 0, 13]
        assert out[0, 0, 13] == pytest.approx(70.0, abs=1e-5)
        assert no_neighbour[0, 0, 18] and out[0, 0, 18] == 0.0  # 5 from both
    assert gaussian_weights(10, 0.3)[10] > 0 and MIN_WEIGHT_SUM == 1e-9


# --------------------------------------------------------------------------- stage 2 vs the oracle
def random_stack(rng, shape=(8, 30, 26), missing=0.55):
    """Smooth-ish % field with blob and salt gaps (float32, NaN = missing)."""
    n_t, n_y, n_x = shape
    yy, xx = np.mgrid[0:n_y, 0:n_x]
    values = np.empty(shape, np.float32)
    for t in range(n_t):
        phase = rng.uniform(0, 2 * np.pi, 2)
        values[t] = 50 + 40 * np.sin(yy / 5 + phase[0]) * np.cos(xx / 7 + phase[1]) + rng.normal(0, 3, (n_y, n_x))
        for _ in range(3):  # blobs of missing pixels
            cy, cx, r = rng.uniform(0, n_y), rng.uniform(0, n_x), rng.uniform(2, 7)
            values[t][(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = NAN
    values[rng.random(shape) < missing * 0.6] = NAN
    return values


PARAMETER_SETS = [  # time_window, space_window, alpha, sigma
    (3, 10, 25.0, 5.0),    # the defaults
    (2, 4, 100.0, 0.5),    # small sigma, large alpha
    (1, 6, 0.0, 0.3),      # time weight 1, spatial weights underflow beyond d = 8
    (0, 3, 1.0, 2.0),      # space only
    (4, 2, 1000.0, 1.5),   # time neighbours negligible but present
]


@pytest.mark.parametrize("time_window, space_window, alpha, sigma", PARAMETER_SETS)
def test_separable_equals_bruteforce(time_window, space_window, alpha, sigma):
    rng = np.random.default_rng([time_window, space_window, int(alpha), int(10 * sigma)])
    values = random_stack(rng)
    fast, fast_none = fill_gaussian(values, None, None, time_window, space_window, alpha, sigma)
    slow, slow_none = fill_gaussian_bruteforce(values, None, None, time_window, space_window, alpha, sigma)
    missing = np.isnan(values)
    assert missing.sum() > 1000 and not np.isnan(fast).any() and not np.isnan(slow).any()
    # the same decision (sum(w) < 1e-9) everywhere; a sum within ~1e-15 of the threshold could
    # differ, which random data with these parameters does not produce (see interpolation.py)
    np.testing.assert_array_equal(fast_none, slow_none)
    np.testing.assert_array_equal(fast[~missing], values[~missing])  # observed pixels untouched
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-3)  # 1e-3 % = 1e-5 as a fraction
    assert (missing & ~fast_none).sum() > 500  # many pixels filled with a value
    if sigma < 1:
        assert fast_none.sum() > 10  # the small-sigma sets exercise "no neighbour" (sum(w) < 1e-9)


def test_masks_land_never_used_and_never_filled():
    rng = np.random.default_rng(5)
    values = random_stack(rng, (6, 28, 24))
    yy, xx = np.mgrid[0:28, 0:24]
    land = (yy - 20) ** 2 + (xx - 6) ** 2 < 40
    values[:, land] = 1e4  # observed but land: must never be used
    values[:, land & (xx < 5)] = NAN  # and some land is NaN: must not be filled
    args = (2, 5, 25.0, 3.0)
    fast, fast_none = fill_gaussian(values, ~land, ~land, *args)
    slow, slow_none = fill_gaussian_bruteforce(values, ~land, ~land, *args)
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-3, equal_nan=True)
    np.testing.assert_array_equal(fast_none, slow_none)
    # the same as if land were NaN in the input
    as_nan = values.copy()
    as_nan[:, land] = NAN
    reference, _ = fill_gaussian_bruteforce(as_nan, ~land, None, *args)
    np.testing.assert_allclose(fast[:, ~land], reference[:, ~land], rtol=0, atol=1e-3)
    np.testing.assert_array_equal(fast[:, land], values[:, land])  # land copied, NaN land stays NaN
    assert np.nanmax(fast[:, ~land]) < 200  # 1e4 never leaked in


def test_frames_need_only_batch_plus_halo():
    rng = np.random.default_rng(9)
    values = random_stack(rng, (20, 24, 22))
    args = (2, 4, 25.0, 2.0)
    full, full_none = fill_gaussian(values, None, None, *args)
    garbage = values.copy()
    garbage[:6] = 1e6  # outside [8 - 2, 11 + 2): never read for frames 8..10
    garbage[13:] = NAN
    part, part_none = fill_gaussian(garbage, None, None, *args, frames=(8, 11))
    assert part.shape == (3, 24, 22)
    np.testing.assert_array_equal(part, full[8:11])  # bit-identical
    np.testing.assert_array_equal(part_none, full_none[8:11])
    brute, _ = fill_gaussian_bruteforce(garbage, None, None, *args, frames=(8, 11))
    np.testing.assert_allclose(brute, part, rtol=0, atol=1e-3)


def test_bilinear_sample_equals_scipy_map_coordinates():
    from scipy import ndimage
    from interpolation import bilinear_sample
    rng = np.random.default_rng(4)
    image = rng.gamma(0.5, 3.0, (23, 31))
    y, x = np.mgrid[0:23, 0:31].astype(np.float64)
    x, y = x + rng.uniform(-4, 4, x.shape), y + rng.uniform(-4, 4, y.shape)  # some outside: clamped
    x[0, :3] = [30.0, 0.0, 31.7]  # exactly on the last column, the first, beyond
    expected = ndimage.map_coordinates(image, [y, x], order=1, mode="nearest", prefilter=False)
    np.testing.assert_allclose(bilinear_sample(image, x, y), expected, rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match="needs image"):
        bilinear_sample(image, x.ravel(), y.ravel())
