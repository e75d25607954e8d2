"""metrics.py: hand-computed cases, edge cases, brute-force references and pysteps equality."""
import itertools
import math

import numpy as np
import pytest

import baselines
import metrics

pysteps_verification = pytest.importorskip("pysteps.verification")
from pysteps.verification.detcatscores import det_cat_fct  # noqa: E402
from pysteps.verification.detcontscores import det_cont_fct  # noqa: E402
from pysteps.verification.probscores import CRPS as pysteps_crps  # noqa: E402
from pysteps.verification.spatialscores import fss as pysteps_fss  # noqa: E402


def rain_field(rng, shape, wet=0.4, scale=3.0):
    """Rain-like random field, mm/h: zeros with probability 1 - wet, gamma-distributed rain."""
    rain = rng.gamma(0.8, scale, size=shape)
    return np.where(rng.random(shape) < wet, rain, 0.0)


def correlated_pair(rng, shape, noise=0.5):
    obs = rain_field(rng, shape)
    pred = np.clip(obs + rng.normal(0, noise * obs.std(), shape), 0, None)
    pred[rng.random(shape) < 0.1] = 0.0
    return pred, obs


# --------------------------------------------------------------------------- categorical
# threshold 1.0; H=2 (a,b), M=1 (c), F=1 (d), R=5
HAND_PRED = np.array([[2.0, 1.0, 0.2], [3.0, 0.0, 0.0], [0.5, 0.9, 0.0]])
HAND_OBS = np.array([[1.5, 4.0, 1.0], [0.0, 0.0, 0.3], [0.0, 0.0, 0.99]])


def test_contingency_table_by_hand():
    table = metrics.contingency_table(HAND_PRED, HAND_OBS, 1.0)
    # hits: (0,0) 2/1.5, (0,1) 1.0/4.0 (1.0 >= 1.0 is an event); miss: (0,2) 0.2/1.0;
    # false alarm: (1,0) 3/0; the other five are correct negatives.
    assert table == {"hits": 2, "misses": 1, "false_alarms": 1, "correct_negatives": 5}


def test_categorical_scores_by_hand():
    s = metrics.categorical(HAND_PRED, HAND_OBS, 1.0)
    expected = {"accuracy": 7 / 9, "precision": 2 / 3, "recall": 2 / 3, "pod": 2 / 3, "f1": 2 / 3,
                "csi": 2 / 4, "far": 1 / 3, "frequency_bias": 1.0,
                # HSS = 2(2*5 - 1*1) / (3*6 + 3*6) = 0.5; ETS: Hr = 3*3/9 = 1, (2-1)/(4-1)
                "hss": 0.5, "ets": 1 / 3}
    for key, value in expected.items():
        assert s[key] == pytest.approx(value, abs=1e-12), key


def test_both_hss_conventions_by_hand():
    # H=3, M=2, F=4, R=11. Standard (Heidke; pysteps): 2(HR - FM) / ((H+M)(M+R) + (H+F)(F+R))
    #   = 2 (33 - 8) / (5*13 + 7*15) = 50 / 170. SmaAt-UNet's calc_metrics_test_set.py (seed 004's table):
    #   (tp tn - fn fp) / ((tp+fn)(fn+tn) + (tp+fp)(fp+tn)) = 25 / 170.
    s = metrics.categorical_scores({"hits": 3, "misses": 2, "false_alarms": 4, "correct_negatives": 11})
    assert s["hss"] == pytest.approx(50 / 170, abs=1e-15)
    assert s["hss_half"] == pytest.approx(25 / 170, abs=1e-15)
    # perfect forecast of 5 events in 10 pixels: standard 1, the seed's convention 0.5; random-like: 0 and 0
    perfect = metrics.categorical_scores({"hits": 5, "misses": 0, "false_alarms": 0, "correct_negatives": 5})
    assert (perfect["hss"], perfect["hss_half"]) == (1.0, 0.5)
    chance = metrics.categorical_scores({"hits": 1, "misses": 1, "false_alarms": 1, "correct_negatives": 1})
    assert (chance["hss"], chance["hss_half"]) == (0.0, 0.0)
    # on HAND_PRED/HAND_OBS (H=2, M=1, F=1, R=5): 2(10 - 1) / (3*6 + 3*6) = 0.5 and 0.25
    hand = metrics.categorical(HAND_PRED, HAND_OBS, 1.0)
    assert (hand["hss"], hand["hss_half"]) == (pytest.approx(0.5), pytest.approx(0.25))


def test_pmse_of_the_seed_table_by_hand():
    # rain rates 12 and 0 mm/h over 5 minutes are 1 mm and 0 mm: errors of 1 mm and 0.5 mm per 5 min
    # on 2 of 4 pixels -> pMSE = (1 + 0.25) / 4 (mm per 5 min)^2
    pred = np.array([[12.0, 6.0], [3.0, 3.0]])
    obs = np.array([[0.0, 0.0], [3.0, 3.0]])
    assert metrics.pmse(pred, obs) == pytest.approx(1.25 / 4)


def test_categorical_asymmetric_table_by_hand():
    # H=3, M=2, F=4, R=11 (N=20)
    table = {"hits": 3, "misses": 2, "false_alarms": 4, "correct_negatives": 11}
    s = metrics.categorical_scores(table)
    hr = 5 * 7 / 20
    assert s["hss"] == pytest.approx(2 * (3 * 11 - 4 * 2) / (5 * 13 + 7 * 15))
    assert s["ets"] == pytest.approx((3 - hr) / (9 - hr))
    assert s["frequency_bias"] == pytest.approx(7 / 5)
    assert s["f1"] == pytest.approx(2 * (3 / 7) * (3 / 5) / (3 / 7 + 3 / 5))
    assert s["precision"] == pytest.approx(1 - s["far"])


def test_threshold_tie_and_strict():
    pred = np.array([1.0, 1.0, 0.0])
    obs = np.array([1.0, 0.0, 1.0])
    assert metrics.contingency_table(pred, obs, 1.0) == {
        "hits": 1, "misses": 1, "false_alarms": 1, "correct_negatives": 0}
    assert metrics.contingency_table(pred, obs, 1.0, strict=True) == {
        "hits": 0, "misses": 0, "false_alarms": 0, "correct_negatives": 3}


def test_nan_and_mask_drop_pixels():
    pred, obs = HAND_PRED.copy(), HAND_OBS.copy()
    pred[0, 0] = np.nan            # was a hit
    obs[1, 0] = np.nan             # was a false alarm
    mask = np.ones((3, 3), bool)
    mask[2, 2] = False             # was a correct negative
    table = metrics.contingency_table(pred, obs, 1.0, mask=mask)
    assert table == {"hits": 1, "misses": 1, "false_alarms": 0, "correct_negatives": 4}
    # the mask broadcasts over a stack of frames
    stack = metrics.contingency_table(np.stack([pred, pred]), np.stack([obs, obs]), 1.0, mask=mask)
    assert stack == {key: 2 * value for key, value in table.items()}


def test_no_events_anywhere():
    zeros = np.zeros((4, 4))
    s = metrics.categorical(zeros, zeros, 0.5)
    assert s["correct_negatives"] == 16 and s["accuracy"] == 1.0
    for key in ("pod", "recall", "far", "precision", "csi", "f1", "hss", "ets", "frequency_bias"):
        assert math.isnan(s[key]), key


def test_all_events_everywhere():
    ones = np.full((4, 4), 3.0)
    s = metrics.categorical(ones, ones, 0.5)
    assert s["hits"] == 16
    for key, value in {"accuracy": 1, "pod": 1, "far": 0, "precision": 1, "csi": 1, "f1": 1,
                       "frequency_bias": 1}.items():
        assert s[key] == value, key
    assert math.isnan(s["hss"]) and math.isnan(s["ets"])


def test_events_only_forecast():
    obs = np.zeros((3, 3))
    pred = obs.copy()
    pred[1, 1] = 5.0
    s = metrics.categorical(pred, obs, 1.0)
    assert s["far"] == 1.0 and s["csi"] == 0.0 and s["precision"] == 0.0
    assert math.isnan(s["pod"]) and math.isnan(s["frequency_bias"])
    assert s["hss"] == 0.0  # 2(0*8 - 1*0) / (0*8 + 1*9)


def test_no_valid_pixel():
    s = metrics.categorical(np.full(4, np.nan), np.zeros(4), 1.0)
    assert s["hits"] + s["misses"] + s["false_alarms"] + s["correct_negatives"] == 0
    assert all(math.isnan(s[key]) for key in metrics.CATEGORICAL_SCORES)


PYSTEPS_KEYS = {"accuracy": "ACC", "pod": "POD", "far": "FAR", "csi": "CSI", "frequency_bias": "BIAS",
                "hss": "HSS", "ets": "ETS", "f1": "F1"}
PYSTEPS_NAMES = [name.lower() for name in PYSTEPS_KEYS.values()]


@pytest.mark.parametrize("threshold", [0.1, 0.5, 1.0, 2.0, 5.0, 10.0])
def test_categorical_equals_pysteps(threshold):
    rng = np.random.default_rng(int(threshold * 10))
    pred, obs = correlated_pair(rng, (3, 40, 50))
    ours = metrics.categorical(pred, obs, threshold)
    for key, name in PYSTEPS_KEYS.items():
        theirs = det_cat_fct(pred, obs, threshold, scores=name.lower())[name]
        assert ours[key] == pytest.approx(float(theirs), rel=1e-12), key
    assert ours["precision"] == pytest.approx(1 - ours["far"])


def test_categorical_equals_pysteps_on_finite_pixels_with_ties():
    # quantized rain (KNMI-like steps of 0.12 mm/h plus exact 1.0 values): ties matter here
    rng = np.random.default_rng(7)
    pred = np.round(rain_field(rng, (60, 60)) / 0.5) * 0.5
    obs = np.round(rain_field(rng, (60, 60)) / 0.5) * 0.5
    pred[:5] = np.nan
    obs[:, :3] = np.nan
    finite = np.isfinite(pred) & np.isfinite(obs)
    for threshold in (0.5, 1.0, 2.0):
        assert np.any(obs[finite] == threshold)
        strict = metrics.categorical(pred, obs, threshold, strict=True)
        theirs = det_cat_fct(pred[finite], obs[finite], threshold, scores=PYSTEPS_NAMES)
        for key, name in PYSTEPS_KEYS.items():
            assert strict[key] == pytest.approx(float(theirs[name]), rel=1e-12), key
        # our default (>=) is pysteps' strict rule at the next float below the threshold
        ours = metrics.categorical(pred, obs, threshold)
        below = det_cat_fct(pred[finite], obs[finite], np.nextafter(threshold, -np.inf))
        assert ours["csi"] == pytest.approx(float(below["CSI"]), rel=1e-12)
        assert ours["csi"] != pytest.approx(strict["csi"], rel=1e-6)


# --------------------------------------------------------------------------- continuous
def test_continuous_by_hand():
    pred = np.array([1.0, 2.0, 4.0, np.nan])
    obs = np.array([0.0, 2.0, 1.0, 5.0])
    s = metrics.continuous_scores(pred, obs)
    assert s["n"] == 3
    assert s["mse"] == pytest.approx((1 + 0 + 9) / 3)
    assert s["rmse"] == pytest.approx(math.sqrt(10 / 3))
    assert s["mae"] == pytest.approx(4 / 3)
    assert s["bias"] == pytest.approx(4 / 3)
    # corr of (1,2,4) and (0,2,1): centred (-4/3,-1/3,5/3), (-1,1,0): cov 1, var 42/9, 2
    assert s["corr"] == pytest.approx(1 / math.sqrt(42 / 9 * 2))
    assert metrics.mse(pred, obs) == s["mse"] and metrics.mae(pred, obs) == s["mae"]
    assert metrics.mean_error(pred, obs) == s["bias"] and metrics.pearson_r(pred, obs) == s["corr"]
    assert metrics.rmse(pred, obs) == pytest.approx(s["rmse"])
    mask = np.array([True, False, True, True])
    assert metrics.mse(pred, obs, mask) == pytest.approx((1 + 9) / 2)


def test_continuous_edge_cases():
    assert math.isnan(metrics.mse([np.nan], [1.0]))
    assert metrics.continuous_scores([np.nan], [1.0])["n"] == 0
    assert math.isnan(metrics.pearson_r([1.0, 1.0, 1.0], [0.0, 1.0, 2.0]))  # constant forecast
    assert math.isnan(metrics.pearson_r([1.0], [2.0]))
    with pytest.raises(ValueError, match="shape"):
        metrics.mse(np.zeros(3), np.zeros(4))


def test_pmse_is_mse_of_5min_accumulations():
    rng = np.random.default_rng(1)
    pred, obs = correlated_pair(rng, (20, 20))
    # SmaAt-UNet: fields in mm per 5 min (rate / 12), squared error summed, / pixels
    expected = np.sum((pred / 12 - obs / 12) ** 2) / pred.size
    assert metrics.pmse(pred, obs) == pytest.approx(expected, rel=1e-12)
    assert metrics.pmse(pred, obs, step_minutes=10) == pytest.approx(4 * expected, rel=1e-12)


def test_continuous_equals_pysteps():
    rng = np.random.default_rng(3)
    pred, obs = correlated_pair(rng, (4, 30, 30))
    ours = metrics.continuous_scores(pred, obs)
    theirs = det_cont_fct(pred, obs, scores=["MSE", "RMSE", "MAE", "ME", "corr_p"])
    for key, name in {"mse": "MSE", "rmse": "RMSE", "mae": "MAE", "bias": "ME", "corr": "corr_p"}.items():
        assert ours[key] == pytest.approx(float(theirs[name]), rel=1e-10), key


# --------------------------------------------------------------------------- FSS
def test_fss_by_hand():
    pred = np.zeros((3, 3))
    obs = np.zeros((3, 3))
    pred[0, 0] = pred[1, 1] = 2.0
    obs[1, 1] = obs[2, 2] = 2.0
    # window 1: sum (If - Io)^2 = 2, sum If^2 + Io^2 = 4
    assert metrics.fss(pred, obs, 1.0, 1) == pytest.approx(0.5)
    pred = np.zeros((3, 3))
    obs = np.zeros((3, 3))
    pred[0, 0], obs[2, 2] = 2.0, 2.0
    # window 3, zeros outside: pred fraction 1/9 on the 4 pixels around (0,0), obs around (2,2);
    # they share (1,1): numerator 6/81, denominator 8/81
    assert metrics.fss(pred, obs, 1.0, 3) == pytest.approx(0.25)
    assert metrics.fss(pred, pred, 1.0, 3) == 1.0
    assert math.isnan(metrics.fss(np.zeros((3, 3)), np.zeros((3, 3)), 1.0, 3))


@pytest.mark.parametrize("threshold,window", list(itertools.product([0.5, 1.0, 5.0], [1, 3, 4, 9, 21])))
def test_fss_equals_pysteps(threshold, window):
    rng = np.random.default_rng(window)
    pred, obs = correlated_pair(rng, (48, 56))
    nan = np.zeros((48, 56), bool)
    nan[:6, :10] = True            # the same NaN pixels in both (coverage), as pysteps assumes
    pred[nan], obs[nan] = np.nan, np.nan
    ours = metrics.fss(pred, obs, threshold, window)
    assert ours == pytest.approx(pysteps_fss(pred, obs, threshold, window), rel=1e-12)
    # a mask is the same as NaN outside it
    pred[nan] = obs[nan] = 7.0
    assert metrics.fss(pred, obs, threshold, window, mask=~nan) == pytest.approx(ours, rel=1e-12)


# --------------------------------------------------------------------------- image and physical
def test_psnr_by_hand():
    obs = np.array([0.0, 4.0])
    pred = np.array([1.0, 4.0])
    assert metrics.psnr(pred, obs) == pytest.approx(10 * math.log10(16 / 0.5))
    assert metrics.psnr(pred, obs, data_range=1.0) == pytest.approx(10 * math.log10(1 / 0.5))
    assert metrics.psnr(obs, obs) == np.inf


def gaussian_window(sigma=1.5, radius=5):
    x = np.arange(-radius, radius + 1)
    w = np.exp(-0.5 * x ** 2 / sigma ** 2)
    w /= w.sum()
    return np.outer(w, w)


def ssim_brute_force(pred, obs, data_range, valid=None):
    """Wang et al. (2004) with an 11x11 Gaussian window, loop over centres whose window is valid."""
    w = gaussian_window()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    H, W = pred.shape
    for i in range(5, H - 5):
        for j in range(5, W - 5):
            if valid is not None and not valid[i - 5:i + 6, j - 5:j + 6].all():
                continue
            p, o = pred[i - 5:i + 6, j - 5:j + 6], obs[i - 5:i + 6, j - 5:j + 6]
            mp, mo = np.sum(w * p), np.sum(w * o)
            vp, vo = np.sum(w * (p - mp) ** 2), np.sum(w * (o - mo) ** 2)
            cov = np.sum(w * (p - mp) * (o - mo))
            values.append((2 * mp * mo + c1) * (2 * cov + c2) / ((mp ** 2 + mo ** 2 + c1) * (vp + vo + c2)))
    return float(np.mean(values))


def test_ssim_equals_brute_force():
    rng = np.random.default_rng(5)
    obs = rng.random((24, 27)) * 10
    pred = 0.7 * obs + rng.random((24, 27)) * 3
    assert metrics.ssim(pred, obs, data_range=10.0) == pytest.approx(
        ssim_brute_force(pred, obs, 10.0), rel=1e-10)
    assert metrics.ssim(obs, obs, data_range=10.0) == pytest.approx(1.0)
    # NaN pixels: only windows that avoid them count
    pred[3, 20] = np.nan
    obs[15, 6] = np.nan
    valid = np.isfinite(pred) & np.isfinite(obs)
    assert metrics.ssim(pred, obs, data_range=10.0) == pytest.approx(
        ssim_brute_force(np.nan_to_num(pred), np.nan_to_num(obs), 10.0, valid), rel=1e-10)
    # a stack pools the frames
    stack = metrics.ssim(np.stack([obs, pred]), np.stack([obs, obs]), data_range=10.0)
    assert 0 < stack < 1
    assert math.isnan(metrics.ssim(np.zeros((8, 8)), np.zeros((8, 8)), data_range=1.0))  # no 11x11 window


def test_negative_count_and_mass_violation():
    pred = np.array([[-1.0, 0.0], [2.0, -0.5]])
    obs = np.array([[0.0, 1.0], [1.0, 0.0]])
    assert metrics.negative_count(pred) == 2
    assert metrics.negative_count(pred, mask=np.array([[True, True], [True, False]])) == 1
    # whole frame: mean(pred) = 0.125, mean(obs) = 0.5
    assert metrics.mass_violation(pred, obs) == pytest.approx(0.375)
    # 1x1 blocks: the MAE
    assert metrics.mass_violation(pred, obs, block=1) == pytest.approx(metrics.mae(pred, obs))
    # super-resolution check against a low-resolution field
    hr = np.array([[1.0, 3.0, 0.0, 0.0], [2.0, 2.0, 0.0, 4.0]])
    lr = np.array([[2.0, 0.5]])
    assert metrics.mass_violation(hr, np.repeat(np.repeat(lr, 2, -2), 2, -1), block=2) == pytest.approx(0.25)
    assert math.isnan(metrics.mass_violation(np.full((2, 2), np.nan), obs))


# --------------------------------------------------------------------------- CRPS
def crps_brute_force(members, y, fair=False):
    m = len(members)
    pairs = sum(abs(a - b) for a in members for b in members)
    return np.mean(np.abs(members - y)) - pairs / (2 * m * (m - 1) if fair else 2 * m * m)


def test_crps_by_hand_and_brute_force():
    # members {0, 2}, obs 1: standard 1 - 4/8 = 0.5 (= integral of F^2 / (1-F)^2 = 2 * 0.25), fair 0
    assert metrics.crps_ensemble(np.array([[0.0], [2.0]]), np.array([1.0])) == pytest.approx(0.5)
    assert metrics.crps_ensemble(np.array([[0.0], [2.0]]), np.array([1.0]), fair=True) == pytest.approx(0.0)
    rng = np.random.default_rng(11)
    ens = rng.normal(size=(7, 5, 4))
    obs = rng.normal(size=(5, 4))
    for fair in (False, True):
        expected = np.mean([crps_brute_force(ens[:, i, j], obs[i, j], fair)
                            for i in range(5) for j in range(4)])
        assert metrics.crps_ensemble(ens, obs, fair=fair) == pytest.approx(expected, rel=1e-12)
    # member axis anywhere
    assert metrics.crps_ensemble(np.moveaxis(ens, 0, -1), obs, member_axis=-1) == pytest.approx(
        metrics.crps_ensemble(ens, obs), rel=1e-12)


def test_crps_equals_pysteps_and_mae_for_one_member():
    rng = np.random.default_rng(12)
    obs = rain_field(rng, (20, 30))
    # no ties between obs and members here: pysteps' Hersbach loop misses the interval next to
    # an observation equal to a member (members {0, 0, 1}, obs 0: pysteps 0, true CRPS 1/9)
    ens = np.stack([obs + rng.normal(0, 1, obs.shape) for _ in range(6)])
    ens[2, 3, 4] = np.nan
    obs[7, 7] = np.nan
    assert metrics.crps_ensemble(ens, obs) == pytest.approx(pysteps_crps(ens, obs), rel=1e-10)
    tie = metrics.crps_ensemble(np.array([[0.0], [0.0], [1.0]]), np.array([0.0]))
    assert tie == pytest.approx(1 / 9)  # integral over [0, 1) of (2/3 - 1)^2
    single = ens[:1]
    for fair in (False, True):
        assert metrics.crps_ensemble(single, obs, fair=fair) == pytest.approx(metrics.mae(single[0], obs))


# --------------------------------------------------------------------------- sea ice
def test_sea_ice_scores_by_hand():
    obs = np.array([[0.0, 0.1, 0.5, 0.9],
                    [0.2, 0.15, 0.0, 1.0]])
    pred = np.array([[0.2, 0.1, 0.1, 0.9],
                     [0.1, 0.3, 0.6, 0.0]])
    land = np.zeros((2, 4), bool)
    land[1, 3] = True            # the 1.0 vs 0.0 pixel is land: left out
    # ocean ice (>= 0.15): obs at (0,2),(0,3),(1,0),(1,1); pred at (0,0),(0,3),(1,1),(1,2)
    # overestimate: (0,0),(1,2) = 2 px; underestimate: (0,2),(1,0) = 2 px; agree: 3 of 7
    edge = metrics.iiee(pred, obs, 9.765625, land_mask=land)
    assert edge == {"iiee_km2": 4 * 9.765625, "overestimate_km2": 2 * 9.765625,
                    "underestimate_km2": 2 * 9.765625}
    assert metrics.ice_binary_accuracy(pred, obs, land) == pytest.approx(3 / 7)
    s = metrics.sea_ice_scores(pred, obs, land_mask=land)
    errors = np.array([0.2, 0.0, 0.4, 0.0, 0.1, 0.15, 0.6])
    assert s["rmse"] == pytest.approx(np.sqrt(np.mean(errors ** 2)))
    assert s["mae"] == pytest.approx(np.mean(errors))
    assert s["iiee_km2"] == pytest.approx(4 * 9.765625)
    # per frame for a stack, and % fields with a % threshold give the same areas
    stack = metrics.iiee(np.stack([pred, obs]) * 100, np.stack([obs, obs]) * 100, 9.765625, land, 15.0)
    assert np.allclose(stack["iiee_km2"], [4 * 9.765625, 0.0])
    with pytest.raises(ValueError, match="looks like %"):
        metrics.iiee(pred * 100, obs * 100, 9.765625)


# --------------------------------------------------------------------------- accumulators
def batches_of(rng, n_batches, shape):
    out = []
    for _ in range(n_batches):
        pred, obs = correlated_pair(rng, shape)
        pred[rng.random(shape) < 0.03] = np.nan
        obs[rng.random(shape) < 0.03] = np.nan
        out.append((pred, obs))
    return out


def test_accumulators_equal_scores_of_the_concatenated_set():
    rng = np.random.default_rng(21)
    batches = batches_of(rng, 4, (3, 2, 32, 36))      # (B, T_out, H, W)
    coverage = rng.random((32, 36)) > 0.1
    thresholds, windows = [0.5, 1.0, 5.0], [1, 5, 9]
    cat = metrics.ContingencyAccumulator(thresholds)
    cat_lead = metrics.ContingencyAccumulator(thresholds, lead_axis=-3)
    cont = metrics.ContinuousAccumulator(step_minutes=5)
    cont_lead = metrics.ContinuousAccumulator(lead_axis=1)
    fss_acc = metrics.FSSAccumulator(thresholds, windows)
    fss_lead = metrics.FSSAccumulator(thresholds, windows, lead_axis=1)
    for pred, obs in batches:
        for acc in (cat, cat_lead, cont, cont_lead, fss_acc, fss_lead):
            acc.update(pred, obs, mask=coverage)
    pred = np.concatenate([b[0] for b in batches])
    obs = np.concatenate([b[1] for b in batches])
    cat_scores, cat_lead_scores = cat.scores(), cat_lead.scores()
    assert cat_lead_scores["csi"].shape == (3, 2)
    for i, t in enumerate(thresholds):
        whole = metrics.categorical(pred, obs, t, mask=coverage)
        for key in metrics.TABLE_KEYS:
            assert cat_scores[key][i] == whole[key]
        for key in metrics.CATEGORICAL_SCORES:
            assert cat_scores[key][i] == pytest.approx(whole[key], rel=1e-12, nan_ok=True)
        for lead in range(2):
            per_lead = metrics.categorical(pred[:, lead], obs[:, lead], t, mask=coverage)
            assert cat_lead_scores["hss"][i, lead] == pytest.approx(per_lead["hss"], rel=1e-12)
            assert cat_lead_scores["hits"][i, lead] == per_lead["hits"]
        for j, w in enumerate(windows):
            assert fss_acc.scores()["fss"][i, j] == pytest.approx(
                metrics.fss(pred, obs, t, w, mask=coverage), rel=1e-12)
            for lead in range(2):
                assert fss_lead.scores()["fss"][i, j, lead] == pytest.approx(
                    metrics.fss(pred[:, lead], obs[:, lead], t, w, mask=coverage), rel=1e-12)
    whole = metrics.continuous_scores(pred, obs, mask=coverage)
    acc = cont.scores()
    for key in ("n", "mse", "rmse", "mae", "bias", "corr", "mean_pred", "mean_obs"):
        assert acc[key] == pytest.approx(whole[key], rel=1e-10), key
    assert acc["pmse"] == pytest.approx(metrics.pmse(pred, obs, mask=coverage), rel=1e-10)
    for lead in range(2):
        per_lead = metrics.continuous_scores(pred[:, lead], obs[:, lead], mask=coverage)
        for key in ("mse", "mae", "bias", "corr"):
            assert cont_lead.scores()[key][lead] == pytest.approx(per_lead[key], rel=1e-10), key


def test_accumulator_merge_and_errors():
    rng = np.random.default_rng(2)
    (p1, o1), (p2, o2) = batches_of(rng, 2, (2, 16, 16))
    a, b, both = (metrics.ContingencyAccumulator([1.0]) for _ in range(3))
    a.update(p1, o1)
    b.update(p2, o2)
    both.update(p1, o1)
    both.update(p2, o2)
    assert np.array_equal(a.merge(b).table, both.table)
    lead = metrics.ContingencyAccumulator([1.0], lead_axis=0)
    lead.update(p1, o1)
    with pytest.raises(ValueError, match="lead"):
        lead.update(p1[:1], o1[:1])
    with pytest.raises(ValueError, match="no data"):
        metrics.ContinuousAccumulator().scores()
    with pytest.raises(ValueError, match="spatial"):
        metrics.FSSAccumulator([1.0], [3], lead_axis=-1).update(p1, o1)


def test_continuous_accumulator_is_stable_for_large_offsets():
    # sea-ice concentrations in % near 100: correlation from shifted sums stays exact
    rng = np.random.default_rng(4)
    obs = 1e6 + rng.normal(size=(2, 50, 50))
    pred = obs + 0.5 * rng.normal(size=obs.shape)
    acc = metrics.ContinuousAccumulator()
    acc.update(pred[:1], obs[:1])
    acc.update(pred[1:], obs[1:])
    assert acc.scores()["corr"] == pytest.approx(metrics.pearson_r(pred, obs), rel=1e-8)


# --------------------------------------------------------------------------- masked arrays are missing data
def masked_field(value=2.0, under=-9999.0, shape=(16, 16), columns=6):
    """A field at `value` whose first `columns` columns are masked, with `under` beneath the mask."""
    data = np.full(shape, value)
    data[..., :columns] = under
    mask = np.zeros(shape, bool)
    mask[..., :columns] = True
    return np.ma.masked_array(data, mask=mask)


def test_masked_pixels_are_missing_issue_values():
    """The issue's input: a perfect forecast of a 16 x 16 field at 2 mm/h whose left 6 columns are masked
    (-9999 underneath). Before: MSE 3.75e7, CSI 0.625, FSS 0.791. Right: MSE 0, CSI 1, FSS 1."""
    obs, pred = masked_field(), np.full((16, 16), 2.0)
    assert metrics.mse(pred, obs) == 0.0
    assert metrics.categorical(pred, obs, 1.0)["csi"] == 1.0
    assert metrics.fss(pred, obs, 1.0, 5) == 1.0
    assert metrics.contingency_table(pred, obs, 1.0)["hits"] == 16 * 10  # only the 10 unmasked columns count
    acc = metrics.ContinuousAccumulator()
    acc.update(pred, obs)
    assert acc.scores()["mse"] == 0.0 and acc.scores()["n"] == 160


def test_persistence_and_extrapolation_forecast_nan_under_the_mask():
    inputs = np.ma.stack([masked_field(under=9.97e36) for _ in range(3)])  # netCDF4's default fill beneath
    for method in (baselines.persistence, baselines.extrapolation):
        forecast = method(inputs, 2)
        assert forecast.shape == (2, 16, 16) and not isinstance(forecast, np.ma.MaskedArray)
        assert np.isnan(forecast[..., :6]).all(), method.__name__
        np.testing.assert_allclose(forecast[..., 7:], 2.0)  # column 6 may mix with the NaN side (bilinear)
    field = masked_field(under=9.97e36)
    assert np.isnan(baselines.advect(field, np.zeros((2, 16, 16)), 1)[0][:, :6]).all()
    np.testing.assert_array_equal(baselines.motion_field(np.ma.stack([field, field])),
                                  baselines.motion_field(np.stack([np.where(field.mask, np.nan, 2.0)] * 2)))


def _entry_points():
    """(name, call(pred, obs, mask=None, land=None)) for every score and accumulator of metrics.py."""
    def accumulate(cls, *args):
        def call(p, o, m=None, land=None):
            acc = cls(*args, lead_axis=0)
            acc.update(p, o, mask=m)
            acc.update(p, o, mask=m)
            return acc.scores()
        return call
    return [
        ("valid_pixels", lambda p, o, m=None, land=None: metrics.valid_pixels(p, o, m)),
        ("contingency_table", lambda p, o, m=None, land=None: metrics.contingency_table(p, o, 1.0, m)),
        ("categorical", lambda p, o, m=None, land=None: metrics.categorical(p, o, 1.0, m)),
        ("mse", lambda p, o, m=None, land=None: metrics.mse(p, o, m)),
        ("rmse", lambda p, o, m=None, land=None: metrics.rmse(p, o, m)),
        ("mae", lambda p, o, m=None, land=None: metrics.mae(p, o, m)),
        ("mean_error", lambda p, o, m=None, land=None: metrics.mean_error(p, o, m)),
        ("pearson_r", lambda p, o, m=None, land=None: metrics.pearson_r(p, o, m)),
        ("pmse", lambda p, o, m=None, land=None: metrics.pmse(p, o, m)),
        ("continuous_scores", lambda p, o, m=None, land=None: metrics.continuous_scores(p, o, m)),
        ("fss", lambda p, o, m=None, land=None: metrics.fss(p, o, 1.0, 3, m)),
        ("psnr", lambda p, o, m=None, land=None: metrics.psnr(p, o, 10.0, m)),
        ("ssim", lambda p, o, m=None, land=None: metrics.ssim(p, o, 10.0, m)),
        ("ssim_sums", lambda p, o, m=None, land=None: metrics.ssim_sums(p, o, 10.0, m)),
        ("negative_count", lambda p, o, m=None, land=None: metrics.negative_count(p - 3, m)),
        ("mass_violation", lambda p, o, m=None, land=None: metrics.mass_violation(p, o, m, block=4)),
        ("crps_ensemble", lambda p, o, m=None, land=None: metrics.crps_ensemble(np.ma.stack([p, p + 1]) if
                                                                                 isinstance(p, np.ma.MaskedArray)
                                                                                 else np.stack([p, p + 1]), o, m)),
        ("sea_ice_scores", lambda p, o, m=None, land=None: metrics.sea_ice_scores(p / 40, o / 40, land)),
        ("ice_binary_accuracy", lambda p, o, m=None, land=None: metrics.ice_binary_accuracy(p / 40, o / 40, land)),
        ("iiee", lambda p, o, m=None, land=None: metrics.iiee(p / 40, o / 40, 9.77, land)),
        ("ContingencyAccumulator", accumulate(metrics.ContingencyAccumulator, [0.5, 1.0])),
        ("ContinuousAccumulator", accumulate(metrics.ContinuousAccumulator)),
        ("FSSAccumulator", accumulate(metrics.FSSAccumulator, [1.0], [1, 3])),
    ]


def _same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _same(a[key], b[key])
    else:
        np.testing.assert_array_equal(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))


@pytest.mark.parametrize("name, call", _entry_points(), ids=[n for n, _ in _entry_points()])
def test_every_score_treats_masked_entries_as_nan(name, call):
    """Reference: the same arrays with NaN where masked (an unmasked pixel mask, land_mask False there)."""
    rng = np.random.default_rng(3)
    shape = (2, 16, 16)
    pred_data, obs_data = rng.gamma(1.0, 2.0, shape), rng.gamma(1.0, 2.0, shape)
    pred_hidden, obs_hidden = rng.random(shape) < 0.2, rng.random(shape) < 0.2
    pred_masked = np.ma.masked_array(np.where(pred_hidden, -9999.0, pred_data), mask=pred_hidden)
    obs_masked = np.ma.masked_array(np.where(obs_hidden, 1e20, obs_data), mask=obs_hidden)
    pred_nan, obs_nan = np.where(pred_hidden, np.nan, pred_data), np.where(obs_hidden, np.nan, obs_data)
    _same(call(pred_masked, obs_masked), call(pred_nan, obs_nan))
    # a masked pixel mask leaves the pixel out; a masked land mask entry counts as land (left out too)
    keep = rng.random((16, 16)) < 0.8
    unknown = rng.random((16, 16)) < 0.1
    _same(call(pred_nan, obs_nan, np.ma.masked_array(keep, mask=unknown)), call(pred_nan, obs_nan, keep & ~unknown))
    land = rng.random((16, 16)) < 0.2
    _same(call(pred_nan, obs_nan, None, np.ma.masked_array(land, mask=unknown)),
          call(pred_nan, obs_nan, None, land | unknown))


def test_every_public_score_and_baseline_is_covered():
    """A new score or baseline must go through missing_as_nan too (and be in _entry_points)."""
    import inspect
    # ms_ssim scores complete fields only (ValueError on a missing pixel): downscaling crops have none
    helpers = {"categorical_scores", "missing_as_nan", "masked_as_missing", "ms_ssim", "ms_ssim_frames"}
    scores = {n for n, f in inspect.getmembers(metrics, inspect.isfunction)
              if not n.startswith("_") and f.__module__ == "metrics" and n not in helpers}
    assert all(hasattr(getattr(metrics, n), "__wrapped__") for n in scores), scores
    assert scores - {"events"} <= {n for n, _ in _entry_points()}
    for cls in (metrics.ContingencyAccumulator, metrics.ContinuousAccumulator, metrics.FSSAccumulator):
        assert hasattr(cls.update, "__wrapped__")
    for name in ("persistence", "extrapolation", "motion_field", "advect"):
        assert hasattr(getattr(baselines, name), "__wrapped__")
