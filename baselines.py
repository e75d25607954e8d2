"""Baseline nowcasts that a model must beat: persistence and optical-flow extrapolation.

    import baselines
    forecast = baselines.persistence(inputs, leads=12)          # (12, H, W)
    forecast = baselines.extrapolation(inputs, leads=[1, 2, 3])  # (3, H, W)
    method = baselines.get_method("extrapolation")               # the same, by name

`inputs` are the last observed frames (..., T_in, H, W), rain rate in mm/h, NaN
outside radar coverage, oldest first, one time step apart; `leads` are lead times in
time steps after the last input (an int n means 1, 2, .., n). Forecasts come back as
(..., len(leads), H, W), same units, NaN where there is no forecast.

Extrapolation is ROVER-like (the operational method the ConvLSTM paper compares
against, seed 002): a dense motion field from the last input frames by variational-
style optical flow, then semi-Lagrangian backward advection of the last frame. It is
our own numpy/scipy implementation (pysteps' Lucas-Kanade needs OpenCV, which the
project does not depend on):

1. motion_field: coarse-to-fine (pyramidal) dense Lucas-Kanade on log(1 + R), with a
   Gaussian-weighted window, iterative warping, Tikhonov regularisation towards the
   coarser estimate (so rain-free areas keep the large-scale motion; the coarsest
   level starts from the domain-wide translation), all consecutive pairs of the
   motion frames sharing one constant motion, and a final Gaussian smoothing.
2. advect: backward semi-Lagrangian scheme with the midpoint rule, one time step at
   a time along curved trajectories of a stationary motion field, bilinear
   interpolation (the scheme of pysteps.extrapolation.semilagrangian, n_iter=1,
   interp_order=1, which the tests compare against).
"""
import numpy as np
from scipy import ndimage

from config import UserError
from interpolation import bilinear_sample


# --------------------------------------------------------------------------- lead times
def lead_list(leads):
    """Lead times in steps: an int n -> [1, .., n]; a sequence -> ascending positive ints."""
    if np.isscalar(leads):
        if int(leads) < 1:
            raise ValueError(f"number of lead times must be >= 1, got {leads}")
        return list(range(1, int(leads) + 1))
    out = [int(lead) for lead in leads]
    if not out or min(out) < 1 or out != sorted(set(out)):
        raise ValueError(f"lead times must be ascending positive steps, got {list(leads)}")
    return out


# --------------------------------------------------------------------------- persistence
def persistence(inputs, leads):
    """Persistence: the last observed frame, repeated for every lead time.

    Parameters
    ----------
    inputs : array_like (..., T_in, H, W)
        Observed frames, oldest first (mm/h). NaN pixels stay NaN (no forecast there);
        the last frame is used as it is, even where an earlier frame had a value.
    leads : int or sequence of int
        Number of lead times, or the lead times in steps (they do not change the values).

    Returns
    -------
    ndarray (..., len(leads), H, W)
        A copy, same dtype as inputs.
    """
    inputs = np.asarray(inputs)
    if inputs.ndim < 3:
        raise ValueError(f"inputs must be (..., T_in, H, W), got shape {inputs.shape}")
    n_leads = len(lead_list(leads))
    return np.repeat(inputs[..., -1:, :, :], n_leads, axis=-3)


# --------------------------------------------------------------------------- motion
def _blur(image, sigma):
    return ndimage.gaussian_filter(image, sigma, mode="nearest")


def _masked_blur(image, weight, sigma):
    """Gaussian blur of image using only pixels with weight (normalised convolution)."""
    numerator = _blur(image * weight, sigma)
    denominator = _blur(weight, sigma)
    return np.where(denominator > 1e-6, numerator / np.maximum(denominator, 1e-6), 0.0), denominator


def _sample(image, x, y):
    """Bilinear samples of image (H, W) at pixel coordinates x (column), y (row); edges clamped
    (scipy's map_coordinates order=1, mode="nearest", computed by interpolation.bilinear_sample)."""
    return bilinear_sample(image, x, y)


def _pyramid(images, weights, n_levels):
    """Lists (finest first) of image stacks (T, h, w) and validity weights (T, h, w) in [0, 1]."""
    levels = [(images, weights)]
    for _ in range(n_levels - 1):
        images, weights = levels[-1]
        smooth, smooth_weight = zip(*(_masked_blur(i, w, 1.0) for i, w in zip(images, weights)))
        levels.append((np.stack(smooth)[:, ::2, ::2], np.stack(smooth_weight)[:, ::2, ::2]))
    return levels


def _structure_tensor(images, weights, gaps, velocity, xx, yy):
    """Sums over consecutive frame pairs of w*[Ix^2, Ix*Iy, Iy^2, Ix*It, Iy*It] at flow `velocity`.

    Frames k and k+1 are gaps[k] steps apart. The later frame of each pair is warped back
    by gap * flow (I_{k+1}(x + g v) should equal I_k(x)), so its gradient enters times g;
    pixels whose warped position falls outside the domain get no weight.
    """
    terms = np.zeros((5,) + images.shape[1:])
    h, w = images.shape[1:]
    for k, gap in enumerate(gaps):
        x, y = xx + gap * velocity[0], yy + gap * velocity[1]
        inside = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)  # outside the domain: unknown
        warped = _sample(images[k + 1], x, y)
        weight = weights[k] * _sample(weights[k + 1], x, y) * inside
        grad_y, grad_x = np.gradient(0.5 * (images[k] + warped))
        grad_x, grad_y, grad_t = gap * grad_x, gap * grad_y, warped - images[k]
        terms += weight * np.stack([grad_x * grad_x, grad_x * grad_y, grad_y * grad_y,
                                    grad_x * grad_t, grad_y * grad_t])
    return terms


def _solve(j_xx, j_xy, j_yy, b_x, b_y, damping):
    """Increment d solving (J + damping I) d = -b, elementwise 2x2 systems."""
    a, c = j_xx + damping, j_yy + damping
    det = a * c - j_xy * j_xy
    return np.stack([-(c * b_x - j_xy * b_y) / det, -(a * b_y - j_xy * b_x) / det])


def motion_field(frames, levels=None, window_sigma=8.0, warps=3, regularization=0.003,
                 smooth_sigma=15.0, min_size=32):
    """Dense motion field from consecutive rain frames (pyramidal Lucas-Kanade).

    The defaults were chosen on the three real radar events in ../shared/data/radar
    (KNMI 5 min, BOM 10 min, 1 km) by CSI at 1 mm/h of the extrapolation.

    Parameters
    ----------
    frames : array_like (T, H, W)
        T >= 2 frames one time step apart, oldest first, mm/h; NaN = no data (left out;
        a wholly missing frame is skipped and its neighbours are paired across the gap).
    levels : int, optional
        Pyramid levels (each halves the resolution); default: as many as keep the
        coarsest level at least `min_size` pixels on its short side.
    window_sigma : float
        Lucas-Kanade Gaussian window, pixels of each level (so 8 * 2^L at level L).
    warps : int
        Warp-and-refine iterations per level.
    regularization : float
        Damping added to the structure tensor, as a fraction of its 99th percentile
        trace on that level: low-texture (rain-free) pixels keep the coarser motion.
    smooth_sigma : float
        Gaussian smoothing of the final field, pixels.

    Returns
    -------
    ndarray (2, H, W), float64
        Motion in pixels per time step: [0] along x (columns, +: to larger column
        index), [1] along y (rows, +: to larger row index); pysteps' layout. The
        content at x moves to x + v in one step.
    """
    frames = np.asarray(frames, dtype=np.float64)
    if frames.ndim != 3 or frames.shape[0] < 2:
        raise ValueError(f"motion_field needs frames (T >= 2, H, W), got shape {frames.shape}")
    H, W = frames.shape[1:]
    valid = np.isfinite(frames)
    present = [k for k in range(len(frames)) if valid[k].any()]  # skip wholly missing scans
    if len(present) < 2:
        return np.zeros((2, H, W))
    gaps = np.diff(present)
    images = np.log1p(np.clip(np.where(valid, frames, 0.0), 0.0, None))[present]
    weights = valid[present].astype(np.float64)
    if levels is None:
        levels = 1
        while min(H, W) // 2 ** levels >= min_size:
            levels += 1
    pyramid = _pyramid(images, weights, max(1, int(levels)))

    velocity = None
    for level, (images_l, weights_l) in reversed(list(enumerate(pyramid))):
        h, w = images_l.shape[1:]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        if velocity is None:  # coarsest level: start from the domain-wide translation
            velocity = _translation(images_l, weights_l, gaps, xx, yy, 2 * warps)
        else:  # upsample the coarser field: coarse pixel i is fine pixel 2i
            velocity = 2.0 * np.stack([_sample(v, xx / 2.0, yy / 2.0) for v in velocity])
        for _ in range(warps):
            terms = _blur(_structure_tensor(images_l, weights_l, gaps, velocity, xx, yy),
                          (0, window_sigma, window_sigma))
            trace = terms[0] + terms[2]
            damping = regularization * np.percentile(trace, 99) + 1e-6
            step = _solve(*terms, damping)
            velocity += np.clip(step, -1.0, 1.0)
    return np.stack([_blur(v, smooth_sigma) for v in velocity])


def _translation(images, weights, gaps, xx, yy, iterations):
    """One motion for the whole level (2, h, w): Lucas-Kanade with the structure tensor summed over
    every pixel, `iterations` warp-and-refine steps of at most 2 pixels each."""
    velocity = np.zeros((2,) + images.shape[1:])
    for _ in range(iterations):
        terms = _structure_tensor(images, weights, gaps, velocity, xx, yy).sum(axis=(1, 2))
        if terms[0] + terms[2] <= 0:
            break
        step = _solve(*terms, 1e-3 * (terms[0] + terms[2]))
        velocity += np.clip(step, -2.0, 2.0)[:, None, None]
    return velocity


# --------------------------------------------------------------------------- advection
def advect(field, velocity, leads, fill_value=np.nan):
    """Semi-Lagrangian backward advection of one field along a stationary motion field.

    For every pixel the trajectory is traced back one time step at a time with the
    midpoint rule (velocity interpolated half a step back), and the forecast at lead k
    is the field bilinearly interpolated at the departure point after k steps.

    Parameters
    ----------
    field : array_like (H, W)
        Field to move (mm/h); NaN = no data.
    velocity : array_like (2, H, W)
        Motion, pixels per step, [0] = x (columns), [1] = y (rows) (see motion_field).
    leads : int or sequence of int
        Lead times in steps.
    fill_value : float
        Forecast where the trajectory leaves the domain (default NaN: unknown; 0.0
        means "no rain comes in from outside").

    Returns
    -------
    ndarray (len(leads), H, W), float64
        NaN where the departure point falls among NaN pixels (bilinear weight of valid
        neighbours < 0.5; elsewhere the valid neighbours are renormalised).
    """
    field = np.asarray(field, dtype=np.float64)
    velocity = np.asarray(velocity, dtype=np.float64)
    leads = lead_list(leads)
    H, W = field.shape
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    valid = np.isfinite(field)
    values, weights = np.where(valid, field, 0.0), valid.astype(np.float64)
    displacement = np.zeros((2, H, W))
    increment = velocity.copy()
    out = np.empty((len(leads), H, W))
    index = 0
    for step in range(1, leads[-1] + 1):
        x_mid = xx + displacement[0] - increment[0] / 2.0
        y_mid = yy + displacement[1] - increment[1] / 2.0
        increment = np.stack([_sample(v, x_mid, y_mid) for v in velocity])
        displacement -= increment
        x, y = xx + displacement[0], yy + displacement[1]
        increment = np.stack([_sample(v, x, y) for v in velocity])
        if step == leads[index]:
            weight = _sample(weights, x, y)
            value = _sample(values, x, y) / np.maximum(weight, 1e-12)
            value[weight < 0.5] = np.nan
            inside = (x >= 0) & (x <= W - 1) & (y >= 0) & (y <= H - 1)
            out[index] = np.where(inside, value, fill_value)
            index += 1
    return out


# --------------------------------------------------------------------------- extrapolation
def extrapolation(inputs, leads, motion_frames=3, fill_value=np.nan, motion=None, **motion_options):
    """Optical-flow extrapolation nowcast (ROVER-like): motion from the last frames, advect the last.

    Parameters
    ----------
    inputs : array_like (..., T_in, H, W)
        Observed frames, oldest first, one step apart, mm/h; NaN = outside coverage.
    leads : int or sequence of int
        Number of lead times, or the lead times in steps after the last input.
    motion_frames : int
        How many of the last input frames feed the motion estimate (>= 2).
    fill_value : float
        Forecast where the trajectory leaves the domain (NaN: unknown; 0.0: no rain).
    motion : array_like (..., 2, H, W), optional
        The motion fields of these inputs when already estimated (motion_field of the last
        motion_frames frames): they are used instead of estimating them again.
    **motion_options
        Passed to motion_field (levels, window_sigma, warps, regularization, smooth_sigma).

    Returns
    -------
    ndarray (..., len(leads), H, W)
        Same float dtype as inputs (float32 stays float32). Values are bilinear
        mixtures of the last frame's values: never negative if the input is not.
    """
    inputs = np.asarray(inputs)
    if inputs.ndim < 3 or inputs.shape[-3] < 2:
        raise ValueError(f"inputs must be (..., T_in >= 2, H, W), got shape {inputs.shape}")
    leads = lead_list(leads)
    dtype = np.result_type(inputs.dtype, np.float32)
    out = np.empty(inputs.shape[:-3] + (len(leads),) + inputs.shape[-2:], dtype=dtype)
    for index in np.ndindex(inputs.shape[:-3]):
        frames = inputs[index][-max(2, int(motion_frames)):]
        velocity = motion_field(frames, **motion_options) if motion is None else np.asarray(motion)[index]
        out[index] = advect(frames[-1], velocity, leads, fill_value)
    return out


METHODS = {"persistence": persistence, "extrapolation": extrapolation}


def get_method(name):
    """The baseline function called `name` ("persistence" or "extrapolation")."""
    if name not in METHODS:
        raise UserError(f"unknown baseline method '{name}': expected one of {', '.join(METHODS)}")
    return METHODS[name]
