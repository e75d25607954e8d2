"""Benchmark of the sea-ice gap filling and of consolidate_data.py on generated n3125 days.

1. Stage 2 (Gaussian): the separable fill_gaussian against the brute-force oracle
   fill_gaussian_bruteforce (same Numba, float64, parallel) on the same stage-1
   output: time ratio (target >= 30x) and max |difference| as a fraction (target
   <= 1e-5). The brute force costs (2tw+1)(2sw+1)^2 per pixel to fill, 10-30 s per
   full frame on 2 shared cores: it runs on --brute_frames frames and is scaled to
   all frames by the number of pixels to fill (its cost is proportional to it).
2. Whole runs of consolidate_data.py (read + fill + write) in a child process:
   days/s and peak RSS for each --batch_sizes (run first, see main).

    python bench/bench_consolidate.py                          # 10 full n3125 days, defaults
    python bench/bench_consolidate.py --days 6 --size 896x608  # quick
    python bench/bench_consolidate.py --run_days 40            # whole runs over 40 days (RSS vs batch)

Days are generated once into --data_dir/asi_<size> and reused.
"""
import argparse
import datetime as dt
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numba  # noqa: E402

from config import SCHEMA, run_main  # noqa: E402
from asi_files import read_day  # noqa: E402
from generate_data import asi_filename, asi_grid, date_range, parse_shape, write_asi_days  # noqa: E402
from interpolation import fill_gaussian, fill_gaussian_bruteforce, fill_time_linear  # noqa: E402

FIRST_DAY = dt.date(2024, 3, 1)
DEFAULTS = {k: SCHEMA["sea_ice"][k].default for k in ("time_window", "space_window", "alpha", "sigma", "max_time_gap")}


def ensure_days(folder, n_days, shape):
    """Generate the days FIRST_DAY.. into folder unless all are there; return the dates."""
    days = date_range(FIRST_DAY, FIRST_DAY + dt.timedelta(days=n_days - 1))
    if not all(os.path.exists(os.path.join(folder, asi_filename(d))) for d in days):
        print(f"generating {n_days} days of {shape[0]}x{shape[1]} into {folder} ...", flush=True)
        write_asi_days(folder, days[0], days[-1], shape=shape, seed=0, progress=True)
    return days


def timed(fn, *args, **kwargs):
    """(result, wall seconds, CPU seconds of all threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def bench_kernels(folder, days, brute_frames):
    p = DEFAULTS
    args = (p["time_window"], p["space_window"], p["alpha"], p["sigma"])
    stack = np.ascontiguousarray(np.stack([read_day(os.path.join(folder, asi_filename(d))) for d in days]))
    fill_time_linear(stack[:, :64].copy(), p["max_time_gap"])  # compile (or load the cache) first
    fill_gaussian(stack[:3, :64], None, None, *args, frames=(1, 2))
    fill_gaussian_bruteforce(stack[:3, :64], None, None, *args, frames=(1, 2))
    _, stage1_wall, stage1_cpu = timed(fill_time_linear, stack, p["max_time_gap"])
    to_fill = np.isnan(stack).reshape(len(stack), -1).sum(axis=1)  # pixels to fill per frame, after stage 1
    (fast, fast_none), sep_wall, sep_cpu = timed(fill_gaussian, stack, None, None, *args)

    n = min(brute_frames, len(stack))
    first = (len(stack) - n) // 2  # middle frames: full time windows
    (slow, slow_none), brute_wall, brute_cpu = timed(fill_gaussian_bruteforce, stack, None, None, *args,
                                                     frames=(first, first + n))
    scale = to_fill.sum() / to_fill[first:first + n].sum()
    diff = np.abs(fast[first:first + n].astype(np.float64) - slow) / 100.0  # as a fraction
    # the same in float64 end to end (the float32 outputs above round both to the same numbers), on a
    # 512 x 512 crop across the ice edge (centred 2200 km from the pole, towards -y)
    x, y = asi_grid(stack.shape[1:])
    row, col = int(np.argmin(np.abs(y + 2.2e6))), int(np.argmin(np.abs(x)))
    rows = slice(max(0, row - 256), row + 256)
    cols = slice(max(0, col - 256), col + 256)
    crop = np.ascontiguousarray(stack[:, rows, cols], dtype=np.float64)
    fast64, _ = fill_gaussian(crop, None, None, *args)
    slow64, _ = fill_gaussian_bruteforce(crop, None, None, *args)
    rel64 = np.abs(fast64 - slow64) / np.maximum(np.abs(slow64), 1e-300)
    return {
        "frames": len(stack), "shape": stack.shape[1:], "fill_share": to_fill.sum() / stack.size,
        "stage1": (stage1_wall, stage1_cpu), "separable": (sep_wall, sep_cpu),
        "brute": (brute_wall * scale, brute_cpu * scale), "brute_frames": n, "brute_scaled": n < len(stack),
        "max_diff": float(diff.max()), "decisions_differ": int((fast_none[first:first + n] != slow_none).sum()),
        "max_diff64": float(np.abs(fast64 - slow64).max() / 100.0),
        "max_rel64": float(rel64[slow64 != 0].max(initial=0.0)), "crop": crop.shape[1:],
    }


def bench_run(folder, days, batch_size, out_dir, extension):
    """Run consolidate_data.py in a child; (wall s, peak RSS MiB, in-script s)."""
    output = os.path.join(out_dir, f"bench_b{batch_size}{extension}")
    cmd = [sys.executable, os.path.join(ROOT, "consolidate_data.py"), "--config", os.path.join(ROOT, "params.json"),
           "--source_dir", folder, "--start_date", f"{days[0]:%Y%m%d}", "--end_date", f"{days[-1]:%Y%m%d}",
           "--output_file", output, "--batch_size", str(batch_size), "--land_mask_file", ""]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"consolidate_data.py failed ({status}): {' '.join(cmd)}")
    inside = re.search(r"; ([0-9.]+) s \(", stdout)
    return wall, usage.ru_maxrss / 1024.0, float(inside.group(1)) if inside else float("nan")


def report_kernels(k):
    sep_wall, sep_cpu = k["separable"]
    brute_wall, brute_cpu = k["brute"]
    note = f" (measured on {k['brute_frames']} frames, scaled)" if k["brute_scaled"] else ""
    print(f"\n{k['frames']} days of {k['shape'][0]}x{k['shape'][1]}, {100 * k['fill_share']:.1f}% of pixels "
          "left for stage 2\n")
    print("| step | wall s | CPU s | wall s/day |")
    print("|---|---|---|---|")
    for name, (wall, cpu) in (("stage 1 time-linear", k["stage1"]), ("stage 2 separable", k["separable"]),
                              (f"stage 2 brute force{note}", k["brute"])):
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {wall / k['frames']:.3f} |")
    print(f"\nstage 2 speed-up separable / brute force: {brute_wall / sep_wall:.0f}x wall, "
          f"{brute_cpu / sep_cpu:.0f}x CPU (target >= 30x)")
    stage1_wall, stage1_cpu = k["stage1"]
    print(f"both stages: {(brute_wall + stage1_wall) / (sep_wall + stage1_wall):.0f}x wall")
    print(f"max |separable - brute force| = {k['max_diff']:.2e} (fraction, target <= 1e-5); "
          f"'no neighbour' decisions that differ: {k['decisions_differ']}")
    print(f"float64 outputs (all {k['frames']} frames, {k['crop'][0]}x{k['crop'][1]} crop across the ice edge): "
          f"max |difference| = {k['max_diff64']:.1e} "
          f"(fraction), max relative = {k['max_rel64']:.1e}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=10, help="days for the kernel comparison (default: 10)")
    parser.add_argument("--size", default="3584x2432", help="grid ROWSxCOLS (default: full n3125, 3584x2432)")
    parser.add_argument("--brute_frames", type=int, default=2,
                        help="frames the brute force runs on, scaled to all (default: 2)")
    parser.add_argument("--run_days", type=int, default=None,
                        help="days of the whole consolidate_data.py runs (default: --days)")
    parser.add_argument("--batch_sizes", default="5,30", help="batch sizes of the whole runs (default: 5,30)")
    parser.add_argument("--format", default=".nc", choices=(".nc", ".zarr"), help="output of the runs (default: .nc)")
    parser.add_argument("--data_dir", default=os.path.join(ROOT, "data", "bench"),
                        help="where generated days are kept (default: data/bench)")
    parser.add_argument("--skip_runs", action="store_true", help="only the kernel comparison")
    parser.add_argument("--skip_kernels", action="store_true", help="only the whole runs")
    args = parser.parse_args(argv)
    shape = parse_shape(args.size)
    run_days = args.run_days or args.days
    folder = os.path.join(args.data_dir, f"asi_{shape[0]}x{shape[1]}")
    days = ensure_days(folder, max(args.days, run_days), shape)
    print(f"{numba.get_num_threads()} Numba threads; parameters {DEFAULTS}", flush=True)

    # the whole runs first: Linux carries the RSS of the forked parent into the child's ru_maxrss
    # across exec, so they must start while this process is still small
    if not args.skip_runs:
        print(f"\nconsolidate_data.py, {run_days} days, {args.format}:\n")
        print("| batch_size | wall s | days/s | in-script s | peak RSS MiB |")
        print("|---|---|---|---|---|")
        with tempfile.TemporaryDirectory(dir=args.data_dir) as out_dir:
            for batch_size in (int(b) for b in args.batch_sizes.split(",")):
                wall, rss, inside = bench_run(folder, days[:run_days], batch_size, out_dir, args.format)
                print(f"| {batch_size} | {wall:.1f} | {run_days / wall:.2f} | {inside:.1f} | {rss:.0f} |", flush=True)
    if not args.skip_kernels:
        report_kernels(bench_kernels(folder, days[:args.days], args.brute_frames))
    return 0


if __name__ == "__main__":
    run_main(main)
