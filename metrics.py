"""Verification scores: the one module used by training.py and evaluate.py.

Pure numpy/scipy functions on arrays, plus accumulators that add contingency
tables and sums over batches, so that a score over a whole test set is exact
(the score of the concatenated arrays), never a mean of per-batch scores.

    import metrics
    metrics.categorical(pred, obs, threshold=1.0)["csi"]        # one threshold, all pixels
    acc = metrics.ContingencyAccumulator([0.5, 1, 2], lead_axis=-3)
    for pred, obs in batches:                                   # (B, T_out, H, W) mm/h
        acc.update(pred, obs, mask=coverage)                    # coverage (H, W) bool
    acc.scores()["csi"]                                         # (n_thresholds, T_out)

Conventions (they hold for every function and accumulator here)
--------------------------------------------------------------
* Arrays: `pred` and `obs` have the same shape, any number of leading axes
  before the spatial ones (..., H, W); units are the data's (mm/h for rain,
  fraction or % for sea ice). Scores keep the data's units (MSE in units^2).
* Valid pixels: a pixel counts when pred and obs are both finite and `mask`
  (optional, boolean, broadcastable to pred, True = the pixel counts) is True.
  Every other pixel is left out of every sum. A masked entry of a
  numpy.ma.MaskedArray (what netCDF4 returns) is missing, whatever value lies
  under the mask (`missing_as_nan`, applied to every function and update()). (pysteps' det_cat_fct counts a
  NaN as a "no" instead; compare on finite pixels only.)
* Events: a pixel is an event when its value >= threshold (value exactly at
  the threshold is an event). This is pysteps' `fss` convention and the sea-ice
  extent convention (concentration of at least 15 %). pysteps' `det_cat_fct`
  and SmaAt-UNet use the strict `value > threshold`; pass `strict=True` to the
  categorical functions to reproduce them bit for bit. The two differ only for
  values exactly equal to the threshold.
* Undefined scores: a ratio whose denominator is zero is NaN (no warning),
  e.g. POD when nothing was observed, FAR when nothing was forecast, CSI/HSS/
  ETS/FSS when neither field has an event. An empty set of valid pixels gives
  NaN for every score (and zero counts).
"""
import functools
import inspect

import numba
import numpy as np
from scipy import ndimage

CATEGORICAL_SCORES = ("accuracy", "precision", "recall", "pod", "f1", "csi", "far", "hss", "hss_half",
                      "ets", "frequency_bias")
TABLE_KEYS = ("hits", "misses", "false_alarms", "correct_negatives")
ICE_EDGE_FRACTION = 0.15  # sea-ice extent: concentration >= 15 %


# --------------------------------------------------------------------------- masked arrays
# Argument names whose masked entries mean "leave this pixel out" rather than "value missing".
_MASKED_BOOL_FILL = {"mask": False, "land_mask": True}  # mask: True = counts; land_mask: True = land


def missing_as_nan(x, name=None):
    """x, with the masked entries of a numpy.ma.MaskedArray turned into missing data; any other x unchanged.

    netCDF4 returns masked arrays by default, and np.asarray() of one silently keeps the values under
    the mask (e.g. -9999 or 9.97e36): every score and baseline must see those pixels as missing.
    Values become NaN (an integer or bool array becomes float64); for a pixel mask (name "mask",
    True = the pixel counts) a masked entry is False, for "land_mask" (True = land) it is True.
    """
    if not isinstance(x, np.ma.MaskedArray):
        return x
    if name in _MASKED_BOOL_FILL:
        return np.ma.filled(x.astype(bool), _MASKED_BOOL_FILL[name])
    data = np.ma.getdata(x)
    return np.ma.filled(x.astype(data.dtype if data.dtype.kind == "f" else np.float64), np.nan)


def masked_as_missing(function):
    """Decorator: every numpy.ma.MaskedArray argument of `function` goes through missing_as_nan first."""
    signature = inspect.signature(function)

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        if not any(isinstance(a, np.ma.MaskedArray) for a in (*args, *kwargs.values())):
            return function(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        for name, value in bound.arguments.items():
            bound.arguments[name] = missing_as_nan(value, name)
        return function(*bound.args, **bound.kwargs)
    return wrapper


# --------------------------------------------------------------------------- helpers
@masked_as_missing
def valid_pixels(pred, obs, mask=None):
    """Boolean array, shape of pred: True where pred and obs are finite and mask is True.

    Parameters
    ----------
    pred, obs : array_like, same shape (..., H, W)
    mask : array_like of bool, optional
        Broadcastable to pred (e.g. (H, W) coverage for a (T, H, W) stack); True = counts.
    """
    pred, obs = np.asarray(pred), np.asarray(obs)
    if pred.shape != obs.shape:
        raise ValueError(f"pred shape {pred.shape} differs from obs shape {obs.shape}")
    valid = np.isfinite(pred) & np.isfinite(obs)
    if mask is not None:
        valid &= np.broadcast_to(np.asarray(mask, dtype=bool), pred.shape)
    return valid


@masked_as_missing
def events(values, threshold, strict=False):
    """Boolean events: values >= threshold (or values > threshold when strict). NaN -> False."""
    values = np.asarray(values)
    return values > threshold if strict else values >= threshold


def _ratio(numerator, denominator):
    """numerator / denominator as float64, NaN where the denominator is 0."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.full(np.broadcast(numerator, denominator).shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out if out.ndim else float(out)


def _lead_first(x, lead_axis):
    """Move `lead_axis` to the front: (..., L, ...) -> (L, ...); no lead axis -> (1, ...)."""
    x = np.asarray(x)
    return x[None] if lead_axis is None else np.moveaxis(x, lead_axis, 0)


# --------------------------------------------------------------------------- categorical
@masked_as_missing
def contingency_table(pred, obs, threshold, mask=None, strict=False):
    """2x2 contingency table of events (value >= threshold) over valid pixels.

    Parameters
    ----------
    pred, obs : array_like, same shape (..., H, W)
        Forecast and observation in the threshold's units (mm/h, fraction, %).
    threshold : float
        Event threshold; an event is value >= threshold (value > threshold if strict).
    mask : array_like of bool, optional
        True = the pixel counts; broadcastable to pred.
    strict : bool
        Use value > threshold (pysteps det_cat_fct / SmaAt-UNet convention).

    Returns
    -------
    dict
        hits (pred yes, obs yes), misses (pred no, obs yes), false_alarms (pred yes,
        obs no), correct_negatives (pred no, obs no): Python ints (pixel counts).
    """
    valid = valid_pixels(pred, obs, mask)
    forecast = events(np.asarray(pred)[valid], threshold, strict)
    observed = events(np.asarray(obs)[valid], threshold, strict)
    hits = int(np.count_nonzero(forecast & observed))
    misses = int(np.count_nonzero(observed)) - hits
    false_alarms = int(np.count_nonzero(forecast)) - hits
    correct_negatives = int(valid.sum()) - hits - misses - false_alarms
    return {"hits": hits, "misses": misses, "false_alarms": false_alarms,
            "correct_negatives": correct_negatives}


def categorical_scores(table):
    """Scores of a contingency table (scalars or arrays of counts, elementwise).

    With H hits, M misses, F false alarms, R correct negatives, N = H + M + F + R:

    ==============  ==============================================  ==================
    key             definition                                      NaN when
    ==============  ==============================================  ==================
    accuracy        (H + R) / N                                     N = 0
    precision       H / (H + F)            (= 1 - FAR)              H + F = 0
    recall, pod     H / (H + M)            (probability of detect.) H + M = 0
    f1              2H / (2H + F + M)      (harmonic mean P, R)     H + F + M = 0
    csi             H / (H + M + F)        (threat score)           H + F + M = 0
    far             F / (H + F)            (false alarm ratio)      H + F = 0
    hss             2(HR - FM) / ((H+M)(M+R) + (H+F)(F+R))          denominator = 0
    hss_half        (HR - FM) / ((H+M)(M+R) + (H+F)(F+R)) = hss / 2  denominator = 0
    ets             (H - Hr) / (H + M + F - Hr), Hr = (H+M)(H+F)/N  denominator = 0
    frequency_bias  (H + F) / (H + M)                               H + M = 0
    ==============  ==============================================  ==================

    HSS is the standard Heidke skill score (pysteps' HSS; Heidke 1926, in Wilks,
    Statistical Methods in the Atmospheric Sciences, eq. 9.19 for a 2x2 table): 1 is
    perfect, 0 the skill of a random forecast. SmaAt-UNet's calc_metrics_test_set.py
    leaves out the factor 2, and seed 004's table (SmaAt-UNet's 0.269) follows it:
    `hss_half` = hss / 2 is that convention, 0.5 for a perfect forecast. Report
    `hss` and say which one when quoting the seed's numbers.
    A perfect forecast of a field that is all events or all non-events has
    accuracy 1 and HSS/ETS NaN (no skill can be measured).

    Parameters
    ----------
    table : dict
        hits, misses, false_alarms, correct_negatives (as from contingency_table).

    Returns
    -------
    dict
        The keys above, floats (or float64 arrays shaped like the counts).
    """
    H, M, F, R = (np.asarray(table[k], dtype=np.float64) for k in TABLE_KEYS)
    N = H + M + F + R
    hits_random = _ratio((H + M) * (H + F), N)
    hits_random = np.where(N > 0, hits_random, 0.0)
    pod = _ratio(H, H + M)
    far = _ratio(F, H + F)
    return {
        "accuracy": _ratio(H + R, N),
        "precision": _ratio(H, H + F),
        "recall": pod,
        "pod": pod,
        "f1": _ratio(2 * H, 2 * H + F + M),
        "csi": _ratio(H, H + M + F),
        "far": far,
        "hss": _ratio(2 * (H * R - F * M), (H + M) * (M + R) + (H + F) * (F + R)),
        "hss_half": _ratio(H * R - F * M, (H + M) * (M + R) + (H + F) * (F + R)),
        "ets": _ratio(H - hits_random, H + M + F - hits_random),
        "frequency_bias": _ratio(H + F, H + M),
    }


@masked_as_missing
def categorical(pred, obs, threshold, mask=None, strict=False):
    """Contingency table and all categorical scores at one threshold (see categorical_scores).

    Parameters as in contingency_table. Returns one dict with the four counts and the scores.
    """
    table = contingency_table(pred, obs, threshold, mask, strict)
    return {**table, **categorical_scores(table)}


# --------------------------------------------------------------------------- continuous
def _valid_pairs(pred, obs, mask):
    valid = valid_pixels(pred, obs, mask)
    return (np.asarray(pred, dtype=np.float64)[valid], np.asarray(obs, dtype=np.float64)[valid])


@masked_as_missing
def mse(pred, obs, mask=None):
    """Mean squared error over valid pixels, in units^2 (e.g. (mm/h)^2). NaN if none valid."""
    p, o = _valid_pairs(pred, obs, mask)
    return float(np.mean((p - o) ** 2)) if p.size else np.nan


@masked_as_missing
def rmse(pred, obs, mask=None):
    """Root mean squared error over valid pixels, in the data's units."""
    return float(np.sqrt(mse(pred, obs, mask)))


@masked_as_missing
def mae(pred, obs, mask=None):
    """Mean absolute error over valid pixels, in the data's units."""
    p, o = _valid_pairs(pred, obs, mask)
    return float(np.mean(np.abs(p - o))) if p.size else np.nan


@masked_as_missing
def mean_error(pred, obs, mask=None):
    """Bias: mean of (pred - obs) over valid pixels, data's units (> 0: forecast too high)."""
    p, o = _valid_pairs(pred, obs, mask)
    return float(np.mean(p - o)) if p.size else np.nan


@masked_as_missing
def pearson_r(pred, obs, mask=None):
    """Pearson correlation of pred and obs over valid pixels; NaN if < 2 pixels or a constant field."""
    p, o = _valid_pairs(pred, obs, mask)
    if p.size < 2:
        return np.nan
    p, o = p - p.mean(), o - o.mean()
    return float(_ratio(np.sum(p * o), np.sqrt(np.sum(p * p) * np.sum(o * o))))


@masked_as_missing
def pmse(pred, obs, mask=None, step_minutes=5):
    """pMSE as SmaAt-UNet and SpaT-SparK report it: MSE per pixel of step accumulations.

    SmaAt-UNet (calc_metrics_test_set.py) stores KNMI 5-minute accumulations divided by
    47.83; it multiplies the network output back by 47.83 (mm per 5 min), sums the
    squared errors over the test set and divides by the number of pixels ("mse_pixel"):
    the mean squared error of the 5-minute accumulation in mm, per pixel. From rain
    rates in mm/h that is MSE / (60 / step_minutes)^2. This is the pMSE column of seed
    004's table (SmaAt-UNet 0.0145 there, on NL-50).

    Parameters
    ----------
    pred, obs : array_like (..., H, W), mm/h
    step_minutes : float
        Accumulation period of the published score (5 for NL-50).

    Returns
    -------
    float
        pMSE in (mm per step)^2.
    """
    return mse(pred, obs, mask) / (60.0 / step_minutes) ** 2


@masked_as_missing
def continuous_scores(pred, obs, mask=None):
    """n (valid pixels), mse, rmse, mae, bias (mean pred - obs), corr (Pearson), mean_pred, mean_obs."""
    p, o = _valid_pairs(pred, obs, mask)
    if p.size == 0:
        return {"n": 0, **{k: np.nan for k in ("mse", "rmse", "mae", "bias", "corr", "mean_pred",
                                               "mean_obs")}}
    error = p - o
    return {"n": int(p.size), "mse": float(np.mean(error ** 2)),
            "rmse": float(np.sqrt(np.mean(error ** 2))), "mae": float(np.mean(np.abs(error))),
            "bias": float(np.mean(error)), "corr": pearson_r(p, o), "mean_pred": float(p.mean()),
            "mean_obs": float(o.mean())}


# --------------------------------------------------------------------------- spatial: FSS
def _fraction_sums(pred, obs, valid, threshold, windows):
    """Sums of Sf^2, Sf*So, So^2 over all pixels for each window size: array (3, len(windows)).

    Sf/So = window-mean event fractions. Invalid pixels are non-events in both fields
    (pysteps sets a NaN to a non-event); the fractions are window x window means with zeros
    outside the domain, as scipy's uniform_filter (mode "constant") in
    pysteps.verification.spatialscores.fss. They are counted exactly with integral images
    (numba; a stack (..., H, W) frame by frame, every window from one integral image), so the
    sums match pysteps' to float rounding (tests/test_metrics.py) at a fraction of the cost.
    """
    windows = np.atleast_1d(np.asarray(windows, dtype=np.int64))
    f = (events(pred, threshold) & valid).reshape((-1,) + np.shape(pred)[-2:]).view(np.uint8)
    o = (events(obs, threshold) & valid).reshape(f.shape).view(np.uint8)
    sums = np.zeros((3, len(windows)), dtype=np.int64)
    for frame_f, frame_o in zip(f, o):
        box = _event_box(frame_f | frame_o, int(windows.max()))
        if box is not None:
            sums += _box_count_products(frame_f[box], frame_o[box], windows)
    return sums.astype(np.float64) / windows.astype(np.float64) ** 4


def _event_box(events_either, window):
    """(rows, cols) slices of the part of a frame where a window x window box around a pixel can
    hold an event (the events' bounding box grown by the window, cut to the frame): the counts are
    zero elsewhere, so the sums over it are exact and sparse events cost little. None: no event."""
    rows, cols = np.flatnonzero(events_either.any(axis=1)), np.flatnonzero(events_either.any(axis=0))
    if not len(rows):
        return None
    return (slice(max(rows[0] - window, 0), rows[-1] + window + 1),
            slice(max(cols[0] - window, 0), cols[-1] + window + 1))


@numba.njit(parallel=True, cache=True)
def _box_count_products(f, o, windows):
    """(3, n_windows): sum cf^2, sum cf*co, sum co^2 over pixels, cf/co = event counts in the
    w x w box around each pixel (rows i - w // 2 .. i + (w - 1) // 2, likewise columns)."""
    n_y, n_x = f.shape
    pf = np.zeros((n_y + 1, n_x + 1), np.int32)
    po = np.zeros((n_y + 1, n_x + 1), np.int32)
    for i in range(n_y):
        for j in range(n_x):
            pf[i + 1, j + 1] = pf[i, j + 1] + pf[i + 1, j] - pf[i, j] + f[i, j]
            po[i + 1, j + 1] = po[i, j + 1] + po[i + 1, j] - po[i, j] + o[i, j]
    rows = np.zeros((n_y, 3, len(windows)), np.int64)
    for i in numba.prange(n_y):
        for k in range(len(windows)):
            before, after = windows[k] // 2, (windows[k] - 1) // 2
            top, bottom = max(i - before, 0), min(i + after + 1, n_y)
            for j in range(n_x):
                left, right = max(j - before, 0), min(j + after + 1, n_x)
                cf = np.int64(pf[bottom, right] - pf[top, right] - pf[bottom, left] + pf[top, left])
                co = np.int64(po[bottom, right] - po[top, right] - po[bottom, left] + po[top, left])
                rows[i, 0, k] += cf * cf
                rows[i, 1, k] += cf * co
                rows[i, 2, k] += co * co
    return rows.sum(axis=0)


def _fss_from_sums(sum_ff, sum_fo, sum_oo):
    """FSS = 1 - sum (Sf - So)^2 / sum (Sf^2 + So^2); NaN where there is no event at all."""
    sum_ff, sum_fo, sum_oo = (np.asarray(s, dtype=np.float64) for s in (sum_ff, sum_fo, sum_oo))
    return 1.0 - _ratio(sum_ff - 2.0 * sum_fo + sum_oo, sum_ff + sum_oo)


@masked_as_missing
def fss(pred, obs, threshold, window, mask=None):
    """Fractions skill score (Roberts and Lean 2008) at one threshold and window size.

    Same definition as pysteps.verification.spatialscores.fss: binary event fields
    (value >= threshold), fractions = mean over a window x window square (scipy
    uniform_filter, mode "constant", zeros outside the domain), then
    FSS = 1 - sum (Sf - So)^2 / sum (Sf^2 + So^2), the sums over every pixel of every
    frame (a stack (..., H, W) is filtered frame by frame and pooled).

    Parameters
    ----------
    pred, obs : array_like (..., H, W), e.g. mm/h
    threshold : float
        Event threshold (value >= threshold).
    window : int
        Side of the square neighbourhood, pixels (1 = pixel by pixel).
    mask : array_like of bool, optional
        Pixels outside the mask (and NaN pixels of either field) are non-events in
        both fields; they still take part in the sums (as in pysteps, which turns a
        NaN into a non-event), so the score matches pysteps on fields whose NaN
        pixels coincide.

    Returns
    -------
    float
        FSS in [0, 1]; NaN when neither field has an event.
    """
    if np.ndim(pred) < 2:
        raise ValueError(f"fss needs fields (..., H, W), got shape {np.shape(pred)}")
    valid = valid_pixels(pred, obs, mask)
    return float(_fss_from_sums(*_fraction_sums(pred, obs, valid, threshold, [window])[:, 0]))


# --------------------------------------------------------------------------- image and physical
@masked_as_missing
def psnr(pred, obs, data_range=None, mask=None):
    """Peak signal-to-noise ratio, dB: 10 log10(data_range^2 / MSE) over valid pixels.

    Parameters
    ----------
    data_range : float, optional
        Range of the data (e.g. 1.0 for normalised fields, 100 for %). Default: max - min
        of the valid observations.

    Returns
    -------
    float
        dB; inf for a perfect forecast, NaN with no valid pixel.
    """
    p, o = _valid_pairs(pred, obs, mask)
    if p.size == 0:
        return np.nan
    if data_range is None:
        data_range = float(o.max() - o.min())
    error = float(np.mean((p - o) ** 2))
    return np.inf if error == 0 else float(10.0 * np.log10(data_range ** 2 / error))


def _ssim_maps(pred, obs, data_range, sigma=1.5, truncate=3.5, k1=0.01, k2=0.03):
    """Luminance and contrast-structure maps of SSIM (Wang et al. 2004, eqs. 6, 9, 13).

    pred, obs: float64 (..., H, W) without NaN; Gaussian-weighted local statistics over the last
    two axes (weights summing to one, no sample correction). Returns (l, cs), each (..., H, W):
    l = (2 mu_p mu_o + C1) / (mu_p^2 + mu_o^2 + C1), cs = (2 cov + C2) / (var_p + var_o + C2),
    C1 = (k1 L)^2, C2 = (k2 L)^2, L = data_range; SSIM = l * cs. Only window centres at least
    int(truncate * sigma + 0.5) pixels from every edge see their whole window.
    """
    sigmas = (0,) * (pred.ndim - 2) + (sigma, sigma)

    def blur(x):
        return ndimage.gaussian_filter(x, sigmas, mode="reflect", truncate=truncate)

    mu_p, mu_o = blur(pred), blur(obs)
    var_p = blur(pred * pred) - mu_p ** 2
    var_o = blur(obs * obs) - mu_o ** 2
    cov = blur(pred * obs) - mu_p * mu_o
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    return ((2 * mu_p * mu_o + c1) / (mu_p ** 2 + mu_o ** 2 + c1),
            (2 * cov + c2) / (var_p + var_o + c2))


@masked_as_missing
def ssim(pred, obs, data_range=None, mask=None, sigma=1.5, truncate=3.5, k1=0.01, k2=0.03):
    """Structural similarity index (Wang et al. 2004), Gaussian-weighted, mean over the field.

    Local means, variances and covariance use a Gaussian window (sigma 1.5 pixels,
    truncated at 3.5 sigma: 11 x 11); SSIM = (2 mu_p mu_o + C1)(2 cov + C2) /
    ((mu_p^2 + mu_o^2 + C1)(var_p + var_o + C2)), C1 = (k1 L)^2, C2 = (k2 L)^2 with
    L = data_range; variances with weights summing to one (no sample correction).
    The map is averaged over the window centres whose whole window lies inside the
    field and on valid pixels (finite in both, mask True); for a field without NaN
    this is scikit-image's structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=L) with its border crop (tested against
    scikit-image and against a brute-force loop). A stack (..., H, W) is treated frame
    by frame and the maps pooled (`ssim_sums` gives the pooled sum and count, for an
    exact score over many batches).

    Parameters
    ----------
    pred, obs : array_like (..., H, W)
    data_range : float, optional
        L above; default max - min of the valid observations.

    Returns
    -------
    float
        SSIM in [-1, 1]; NaN when no window fits on valid pixels.
    """
    total, count = ssim_sums(pred, obs, data_range, mask, sigma, truncate, k1, k2)
    return float(total / count) if count else np.nan


@masked_as_missing
def ssim_sums(pred, obs, data_range=None, mask=None, sigma=1.5, truncate=3.5, k1=0.01, k2=0.03):
    """(sum of the SSIM map over the usable window centres, number of those centres); see ssim.

    Adding these over batches and dividing gives the SSIM of the whole set exactly.
    """
    pred, obs = np.asarray(pred, dtype=np.float64), np.asarray(obs, dtype=np.float64)
    if pred.ndim < 2:
        raise ValueError(f"ssim needs fields (..., H, W), got shape {pred.shape}")
    valid = valid_pixels(pred, obs, mask)
    if not valid.any():
        return 0.0, 0
    if data_range is None:
        data_range = float(obs[valid].max() - obs[valid].min())
    radius = int(truncate * sigma + 0.5)
    structure = np.ones((1,) * (pred.ndim - 2) + (2 * radius + 1, 2 * radius + 1), dtype=bool)
    centres = ndimage.binary_erosion(valid, structure=structure, border_value=0)
    if not centres.any():
        return 0.0, 0
    luminance, contrast_structure = _ssim_maps(np.where(valid, pred, 0.0), np.where(valid, obs, 0.0),
                                               data_range, sigma, truncate, k1, k2)
    return float(np.sum((luminance * contrast_structure)[centres])), int(np.count_nonzero(centres))


MS_SSIM_BETAS = (0.2856, 0.3001, 0.2363)  # the seed's three scales (Wang et al. 2003 weights 2-4)


def ms_ssim_frames(pred, obs, data_range, betas=MS_SSIM_BETAS, sigma=1.5, truncate=3.5, k1=0.01, k2=0.03):
    """Multi-scale SSIM (Wang, Simoncelli and Bovik 2003, eq. 7) of every frame: (...,) array.

    Scale j = 1..M (M = len(betas)): the fields averaged over 2 x 2 blocks j - 1 times (odd edge
    rows/columns dropped); cs_j = mean of the contrast-structure map over the window centres that
    see their whole window; the last scale uses SSIM_M = mean of l * cs instead. Negative means
    are set to 0 (torchmetrics' normalize="relu"), then
        MS-SSIM = SSIM_M ^ beta_M * prod_{j < M} cs_j ^ beta_j.
    This is torchmetrics' multiscale_structural_similarity_index_measure (the seed's scorer) with
    kernel 11, sigma 1.5 and the seed's betas (0.2856, 0.3001, 0.2363): the coarsest of three
    scales of a 128 x 128 field is 32 x 32, still larger than the 11 x 11 window.

    pred, obs: (..., H, W) finite (ValueError otherwise), H and W >= 11 * 2^(M - 1).
    data_range: L of the constants C1, C2 (the same at every scale).
    """
    pred, obs = np.asarray(pred, dtype=np.float64), np.asarray(obs, dtype=np.float64)
    if pred.shape != obs.shape or pred.ndim < 2:
        raise ValueError(f"ms_ssim needs two fields (..., H, W) of one shape, got {pred.shape}, {obs.shape}")
    if not (np.isfinite(pred).all() and np.isfinite(obs).all()):
        raise ValueError("ms_ssim needs finite fields (no NaN)")
    radius = int(truncate * sigma + 0.5)
    smallest = min(pred.shape[-2:]) // 2 ** (len(betas) - 1)
    if smallest < 2 * radius + 1:
        raise ValueError(f"ms_ssim with {len(betas)} scales needs fields of at least "
                         f"{(2 * radius + 1) * 2 ** (len(betas) - 1)} pixels, got {pred.shape[-2:]}")
    result = np.ones(pred.shape[:-2])
    for j, beta in enumerate(betas):
        if j:
            pred, obs = (_halve(field) for field in (pred, obs))
        luminance, contrast_structure = _ssim_maps(pred, obs, data_range, sigma, truncate, k1, k2)
        term = contrast_structure if j < len(betas) - 1 else luminance * contrast_structure
        mean = term[..., radius:term.shape[-2] - radius, radius:term.shape[-1] - radius].mean(axis=(-2, -1))
        result = result * np.maximum(mean, 0.0) ** beta
    return result


def _halve(field):
    """Mean over 2 x 2 blocks of the last two axes (odd edge rows/columns dropped)."""
    height, width = field.shape[-2] // 2 * 2, field.shape[-1] // 2 * 2
    field = field[..., :height, :width]
    return field.reshape(*field.shape[:-2], height // 2, 2, width // 2, 2).mean(axis=(-3, -1))


def ms_ssim(pred, obs, data_range, betas=MS_SSIM_BETAS):
    """Mean MS-SSIM over the frames of a stack (..., H, W); see ms_ssim_frames."""
    return float(np.mean(ms_ssim_frames(pred, obs, data_range, betas)))


@masked_as_missing
def negative_count(pred, mask=None):
    """Number of finite forecast pixels below zero (inside mask): 0 for a physical rain field."""
    pred = np.asarray(pred)
    negative = np.isfinite(pred) & (pred < 0)
    if mask is not None:
        negative &= np.broadcast_to(np.asarray(mask, dtype=bool), pred.shape)
    return int(np.count_nonzero(negative))


@masked_as_missing
def mass_violation(pred, obs, mask=None, block=None):
    """Mean absolute error of block means: how far the forecast breaks the observed total.

    Each frame (last two axes) is cut into non-overlapping block x block squares
    (block=None: the whole frame, i.e. the domain-mean rain rate); in every square
    the mean of pred and the mean of obs over the valid pixels are compared, and the
    absolute differences are averaged over all squares with a valid pixel. Units are
    the data's (mm/h: error of the areal-mean rate; times the area and the duration
    gives a water volume). Rows/columns that do not fill a whole block are left out.

    For a super-resolution check against the low-resolution input `lr` (h, w), as in
    seed 003's "mass violation" (each k x k high-resolution square must average to its
    low-resolution pixel), pass obs = np.repeat(np.repeat(lr, k, -2), k, -1), block=k.

    Returns
    -------
    float
        Mean |block mean(pred) - block mean(obs)|, data's units; NaN with no valid pixel.
    """
    pred, obs = np.asarray(pred, dtype=np.float64), np.asarray(obs, dtype=np.float64)
    valid = valid_pixels(pred, obs, mask)
    H, W = pred.shape[-2:]
    by, bx = (H, W) if block is None else (int(block), int(block))
    ny, nx = H // by, W // bx
    shape = pred.shape[:-2] + (ny, by, nx, bx)

    def block_sums(x):
        return x[..., :ny * by, :nx * bx].reshape(shape).sum(axis=(-3, -1))

    counts = block_sums(valid.astype(np.float64))
    difference = block_sums(np.where(valid, pred - obs, 0.0))
    used = counts > 0
    if not used.any():
        return np.nan
    return float(np.mean(np.abs(difference[used] / counts[used])))


# --------------------------------------------------------------------------- probabilistic
@masked_as_missing
def crps_ensemble(ensemble, obs, mask=None, member_axis=0, fair=False):
    """Continuous ranked probability score of an ensemble, mean over valid pixels.

    Energy (kernel) form with m members x_1..x_m and observation y:

        CRPS = mean_i |x_i - y| - 1 / (2 m^2) sum_i sum_j |x_i - x_j|      (standard)
        fair:  the second term uses 1 / (2 m (m - 1))  (unbiased for the ensemble's
               parent distribution; Ferro 2014)

    The standard form equals the integral of (F_ens(x) - 1{x >= y})^2 over x with
    F_ens the ensemble's empirical CDF (pysteps' CRPS, Hersbach 2000). With one member
    both forms reduce to |x_1 - y|: the CRPS of a deterministic forecast is its MAE.
    The double sum is computed from sorted members in O(m log m).

    Parameters
    ----------
    ensemble : array_like
        obs.shape with a members axis inserted at member_axis, e.g. (M, ..., H, W).
    obs : array_like (..., H, W)
    mask : array_like of bool, optional
        Broadcastable to obs. A pixel counts when obs and all members are finite.
    member_axis : int
    fair : bool
        Fair (unbiased) form instead of the standard one.

    Returns
    -------
    float
        CRPS in the data's units; NaN with no valid pixel.
    """
    members = np.moveaxis(np.asarray(ensemble, dtype=np.float64), member_axis, 0)
    obs = np.asarray(obs, dtype=np.float64)
    if members.shape[1:] != obs.shape:
        raise ValueError(f"ensemble shape {np.shape(ensemble)} (members on axis {member_axis}) "
                         f"does not match obs shape {obs.shape}")
    valid = np.isfinite(obs) & np.all(np.isfinite(members), axis=0)
    if mask is not None:
        valid &= np.broadcast_to(np.asarray(mask, dtype=bool), obs.shape)
    x, y = members[:, valid], obs[valid]
    if y.size == 0:
        return np.nan
    m = x.shape[0]
    skill = np.mean(np.abs(x - y), axis=0)
    x = np.sort(x, axis=0)
    rank_weight = (2.0 * np.arange(m) - m + 1)[:, None]
    pair_sum = 2.0 * np.sum(rank_weight * x, axis=0)  # sum_i sum_j |x_i - x_j|
    spread = pair_sum / (2.0 * m * (m - 1)) if (fair and m > 1) else pair_sum / (2.0 * m * m)
    return float(np.mean(skill - spread))


# --------------------------------------------------------------------------- sea ice
def _ocean(pred, obs, land_mask, threshold):
    """Valid ocean pixels; refuses %-valued fields with a fraction threshold."""
    ocean = None if land_mask is None else ~np.asarray(land_mask, dtype=bool)
    valid = valid_pixels(pred, obs, ocean)
    if threshold <= 1.0 and valid.any() and np.max(np.asarray(obs)[valid]) > 1.5:
        raise ValueError(f"sea-ice concentration up to {np.max(np.asarray(obs)[valid]):.1f} "
                         f"looks like %, but the ice threshold {threshold} is a fraction: "
                         "pass threshold=15.0 for % fields")
    return valid


@masked_as_missing
def sea_ice_scores(pred, obs, land_mask=None, threshold=ICE_EDGE_FRACTION, pixel_area_km2=3.125 ** 2):
    """Sea-ice scores over ocean pixels: rmse, mae, binary accuracy, mean IIEE.

    Parameters
    ----------
    pred, obs : array_like (..., H, W)
        Sea-ice concentration, fraction (0..1) by default; for % pass threshold=15.0.
    land_mask : array_like of bool (H, W), optional
        True = land (create_mask.py's mask); land pixels are left out.
    threshold : float
        Ice edge: ice where concentration >= threshold (0.15 = 15 %).
    pixel_area_km2 : float
        Area of one grid cell, km^2 (3.125 km grid: 3.125**2).

    Returns
    -------
    dict
        rmse, mae (data's units, ocean only), binary_accuracy (fraction of ocean pixels on
        the right side of the ice edge), iiee_km2, overestimate_km2, underestimate_km2
        (means over frames, see iiee).
    """
    valid = _ocean(pred, obs, land_mask, threshold)
    p, o = np.asarray(pred, dtype=np.float64)[valid], np.asarray(obs, dtype=np.float64)[valid]
    edge = iiee(pred, obs, pixel_area_km2, land_mask, threshold)
    scores = {"rmse": float(np.sqrt(np.mean((p - o) ** 2))) if p.size else np.nan,
              "mae": float(np.mean(np.abs(p - o))) if p.size else np.nan,
              "binary_accuracy": ice_binary_accuracy(pred, obs, land_mask, threshold)}
    scores.update({key: float(np.mean(value)) for key, value in edge.items()})
    return scores


@masked_as_missing
def ice_binary_accuracy(pred, obs, land_mask=None, threshold=ICE_EDGE_FRACTION):
    """Fraction of valid ocean pixels where pred and obs agree on ice (>= threshold) or no ice."""
    valid = _ocean(pred, obs, land_mask, threshold)
    agree = events(pred, threshold) == events(obs, threshold)
    return float(_ratio(np.count_nonzero(agree & valid), np.count_nonzero(valid)))


@masked_as_missing
def iiee(pred, obs, pixel_area_km2, land_mask=None, threshold=ICE_EDGE_FRACTION):
    """Integrated ice-edge error (Goessling et al. 2016), km^2, per frame.

    IIEE = O + U, where O (overestimate) is the area forecast as ice (concentration
    >= threshold) but observed as open water, and U (underestimate) the area observed
    as ice but forecast as open water, counted over valid ocean pixels and multiplied
    by the pixel area.

    Parameters
    ----------
    pred, obs : array_like (..., H, W)
        Concentration, fraction (or % with threshold=15.0).
    pixel_area_km2 : float
        Area of one grid cell, km^2 (3.125 km grid: 3.125**2 = 9.765625).
    land_mask : array_like of bool (H, W), optional
        True = land, left out.

    Returns
    -------
    dict
        iiee_km2, overestimate_km2, underestimate_km2: float for one (H, W) frame,
        else arrays shaped like the leading axes (one value per frame).
    """
    valid = _ocean(pred, obs, land_mask, threshold)
    forecast_ice = events(pred, threshold) & valid
    observed_ice = events(obs, threshold) & valid
    over = np.count_nonzero(forecast_ice & ~observed_ice, axis=(-2, -1)) * float(pixel_area_km2)
    under = np.count_nonzero(observed_ice & ~forecast_ice, axis=(-2, -1)) * float(pixel_area_km2)
    as_out = float if np.ndim(over) == 0 else np.asarray
    return {"iiee_km2": as_out(over + under), "overestimate_km2": as_out(over),
            "underestimate_km2": as_out(under)}


# --------------------------------------------------------------------------- accumulators
@numba.njit(parallel=True, nogil=True, cache=True)
def _continuous_sums(pred, obs, valid, shift_pred, shift_obs):
    """(9, n_leads) float64: ContinuousAccumulator.SUMS over the valid pixels of each lead, one pass
    (pred, obs (n_leads, N) of any float dtype, computed in float64; valid (n_leads, N) bool).
    p, o are pred, obs minus the shifts. Partial sums over blocks of 1024 pixels keep the rounding
    error near that of numpy's pairwise sums."""
    n_leads, n = pred.shape
    out = np.zeros((9, n_leads))
    for lead in numba.prange(n_leads):
        total = np.zeros(9)
        for begin in range(0, n, 1024):
            part = np.zeros(9)
            for k in range(begin, min(begin + 1024, n)):
                if valid[lead, k]:
                    p, o = np.float64(pred[lead, k]), np.float64(obs[lead, k])
                    e = p - o
                    p, o = p - shift_pred, o - shift_obs
                    part[0] += 1.0
                    part[1] += e
                    part[2] += e * e
                    part[3] += abs(e)
                    part[4] += p
                    part[5] += o
                    part[6] += p * p
                    part[7] += o * o
                    part[8] += p * o
            total += part
        out[:, lead] = total
    return out


def _accumulate(total, batch):
    """total + batch (a copy of batch for the first one); ValueError when the shapes differ
    (a different number of thresholds or lead times than the earlier batches)."""
    if total is None:
        return np.array(batch, copy=True)
    if total.shape != batch.shape:
        raise ValueError(f"batch shape {batch.shape} differs from the earlier batches' {total.shape} "
                         "(different number of thresholds or lead times?)")
    total += batch
    return total


class ContingencyAccumulator:
    """Contingency tables summed over batches, per threshold (and per lead time).

    Parameters
    ----------
    thresholds : sequence of float
        Event thresholds (value >= threshold), data's units (mm/h).
    lead_axis : int, optional
        Axis of pred/obs that holds the lead time (e.g. -3 for (B, T_out, H, W)):
        one table per lead. None: one table over everything.
    strict : bool
        Events are value > threshold (pysteps det_cat_fct / SmaAt-UNet).

    Attributes
    ----------
    table : ndarray of int64, (4, n_thresholds[, n_leads])
        hits, misses, false_alarms, correct_negatives (None before the first update).
    """

    def __init__(self, thresholds, lead_axis=None, strict=False):
        self.thresholds = [float(t) for t in np.atleast_1d(thresholds)]
        self.lead_axis, self.strict, self.table = lead_axis, strict, None

    @masked_as_missing
    def update(self, pred, obs, mask=None):
        """Add one batch. pred, obs: same shape; mask: bool, broadcastable, True = counts."""
        valid = _lead_first(valid_pixels(pred, obs, mask), self.lead_axis)
        pred, obs = _lead_first(pred, self.lead_axis), _lead_first(obs, self.lead_axis)
        n_leads = valid.shape[0]
        valid, pred, obs = (x.reshape(n_leads, -1) for x in (valid, pred, obs))
        table = np.zeros((4, len(self.thresholds), n_leads), dtype=np.int64)
        n_valid = np.count_nonzero(valid, axis=1)
        for i, threshold in enumerate(self.thresholds):
            forecast = events(pred, threshold, self.strict) & valid
            observed = events(obs, threshold, self.strict) & valid
            hits = np.count_nonzero(forecast & observed, axis=1)
            misses = np.count_nonzero(observed, axis=1) - hits
            false_alarms = np.count_nonzero(forecast, axis=1) - hits
            table[:, i] = hits, misses, false_alarms, n_valid - hits - misses - false_alarms
        if self.lead_axis is None:
            table = table[..., 0]
        self._add(table)

    def _add(self, table):
        self.table = _accumulate(self.table, table)

    def merge(self, other):
        """Add another accumulator's tables (same thresholds) to this one."""
        if other.thresholds != self.thresholds:
            raise ValueError("cannot merge accumulators with different thresholds")
        if other.table is not None:
            self._add(other.table)
        return self

    def scores(self):
        """dict: the four counts and every categorical score, arrays (n_thresholds[, n_leads])."""
        if self.table is None:
            raise ValueError("no data: call update() first")
        table = dict(zip(TABLE_KEYS, self.table.copy()))
        return {**table, **categorical_scores(table)}


class ContinuousAccumulator:
    """Sums for MSE, RMSE, MAE, bias and Pearson correlation over batches (per lead time).

    Keeps n, sum e, sum e^2, sum |e| (e = pred - obs) and, for the correlation, the
    sums of p, o, p^2, o^2, p*o with p and o shifted by the first batch's means
    (shifting leaves the correlation unchanged and avoids cancellation).

    Parameters
    ----------
    lead_axis : int, optional
        Axis holding the lead time (one set of sums per lead); None: one set.
    step_minutes : float, optional
        If given, scores() also returns pmse (see pmse) for rain rates in mm/h.
    """

    SUMS = ("n", "e", "e2", "abs_e", "p", "o", "pp", "oo", "po")

    def __init__(self, lead_axis=None, step_minutes=None):
        self.lead_axis, self.step_minutes = lead_axis, step_minutes
        self.sums, self.shift = None, None

    @masked_as_missing
    def update(self, pred, obs, mask=None):
        """Add one batch. pred, obs: same shape; mask: bool, broadcastable, True = counts."""
        valid = _lead_first(valid_pixels(pred, obs, mask), self.lead_axis)
        n_leads = valid.shape[0]
        valid = np.ascontiguousarray(valid.reshape(n_leads, -1))
        pred, obs = (np.ascontiguousarray(_lead_first(np.asarray(a), self.lead_axis).reshape(n_leads, -1))
                     for a in (pred, obs))
        if self.shift is None:
            self.shift = tuple(float(a[valid].astype(np.float64).mean()) if valid.any() else 0.0 for a in (pred, obs))
        sums = _continuous_sums(pred, obs, valid, *self.shift)
        if self.lead_axis is None:
            sums = sums[:, 0]
        self.sums = _accumulate(self.sums, sums)

    def scores(self):
        """dict: n, mse, rmse, mae, bias, corr, mean_pred, mean_obs [, pmse]: floats or (n_leads,)."""
        if self.sums is None:
            raise ValueError("no data: call update() first")
        s = dict(zip(self.SUMS, self.sums))
        n = s["n"]
        mse_value = _ratio(s["e2"], n)
        cov = s["po"] - _ratio(s["p"] * s["o"], n)
        var_p = s["pp"] - _ratio(s["p"] ** 2, n)
        var_o = s["oo"] - _ratio(s["o"] ** 2, n)
        corr = _ratio(cov, np.sqrt(np.clip(var_p * var_o, 0, None)))
        corr = np.where(n >= 2, corr, np.nan)
        scores = {"n": n.astype(np.int64) if np.ndim(n) else int(n), "mse": mse_value,
                  "rmse": np.sqrt(mse_value), "mae": _ratio(s["abs_e"], n), "bias": _ratio(s["e"], n),
                  "corr": corr if np.ndim(corr) else float(corr),
                  "mean_pred": _ratio(s["p"], n) + self.shift[0],
                  "mean_obs": _ratio(s["o"], n) + self.shift[1]}
        if self.step_minutes is not None:
            scores["pmse"] = mse_value / (60.0 / self.step_minutes) ** 2
        return scores


class FSSAccumulator:
    """Fractions-skill-score sums over batches, per threshold, window (and lead time).

    For every (threshold, window) keeps sum Sf^2, sum Sf*So and sum So^2 over all
    pixels of all frames (see fss), so the FSS of the whole set is exact; this is
    pysteps' fss_accum / fss_merge bookkeeping.

    Parameters
    ----------
    thresholds : sequence of float
        Event thresholds (value >= threshold).
    windows : sequence of int
        Square window sides, pixels.
    lead_axis : int, optional
        Axis holding the lead time (not one of the last two, spatial, axes).
    """

    def __init__(self, thresholds, windows, lead_axis=None):
        self.thresholds = [float(t) for t in np.atleast_1d(thresholds)]
        self.windows = [int(w) for w in np.atleast_1d(windows)]
        self.lead_axis, self.sums = lead_axis, None

    @masked_as_missing
    def update(self, pred, obs, mask=None):
        """Add one batch of fields (..., H, W). mask: bool, broadcastable, True = counts."""
        ndim = np.ndim(pred)
        if ndim < 2 or (self.lead_axis is not None and self.lead_axis % ndim >= ndim - 2):
            raise ValueError(f"FSS needs fields (..., H, W) with the lead axis before the spatial "
                             f"axes; got shape {np.shape(pred)}, lead_axis {self.lead_axis}")
        valid = _lead_first(valid_pixels(pred, obs, mask), self.lead_axis)
        pred, obs = _lead_first(pred, self.lead_axis), _lead_first(obs, self.lead_axis)
        n_leads = valid.shape[0]
        sums = np.zeros((3, len(self.thresholds), len(self.windows), n_leads))
        for lead in range(n_leads):
            for i, threshold in enumerate(self.thresholds):
                sums[:, i, :, lead] = _fraction_sums(pred[lead], obs[lead], valid[lead], threshold, self.windows)
        if self.lead_axis is None:
            sums = sums[..., 0]
        self.sums = _accumulate(self.sums, sums)

    def scores(self):
        """dict: fss, array (n_thresholds, n_windows[, n_leads]); NaN where no event at all."""
        if self.sums is None:
            raise ValueError("no data: call update() first")
        return {"fss": _fss_from_sums(*self.sums)}


class DownscalingAccumulator:
    """Super-resolution scores of seed 003 (Harder et al. 2023, table 2) over a whole set, exactly.

    Parameters
    ----------
    factor : int
        Upsampling factor f: each LR pixel is the mean of an f x f block of HR pixels.
    data_range : float
        L of PSNR, SSIM and MS-SSIM: max - min of the set's HR fields (the seed's choice).

    update(pred, obs, lr, ensemble=None) adds one batch, all in physical units (mm/h, fraction):
        pred, obs  (N, ..., H, W)    prediction and true HR fields (finite)
        lr         (N, ..., h, w)    the LR input, h = H / f
        ensemble   (M, N, ..., H, W) optional members (GAN draws; pred is then their mean)

    scores() -> dict of floats:
        mse, rmse, mae, bias (mean pred - obs), corr (Pearson r): over all pixels
        psnr            10 log10(L^2 / mse), dB
        ssim            Gaussian SSIM map pooled over all frames (see ssim)
        ms_ssim         mean over frames of ms_ssim_frames (NaN for frames too small for 3 scales)
        mean_abs_bias   mean over frames of |mean over the frame of (pred - obs)|
        mass_violation  mean over LR pixels of |agg(pred) - lr| (agg = block mean)
        max_rel_mass_violation  max over LR pixels of |agg(pred) - lr| / max(|lr|, agg(|pred|)):
                        the error of the block mean relative to the size of the values in the block
                        (0 for an all-zero block; with an ensemble, agg(|member|) of every member
                        also counts, since float rounding scales with the members' values)
        neg_mean        sum of min(pred, 0) / number of pixels (the seed's 'neg mean')
        neg_num         number of pixels with pred < 0
        crps            CRPS of the ensemble (crps_ensemble); without one, that of pred as a
                        single member, which is its MAE
        n_frames, n_pixels
    Every score adds sums over the batches and divides once at the end.
    """

    def __init__(self, factor, data_range):
        self.factor, self.data_range = int(factor), float(data_range)
        self.continuous = ContinuousAccumulator()
        self.sums = dict.fromkeys(("ssim", "ssim_n", "ms_ssim", "frames", "abs_bias", "mass", "blocks",
                                   "neg_sum", "neg_num", "crps", "pixels"), 0.0)
        self.max_rel = 0.0

    def _block_mean(self, x):
        f = self.factor
        return x.reshape(*x.shape[:-2], x.shape[-2] // f, f, x.shape[-1] // f, f).mean(axis=(-3, -1))

    def update(self, pred, obs, lr, ensemble=None):
        pred, obs, lr = (np.asarray(a, dtype=np.float64) for a in (pred, obs, lr))
        if pred.shape != obs.shape or lr.shape != pred.shape[:-2] + (pred.shape[-2] // self.factor,
                                                                     pred.shape[-1] // self.factor):
            raise ValueError(f"expected pred and obs (..., H, W) and lr (..., H/{self.factor}, W/{self.factor}); "
                             f"got {pred.shape}, {obs.shape}, {lr.shape}")
        s = self.sums
        self.continuous.update(pred, obs)
        total, count = ssim_sums(pred, obs, self.data_range)
        s["ssim"] += total
        s["ssim_n"] += count
        frames = pred.reshape(-1, *pred.shape[-2:]), obs.reshape(-1, *obs.shape[-2:])
        try:
            s["ms_ssim"] += float(np.sum(ms_ssim_frames(*frames, self.data_range)))
        except ValueError:  # too small for three scales
            s["ms_ssim"] = np.nan
        s["frames"] += frames[0].shape[0]
        s["abs_bias"] += float(np.sum(np.abs(np.mean(frames[0] - frames[1], axis=(-2, -1)))))
        error = np.abs(self._block_mean(pred) - lr)
        s["mass"] += float(error.sum())
        s["blocks"] += error.size
        scale = np.maximum(np.abs(lr), self._block_mean(np.abs(pred)))
        if ensemble is not None:  # the members' values set the float precision of their mean
            scale = np.maximum(scale, self._block_mean(np.abs(np.asarray(ensemble, dtype=np.float64))).max(axis=0))
        relative = np.divide(error, scale, out=np.zeros_like(error), where=scale > 0)
        self.max_rel = max(self.max_rel, float(relative.max(initial=0.0)))
        s["neg_sum"] += float(np.minimum(pred, 0).sum())
        s["neg_num"] += int(np.count_nonzero(pred < 0))
        members = pred[None] if ensemble is None else np.asarray(ensemble, dtype=np.float64)
        s["crps"] += crps_ensemble(members, obs) * obs.size
        s["pixels"] += obs.size

    def scores(self):
        s = self.sums
        if not s["pixels"]:
            raise ValueError("no data: call update() first")
        out = {k: float(v) for k, v in self.continuous.scores().items() if k in ("mse", "rmse", "mae", "bias", "corr")}
        out["psnr"] = float(10 * np.log10(self.data_range ** 2 / out["mse"])) if out["mse"] > 0 else np.inf
        out.update(ssim=s["ssim"] / s["ssim_n"] if s["ssim_n"] else np.nan, ms_ssim=s["ms_ssim"] / s["frames"],
                   mean_abs_bias=s["abs_bias"] / s["frames"], mass_violation=s["mass"] / s["blocks"],
                   max_rel_mass_violation=self.max_rel, neg_mean=s["neg_sum"] / s["pixels"],
                   neg_num=int(s["neg_num"]), crps=s["crps"] / s["pixels"], n_frames=int(s["frames"]),
                   n_pixels=int(s["pixels"]))
        return out
