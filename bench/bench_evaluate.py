"""Cost of evaluate.py per forecast window: the previous kernels against the current ones, in one run.

    python bench/bench_evaluate.py --checkpoint outputs/real/default/checkpoints/best.pt \
        --config outputs/real/default/params.json [--windows 4] [--split test]

Scores the first --windows windows of the split (model, persistence, extrapolation; full frames)
twice with evaluate.score_split:
  before  the kernels evaluate.py had before issue 11: scipy map_coordinates for every bilinear
          sample of the motion estimate and the advection, scipy uniform_filter for FSS, numpy
          temporaries for the continuous scores, every window's frames read whole from Zarr, and
          the motion estimated by the extrapolation itself (and once more for a Lagrangian model),
          the network's forward with glibc's default malloc (a fresh mmap per block above 32 MB);
  after   the current code: numba bilinear sampling (interpolation.bilinear_sample), FSS from
          integral images over the events' bounding box, one pass for the continuous scores, the
          frames through the chunk cache (consecutive windows share all but one), one motion
          estimate per window shared by extrapolation and model, the forward's freed memory reused
          (training.reuse_cpu_memory).
Each is timed after one untimed window (kernel compilation). Prints wall and CPU seconds per window
for each and their ratios, and the largest difference between the two
runs' scores (they must agree: the kernels compute the same numbers to float rounding).
"""
import argparse
import contextlib
import os
import sys
import time

import numpy as np
from scipy import ndimage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import baselines  # noqa: E402
import config  # noqa: E402
import dataset  # noqa: E402
import evaluate  # noqa: E402
import metrics  # noqa: E402


def scipy_sample(image, x, y):
    """The sampler baselines.py had before: scipy map_coordinates, order 1, edges clamped."""
    return ndimage.map_coordinates(image, [y, x], order=1, mode="nearest", prefilter=False)


def scipy_fraction_sums(pred, obs, valid, threshold, windows):
    """The FSS sums metrics.py had before: scipy uniform_filter per window (pysteps' way)."""
    out = np.zeros((3, len(windows)))
    f0 = (metrics.events(pred, threshold) & valid).astype(np.float64)
    o0 = (metrics.events(obs, threshold) & valid).astype(np.float64)
    for k, window in enumerate(windows):
        size = (1,) * (np.ndim(pred) - 2) + (int(window), int(window))
        f = ndimage.uniform_filter(f0, size=size, mode="constant") if window > 1 else f0
        o = ndimage.uniform_filter(o0, size=size, mode="constant") if window > 1 else o0
        out[:, k] = np.sum(f * f), np.sum(f * o), np.sum(o * o)
    return out


def numpy_continuous_sums(pred, obs, valid, shift_pred, shift_obs):
    """The continuous-score sums metrics.py had before: numpy, one temporary per term."""
    pred, obs = pred.astype(np.float64), obs.astype(np.float64)
    p = np.where(valid, pred - shift_pred, 0.0)
    o = np.where(valid, obs - shift_obs, 0.0)
    e = np.where(valid, pred - obs, 0.0)
    return np.stack([valid.sum(axis=1), e.sum(axis=1), (e * e).sum(axis=1), np.abs(e).sum(axis=1), p.sum(axis=1),
                     o.sum(axis=1), (p * p).sum(axis=1), (o * o).sum(axis=1), (p * o).sum(axis=1)])


class BeforeForecaster(evaluate.Forecaster):
    """Motion estimated inside the extrapolation, and again for a Lagrangian model (no sharing)."""

    def forecasts(self, x, methods):
        out = {}
        frames = self.last_target_frames(x)
        if "model" in methods:
            motion = np.stack([baselines.motion_field(f[-self.motion_frames:]) for f in frames]) \
                if self.lagrangian else None
            out["model"] = self.model_forecast(x, motion)
        if "persistence" in methods:
            out["persistence"] = baselines.persistence(frames, self.leads)
        if "extrapolation" in methods:
            out["extrapolation"] = baselines.extrapolation(frames, self.leads, self.motion_frames, fill_value=0.0)
        return out


@contextlib.contextmanager
def before_kernels():
    kept = baselines._sample, metrics._fraction_sums, metrics._continuous_sums, evaluate.reuse_cpu_memory
    baselines._sample, metrics._fraction_sums, metrics._continuous_sums, evaluate.reuse_cpu_memory = \
        scipy_sample, scipy_fraction_sums, numpy_continuous_sums, contextlib.nullcontext
    try:
        yield
    finally:
        baselines._sample, metrics._fraction_sums, metrics._continuous_sums, evaluate.reuse_cpu_memory = kept


def limit_windows(n):
    """Make evaluate's window_starts return only the first n windows of the split (over all stores)."""
    left = {"n": n}

    def first(root, data, stats=None):
        starts = dataset.window_starts(root, data, stats)[:left["n"]]
        left["n"] -= len(starts)
        return starts
    evaluate.window_starts = first


def timed(forecaster, params, split, n_windows):
    """(wall s, CPU s) per window and the report of the first n_windows windows, after one untimed window
    (numba compiles its kernels and torch allocates on first use)."""
    methods = ["model", "persistence", "extrapolation"]
    limit_windows(1)
    evaluate.score_split(forecaster, params, split, methods, batch_size=1)
    limit_windows(n_windows)
    start, cpu_start = time.perf_counter(), time.process_time()
    acc, windows = evaluate.score_split(forecaster, params, split, methods, batch_size=1)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    report = evaluate.metrics_report(acc, params, split, windows, forecaster.leads)
    return (seconds / windows, cpu / windows), report


def largest_difference(a, b):
    worst = 0.0
    for method, scores in a["methods"].items():
        for score, values in scores.items():
            flat_a = np.array(_flatten(values), dtype=float)
            flat_b = np.array(_flatten(b["methods"][method][score]), dtype=float)
            both = np.isfinite(flat_a) & np.isfinite(flat_b)
            worst = max(worst, float(np.max(np.abs(flat_a[both] - flat_b[both]), initial=0.0)))
    return worst


def _flatten(values):
    if isinstance(values, dict):
        return [v for key in values for v in _flatten(values[key])]
    return [np.nan if v is None else v for v in values]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="params.json of the run (e.g. outputs/real/default)")
    parser.add_argument("--checkpoint", required=True, help="training.py checkpoint")
    parser.add_argument("--split", default="test", help="split to score (default: test)")
    parser.add_argument("--windows", type=int, default=4, help="windows scored by each (default: 4)")
    args = parser.parse_args()
    params = config.load_params(args.config)
    device = evaluate.pick_device("cpu")
    model, stats = evaluate.load_model(args.checkpoint, params, device)
    uncached = config.validate(params)
    uncached["data"]["cache_mb"] = 0  # before: every window read whole from Zarr
    with before_kernels():
        before, report_before = timed(BeforeForecaster(model, stats, params, device), uncached, args.split,
                                      args.windows)
    after, report_after = timed(evaluate.Forecaster(model, stats, params, device), params, args.split, args.windows)
    kind = "Lagrangian" if isinstance(model, evaluate.Lagrangian) else "Eulerian"
    print(f"\nevaluate.py, {report_after['n_windows']} windows of the {args.split} split, {kind} model + persistence "
          f"+ extrapolation, {len(params['evaluation']['thresholds'])} thresholds x "
          f"{len(params['evaluation']['fss_windows'])} FSS windows")
    print(f"  {'kernels':<8} {'wall s/window':>14} {'CPU s/window':>13}")
    for name, (wall, cpu) in (("before", before), ("after", after)):
        print(f"  {name:<8} {wall:14.2f} {cpu:13.2f}")
    print(f"  speed-up {before[0] / after[0]:.2f}x wall, {before[1] / after[1]:.2f}x CPU (this process, all threads: "
          "the fairer measure on a shared machine)")
    print(f"  largest score difference between the two: {largest_difference(report_before, report_after):.2e}")


if __name__ == "__main__":
    main()
