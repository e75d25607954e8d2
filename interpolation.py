"""Gap-filling kernels shared by consolidate_data.py (sea ice) and preproc.py (nowcasting).

Stage 1, `fill_time_linear`: in each pixel's time series, a run of NaN with a
valid value on both sides and at most `max_gap` steps long is filled linearly
between those two values. Runs that touch the first or last step, or are
longer, stay NaN.

Stage 2, `fill_gaussian`: each pixel still NaN (and fillable, e.g. not land)
becomes the Gaussian-weighted mean of the usable values in a box around it,
computed as a normalised separable convolution; `fill_gaussian_bruteforce` is
the literal box sum, the correctness oracle for tests and benchmarks.

All kernels work on stacks shaped (T, H, W), T being a regular time axis
(days for sea ice, `time_step_minutes` for nowcasting), so distances in time
are index differences.
"""
import numba
import numpy as np


@numba.njit(parallel=True, cache=True)
def _fill_time_linear_kernel(stack, max_gap, filled):
    n_t, n_y, n_x = stack.shape
    for y in numba.prange(n_y):
        for x in range(n_x):
            last_valid = -1  # index of the last valid step seen, -1 before the first
            t = 0
            while t < n_t:
                if not np.isnan(stack[t, y, x]):
                    last_valid = t
                    t += 1
                    continue
                start = t  # first NaN of a run
                while t < n_t and np.isnan(stack[t, y, x]):
                    t += 1
                run = t - start
                if last_valid >= 0 and t < n_t and run <= max_gap:
                    a = np.float64(stack[last_valid, y, x])
                    b = np.float64(stack[t, y, x])
                    for k in range(run):
                        frac = (k + 1) / (run + 1)
                        stack[start + k, y, x] = a + (b - a) * frac
                        filled[start + k, y, x] = True


def fill_time_linear(stack, max_gap):
    """Fill short NaN runs along axis 0, in place.

    stack: float array (T, H, W), any unit; modified in place (float32 or float64).
    max_gap: longest run (in steps) that is filled; 0 fills nothing.
    Returns a bool array (T, H, W), True where a value was filled.
    """
    if stack.ndim != 3:
        raise ValueError(f"fill_time_linear expects (T, H, W), got shape {stack.shape}")
    if not stack.flags.c_contiguous:
        raise ValueError("fill_time_linear expects a C-contiguous array (it fills in place)")
    filled = np.zeros(stack.shape, dtype=np.bool_)
    if max_gap > 0 and stack.size:
        _fill_time_linear_kernel(stack, int(max_gap), filled)
    return filled


# --------------------------------------------------------------------------- stage 2: Gaussian
# Each pixel to fill becomes sum(w*v) / sum(w) over the usable values v in the
# box [t +- time_window] x [y +- space_window] x [x +- space_window], clipped to
# the stack and the grid, with w = exp(-(dy^2 + dx^2 + alpha*dt^2) / (2*sigma^2));
# when sum(w) < MIN_WEIGHT_SUM the pixel gets 0 and is reported as "no neighbour".
#
# The box is a product of three intervals and w a product of three factors, so
# num = G * (V M) and den = G * M are separable convolutions (V the values, 0 where
# not usable, M the 0/1 usable indicator, G three 1-D truncated Gaussians). They
# are computed time first (only over the frames that are needed), then y, then x
# (the x pass only over runs of pixels to fill), in float64. Where the time pass
# found no usable value in a block of columns (den = num = 0, e.g. inland), the
# y pass skips it: adding w * 0 to a sum changes no bit.
#
# Precision and underflow. Every 1-D weight is <= 1, so every partial product met
# on the way (wt, wt*wy) is >= the full weight wt*wy*wx: a weight that is a normal
# float64 in the brute force (exp of the whole exponent) is a normal float64 in
# the separable product too, with a relative difference of at most a few ulp
# times the exponent (< 1e-13 down to 1e-300). All terms of num and den are >= 0
# for values >= 0, so both sums, and num/den, carry a relative error of about
# (number of terms) * 1e-16 on top. Weights that underflow (below ~1e-308, e.g.
# sigma = 0.3 at distance 10) differ between the two, but they cannot move
# sum(w) across MIN_WEIGHT_SUM = 1e-9 nor num/den by more than 1e-299 relative.
# So the two agree to ~1e-13 relative (the benchmark measures ~1e-14); only a
# sum(w) within ~1e-13 relative of 1e-9 could be decided differently, a
# borderline that tests avoid by their choice of data and parameters.
# The summation order per pixel is fixed (ascending dt, dy, dx), there is no
# reduction across threads and fastmath is off: results are deterministic and
# do not depend on which frames surround the stack (batching changes nothing).
MIN_WEIGHT_SUM = 1e-9


def gaussian_weights(window, sigma, alpha=1.0):
    """1-D weights exp(-alpha * d^2 / (2 sigma^2)) for d = 0..window, float64 (window + 1,)."""
    d = np.arange(int(window) + 1, dtype=np.float64)
    return np.exp(-float(alpha) * d * d / (2.0 * float(sigma) ** 2))


BLOCK = 64  # columns per block of the "any usable value in the time box" flags


@numba.njit(parallel=True, cache=True)
def _time_conv(neighbours, t, time_weights, num, den, block_used):
    """Time pass for frame t: num/den (H, W) float64 = sum over dt (ascending) of wt(dt) * (v, 1)
    at the usable (non-NaN) v of frame t+dt; block_used (H, ceil(W / BLOCK)) = any den > 0."""
    n_t, n_y, n_x = neighbours.shape
    tw = time_weights.shape[0] - 1
    t_lo, t_hi = max(0, t - tw), min(n_t - 1, t + tw)
    for y in numba.prange(n_y):
        for x in range(n_x):
            num[y, x] = 0.0
            den[y, x] = 0.0
        for tt in range(t_lo, t_hi + 1):
            w = time_weights[abs(tt - t)]
            for x in range(n_x):
                v = neighbours[tt, y, x]
                if not np.isnan(v):
                    num[y, x] += w * np.float64(v)
                    den[y, x] += w
        for b in range(block_used.shape[1]):
            block_used[y, b] = False
            for x in range(b * BLOCK, min(n_x, (b + 1) * BLOCK)):
                if den[y, x] != 0.0:
                    block_used[y, b] = True
                    break


@numba.njit(cache=True)
def _accumulate(dst, src, w):
    """dst += w * src over 1-D slices (a plain loop from 0, which LLVM vectorises)."""
    for i in range(dst.shape[0]):
        dst[i] += w * src[i]


@numba.njit(parallel=True, cache=True)
def _space_conv_fill(num, den, block_used, space_weights, to_fill, out, no_neighbour):
    """y then x pass of num/den (H, W); writes num/den (or 0) into `out` where to_fill.

    Per row: the y pass sums rows y-sw..y+sw (ascending) into row buffers over the
    columns within sw of the row's pixels to fill, skipping blocks where den is 0
    (adding w * 0 changes no bit); the x pass sums the shifted row buffers
    (ascending dx) over each run of pixels to fill. Both are vectorised across x.
    """
    n_y, n_x = num.shape
    sw = space_weights.shape[0] - 1
    for y in numba.prange(n_y):
        first, last = n_x, -1  # columns of the first and last pixel to fill in this row
        for x in range(n_x):
            if to_fill[y, x]:
                first = min(first, x)
                last = x
        if last < 0:
            continue
        x_lo, x_hi = max(0, first - sw), min(n_x - 1, last + sw)
        row_num = np.zeros(n_x, np.float64)
        row_den = np.zeros(n_x, np.float64)
        for yy in range(max(0, y - sw), min(n_y - 1, y + sw) + 1):
            w = space_weights[abs(yy - y)]
            for b in range(x_lo // BLOCK, x_hi // BLOCK + 1):
                if block_used[yy, b]:
                    a, e = max(x_lo, b * BLOCK), min(x_hi + 1, (b + 1) * BLOCK)
                    _accumulate(row_num[a:e], num[yy, a:e], w)
                    _accumulate(row_den[a:e], den[yy, a:e], w)
        sum_num = np.zeros(n_x, np.float64)
        sum_den = np.zeros(n_x, np.float64)
        x = first
        while x <= last:
            if not to_fill[y, x]:
                x += 1
                continue
            run_start = x
            while x <= last and to_fill[y, x]:
                x += 1
            run_end = x - 1
            for dx in range(-sw, sw + 1):
                w = space_weights[abs(dx)]
                a, b = max(run_start, -dx), min(run_end, n_x - 1 - dx)  # x + dx on the grid
                if b >= a:
                    _accumulate(sum_num[a:b + 1], row_num[a + dx:b + dx + 1], w)
                    _accumulate(sum_den[a:b + 1], row_den[a + dx:b + dx + 1], w)
            for xx in range(run_start, run_end + 1):
                if sum_den[xx] < MIN_WEIGHT_SUM:
                    out[y, xx] = 0.0
                    no_neighbour[y, xx] = True
                else:
                    out[y, xx] = sum_num[xx] / sum_den[xx]


@numba.njit(parallel=True, cache=True)
def _brute_frame(neighbours, t, box_weights, to_fill, out, no_neighbour):
    """The literal box sum at every to_fill pixel of frame t (the oracle)."""
    n_t, n_y, n_x = neighbours.shape
    tw, sw = box_weights.shape[0] // 2, box_weights.shape[1] // 2
    for y in numba.prange(n_y):
        for x in range(n_x):
            if not to_fill[y, x]:
                continue
            s_num, s_den = 0.0, 0.0
            for tt in range(max(0, t - tw), min(n_t - 1, t + tw) + 1):
                for yy in range(max(0, y - sw), min(n_y - 1, y + sw) + 1):
                    for xx in range(max(0, x - sw), min(n_x - 1, x + sw) + 1):
                        v = neighbours[tt, yy, xx]
                        if not np.isnan(v):
                            w = box_weights[tt - t + tw, yy - y + sw, xx - x + sw]
                            s_num += w * np.float64(v)
                            s_den += w
            if s_den < MIN_WEIGHT_SUM:
                out[y, x] = 0.0
                no_neighbour[y, x] = True
            else:
                out[y, x] = s_num / s_den


def _gaussian_setup(values, fillable, usable, time_window, space_window, sigma, frames):
    """Check arguments; return (neighbours, offset, first, stop, fillable) for the kernels."""
    if values.ndim != 3:
        raise ValueError(f"expected values shaped (T, H, W), got {values.shape}")
    if values.dtype not in (np.float32, np.float64):
        raise ValueError(f"expected float32 or float64 values, got {values.dtype}")
    if time_window < 0 or space_window < 0 or not sigma > 0:
        raise ValueError(f"need time_window >= 0, space_window >= 0, sigma > 0; got "
                         f"{time_window}, {space_window}, {sigma}")
    n_t = values.shape[0]
    first, stop = (0, n_t) if frames is None else (int(frames[0]), int(frames[1]))
    if not 0 <= first <= stop <= n_t:
        raise ValueError(f"frames {frames} outside 0..{n_t}")
    lo, hi = max(0, first - int(time_window)), min(n_t, stop + int(time_window))
    neighbours = values[lo:hi]
    if usable is not None:
        usable = np.broadcast_to(usable, values.shape)[lo:hi]
        neighbours = np.where(usable, neighbours, np.nan).astype(values.dtype)
    neighbours = np.ascontiguousarray(neighbours)
    if fillable is not None:
        fillable = np.broadcast_to(fillable, values.shape)
    return neighbours, lo, first, stop, fillable


def _gaussian_frames(values, fillable, first, stop, fill_frame):
    """Loop over frames first..stop-1: copy the frame, fill its NaN pixels with fill_frame()."""
    n_y, n_x = values.shape[1:]
    filled = np.empty((stop - first, n_y, n_x), values.dtype)
    no_neighbour = np.zeros((stop - first, n_y, n_x), np.bool_)
    for i, t in enumerate(range(first, stop)):
        filled[i] = values[t]
        to_fill = np.isnan(values[t])
        if fillable is not None:
            to_fill &= fillable[t]
        fill_frame(t, to_fill, filled[i], no_neighbour[i])
    return filled, no_neighbour


def fill_gaussian(values, fillable, usable, time_window, space_window, alpha, sigma, frames=None):
    """Stage 2: fill NaN pixels with the Gaussian-weighted mean of their box (separable, exact).

    values: float32 (or float64) (T, H, W), % (any unit), NaN where missing; not modified. Usable
        neighbours are the non-NaN values (observed or filled in stage 1).
    fillable: bool (T, H, W) or (H, W), pixels that may be filled (e.g. not land);
        the NaN pixels among them are filled. None: every NaN pixel.
    usable: bool (T, H, W) or (H, W), pixels that may serve as neighbours (e.g. not
        land); None: every non-NaN pixel. A NaN pixel is never usable.
    time_window: half-width of the box in frames (days); space_window: in pixels.
    alpha: weight of time against space; sigma: kernel width in pixels.
    frames: (first, stop): fill only frames first..stop-1; the frames within
        time_window around them serve as neighbours (the rest is never read).
        None: every frame.
    Returns (filled, no_neighbour): filled (n, H, W), same dtype, the frames with
    their fillable NaN pixels replaced (0 where sum(w) < 1e-9); no_neighbour bool
    (n, H, W), True where that happened. Other pixels are copied unchanged.
    """
    neighbours, offset, first, stop, fillable = _gaussian_setup(
        values, fillable, usable, time_window, space_window, sigma, frames)
    time_weights = gaussian_weights(time_window, sigma, alpha)
    space_weights = gaussian_weights(space_window, sigma)
    n_y, n_x = values.shape[1:]
    num, den = np.empty((n_y, n_x), np.float64), np.empty((n_y, n_x), np.float64)
    block_used = np.empty((n_y, -(-n_x // BLOCK)), np.bool_)

    def fill_frame(t, to_fill, out, no_neighbour):
        if not to_fill.any():
            return
        _time_conv(neighbours, t - offset, time_weights, num, den, block_used)
        _space_conv_fill(num, den, block_used, space_weights, to_fill, out, no_neighbour)

    return _gaussian_frames(values, fillable, first, stop, fill_frame)


def fill_gaussian_bruteforce(values, fillable, usable, time_window, space_window, alpha, sigma, frames=None):
    """The same as fill_gaussian, by the literal box sum at each pixel (the correctness oracle).

    Costs (2 tw + 1)(2 sw + 1)^2 per filled pixel; weights from one exp of the whole exponent.
    """
    neighbours, offset, first, stop, fillable = _gaussian_setup(
        values, fillable, usable, time_window, space_window, sigma, frames)
    tw, sw = int(time_window), int(space_window)
    dt = np.arange(-tw, tw + 1, dtype=np.float64)[:, None, None]
    ds = np.arange(-sw, sw + 1, dtype=np.float64)
    box_weights = np.exp(-(ds[None, :, None] ** 2 + ds[None, None, :] ** 2 + float(alpha) * dt ** 2)
                         / (2.0 * float(sigma) ** 2))

    def fill_frame(t, to_fill, out, no_neighbour):
        _brute_frame(neighbours, t - offset, box_weights, to_fill, out, no_neighbour)

    return _gaussian_frames(values, fillable, first, stop, fill_frame)


# --------------------------------------------------------------------------- bilinear sampling
@numba.njit(parallel=True, cache=True)
def _bilinear_kernel(image, x, y, out):
    n_y, n_x = image.shape
    for i in numba.prange(x.shape[0]):
        for j in range(x.shape[1]):
            xc = min(max(x[i, j], 0.0), n_x - 1.0)  # coordinates outside are clamped to the edge
            yc = min(max(y[i, j], 0.0), n_y - 1.0)
            x0 = min(int(np.floor(xc)), max(n_x - 2, 0))
            y0 = min(int(np.floor(yc)), max(n_y - 2, 0))
            x1, y1 = min(x0 + 1, n_x - 1), min(y0 + 1, n_y - 1)
            fx, fy = xc - x0, yc - y0
            top = image[y0, x0] * (1.0 - fx) + image[y0, x1] * fx
            bottom = image[y1, x0] * (1.0 - fx) + image[y1, x1] * fx
            out[i, j] = top * (1.0 - fy) + bottom * fy


def bilinear_sample(image, x, y):
    """Bilinear samples of image (H, W) at pixel coordinates x (column), y (row), each (h, w).

    Coordinates outside the image are clamped to its edge: the same values as
    scipy.ndimage.map_coordinates(image, [y, x], order=1, mode="nearest", prefilter=False) to
    float rounding (tests/test_interpolation.py), about 10x faster on 2 cores (numba, parallel
    over rows). Returns float64 (h, w).
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if np.ndim(image) != 2 or x.ndim != 2 or x.shape != y.shape:
        raise ValueError(f"bilinear_sample needs image (H, W) and x, y (h, w); got {np.shape(image)}, "
                         f"{x.shape}, {y.shape}")
    out = np.empty(x.shape, dtype=np.float64)
    _bilinear_kernel(np.ascontiguousarray(image, dtype=np.float64), x, y, out)
    return out
