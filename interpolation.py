"""Gap-filling kernels shared by consolidate_data.py (sea ice) and preproc.py (nowcasting).

Stage 1, `fill_time_linear`: in each pixel's time series, a run of NaN with a
valid value on both sides and at most `max_gap` steps long is filled linearly
between those two values. Runs that touch the first or last step, or are
longer, stay NaN.

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
