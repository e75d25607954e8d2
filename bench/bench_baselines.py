"""Speed and skill of the baselines (persistence, our optical-flow extrapolation), and the cost
of scoring a forecast with the metrics.py accumulators.

    python bench/bench_baselines.py                 # all three tables
    python bench/bench_baselines.py --starts 2 --no-pysteps

1. Runtime per forecast of 12 leads from 3 input frames, split into motion estimate and
   advection, on synthetic moving rain fields of 256 x 256 and 512 x 512 pixels (single
   process; scipy.ndimage is single-threaded), with the motion error on the rainy pixels.
2. Real radar events (../shared/data/radar, full frames; skipped when absent): CSI at 1 mm/h
   per lead (12 leads of the event's own time step) over --starts forecast start times per
   event, for persistence, our extrapolation and, unless --no-pysteps, pysteps' Proesmans
   variational optical flow (the ROVER family; no OpenCV needed) with pysteps' semi-Lagrangian
   extrapolation, on the same log(1 + R) fields.
3. Scoring cost: one update of ContingencyAccumulator / ContinuousAccumulator / FSSAccumulator
   (params.json's evaluation.thresholds and fss_windows) with a (12, 765, 700) forecast.
"""
import argparse
import contextlib
import io
import os
import sys
import time
import warnings

import numpy as np
from scipy import ndimage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import baselines  # noqa: E402
import config  # noqa: E402
import metrics  # noqa: E402

RADAR = os.path.join(os.path.dirname(ROOT), "shared", "data", "radar")
LEADS = 12


def moving_rain(size, velocity, n_frames, seed=0):
    """Rain-like field (mm/h) moving at velocity (vx, vy) pixels/step, cut from a larger field."""
    rng = np.random.default_rng(seed)
    big = ndimage.gaussian_filter(rng.normal(size=(2 * size, 2 * size)), 6)
    big = np.clip(big / big.std() - 0.3, 0, None) ** 1.5 * 10
    lo = size // 2
    return np.clip(np.array([ndimage.shift(big, (velocity[1] * t, velocity[0] * t), order=1)
                             [lo:lo + size, lo:lo + size] for t in range(n_frames)]), 0, None)


def best_of(fn, repeats=3):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def speed_table():
    print(f"1. runtime per forecast ({LEADS} leads, 3 input frames), best of 3")
    print(f"{'size':>9} {'persistence s':>14} {'motion s':>9} {'advect s':>9} {'extrapolation s':>16} "
          f"{'motion err px':>14}")
    velocity = (3.5, -2.0)
    for size in (256, 512):
        frames = moving_rain(size, velocity, 3)
        t_pers, _ = best_of(lambda: baselines.persistence(frames, LEADS))
        t_motion, motion = best_of(lambda: baselines.motion_field(frames))
        t_advect, _ = best_of(lambda: baselines.advect(frames[-1], motion, LEADS))
        t_total, _ = best_of(lambda: baselines.extrapolation(frames, LEADS))
        inner = (slice(size // 8, -size // 8),) * 2
        wet = frames[-1][inner] > 0.1
        error = np.hypot(motion[0][inner] - velocity[0], motion[1][inner] - velocity[1])[wet]
        print(f"{size:>4}x{size:<4} {t_pers:14.4f} {t_motion:9.3f} {t_advect:9.3f} {t_total:16.3f} "
              f"{np.sqrt(np.mean(error ** 2)):14.3f}")


def proesmans_forecast(inputs, leads):
    with contextlib.redirect_stdout(io.StringIO()):  # pysteps prints a line on import
        from pysteps import motion
        from pysteps.extrapolation import semilagrangian
    fields = np.log1p(np.nan_to_num(inputs[-2:], nan=0.0)).astype(np.float64)
    velocity = motion.get_method("proesmans")(fields, verbose=False)
    return semilagrangian.extrapolate(inputs[-1], velocity, leads, allow_nonfinite_values=True)


def real_table(n_starts, use_pysteps):
    if not os.path.isdir(RADAR):
        print(f"2. skipped: {RADAR} not found")
        return
    methods = {"persistence": lambda x: baselines.persistence(x, LEADS),
               "extrapolation": lambda x: baselines.extrapolation(x, LEADS)}
    if use_pysteps:
        methods["pysteps proesmans"] = lambda x: proesmans_forecast(x, LEADS)
    print(f"\n2. real events: CSI at 1 mm/h per lead (steps), {n_starts} start times per event, full frames")
    for name in sorted(f for f in os.listdir(RADAR) if f.endswith(".npz")):
        with np.load(os.path.join(RADAR, name)) as z:
            rain = z["rain_rate"]
        starts = np.linspace(3, len(rain) - LEADS, n_starts).astype(int)
        print(f"{name[:-4]} {rain.shape[1]}x{rain.shape[2]}, starts {[int(s) for s in starts]}")
        print(f"  {'method':<18} {'s/forecast':>10} " + " ".join(f"{k:>5}" for k in (1, 3, 6, 9, 12))
              + f" {'mean':>6}")
        for method, forecast in methods.items():
            accumulator = metrics.ContingencyAccumulator([1.0], lead_axis=0)
            seconds = 0.0
            for start in starts:
                begin = time.perf_counter()
                prediction = forecast(rain[start - 3:start])
                seconds += time.perf_counter() - begin
                accumulator.update(prediction, rain[start:start + LEADS])
            csi = accumulator.scores()["csi"][0]
            print(f"  {method:<18} {seconds / len(starts):10.2f} "
                  + " ".join(f"{csi[k - 1]:5.3f}" for k in (1, 3, 6, 9, 12)) + f" {np.nanmean(csi):6.3f}")


def scoring_table():
    params = config.load_params(os.path.join(ROOT, "params.json"))
    thresholds, windows = params["evaluation"]["thresholds"], params["evaluation"]["fss_windows"]
    rng = np.random.default_rng(0)
    obs = moving_rain(765, (1.0, 0.5), 1)[0][:, :700]
    obs = np.repeat(obs[None], LEADS, axis=0).astype(np.float32)
    pred = np.clip(obs + rng.normal(0, 0.5, obs.shape).astype(np.float32), 0, None)
    coverage = np.ones(obs.shape[1:], bool)
    coverage[:100] = False
    print(f"\n3. scoring cost: one update with a ({LEADS}, 765, 700) forecast, lead_axis=0, "
          f"{len(thresholds)} thresholds, windows {windows}")
    for name, make in (("ContingencyAccumulator", lambda: metrics.ContingencyAccumulator(thresholds, 0)),
                       ("ContinuousAccumulator", lambda: metrics.ContinuousAccumulator(0)),
                       ("FSSAccumulator", lambda: metrics.FSSAccumulator(thresholds, windows, 0))):
        seconds, _ = best_of(lambda: make().update(pred, obs, coverage), repeats=2)
        print(f"  {name:<24} {seconds:7.2f} s")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=4, help="forecast start times per real event (default: 4)")
    parser.add_argument("--no-pysteps", action="store_true", help="leave out pysteps' Proesmans reference (default: off)")
    parser.add_argument("--only", choices=("speed", "real", "scoring"), default=None,
                        help="run one table only (default: all)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.only in (None, "speed"):
        speed_table()
    if args.only in (None, "real"):
        real_table(args.starts, not args.no_pysteps)
    if args.only in (None, "scoring"):
        scoring_table()


if __name__ == "__main__":
    main()
