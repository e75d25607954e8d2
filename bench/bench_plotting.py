"""Time to draw full n3125 frames (3584 x 2432): the day map, the mask figure and the before/after comparison.

    python bench/bench_plotting.py [--repeat 3]

One generated day is written at full size, then each figure is drawn --repeat
times and the median wall time is printed (reading the file is timed apart).
The day map is also drawn at full resolution (every pixel, stride 1) to show what
the display downsampling (<= plotting.MAX_DISPLAY_PIXELS on the long side) saves;
the ratio is full / downsampled time, the two run alternately in the same process.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

import generate_data  # noqa: E402
import plotting  # noqa: E402
import visualization  # noqa: E402


def timed(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed_pair(fn_a, fn_b, repeat):
    """Median times of fn_a and fn_b, run alternately (a shared machine's load hits both alike)."""
    a, b = [], []
    for _ in range(repeat):
        for fn, times in ((fn_a, a), (fn_b, b)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(a), statistics.median(b)


def full_resolution(fn):
    """fn run with display downsampling off (every pixel drawn)."""
    def run():
        saved = plotting.MAX_DISPLAY_PIXELS
        plotting.MAX_DISPLAY_PIXELS = 10 ** 6
        try:
            fn()
        finally:
            plotting.MAX_DISPLAY_PIXELS = saved
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per case; the median is shown (default: 5)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = generate_data.write_asi_days(tmp, 20240417, 20240417)["files"][0]
        read_s = timed(lambda: visualization.read_sea_ice_field(path), args.repeat)
        z, grid, _, _ = visualization.read_sea_ice_field(path)
        land = np.isnan(z).astype(np.uint8)
        frequency = np.isnan(z).astype(np.float32)
        filled = np.where(np.isnan(z), 50.0, z).astype(np.float32)
        flag = np.where(np.isnan(z), 2, 0).astype(np.uint8)
        out = os.path.join(tmp, "x.png")
        plotting.plot_sea_ice_map(z, grid, out)  # warm-up: imports, coastline file
        rows = [("read one day (netCDF4, 35 MB float32)", read_s, "")]
        day_map = lambda: plotting.plot_sea_ice_map(z, grid, out)  # noqa: E731
        mask_map = lambda: plotting.plot_land_mask(land, frequency, grid, out, threshold=0.85)  # noqa: E731
        map_s, full_s = timed_pair(day_map, full_resolution(day_map), args.repeat)
        mask_s, full_mask_s = timed_pair(mask_map, full_resolution(mask_map), args.repeat)
        stride = plotting.display_stride(z.shape)
        rows.append((f"day map, stride {stride} (visualization.py)", map_s, ""))
        rows.append(("day map, every pixel (stride 1)", full_s, f"{full_s / map_s:.2f}x the stride-{stride} time"))
        rows.append(("mask figure, 2 panels (visualize_mask.py)", mask_s, ""))
        rows.append(("mask figure, every pixel (stride 1)", full_mask_s,
                     f"{full_mask_s / mask_s:.2f}x the stride-{stride} time"))
        rows.append(("comparison, 3 panels (visualization_compare_...)",
                     timed(lambda: plotting.plot_comparison(z, filled, flag, grid, out), args.repeat), ""))
    print(f"full n3125 frame {z.shape[0]} x {z.shape[1]}, median of {args.repeat} runs")
    print(f"{'case':52s} {'seconds':>8s}  note")
    for name, seconds, note in rows:
        print(f"{name:52s} {seconds:8.2f}  {note}")


if __name__ == "__main__":
    main()
