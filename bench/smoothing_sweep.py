"""How much a Gaussian smoothing of the optical-flow extrapolation gains, per lead and width.

    python bench/smoothing_sweep.py [--config outputs/real/<run>/params.json] [--split val]

Forecasts every window of the split (the stores of bench/real_data.py) with baselines.extrapolation,
smooths each lead with a Gaussian of sigma in --sigmas pixels (scipy.ndimage.gaussian_filter, after
the advection) and prints CSI at 1 mm/h and MSE (mm/h)^2 per lead and sigma, then the sigma that
minimises the MSE at each lead and the CSI there. This is the measurement behind the learned
smoothing of the Lagrangian model (model.LeadSmoothing): the scales that the extrapolation can no
longer place are noise for both scores. Run it on the validation split; the held-out event is not
for choosing settings.
"""
import argparse
import json
import os
import sys

import numpy as np
from scipy.ndimage import gaussian_filter
from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import baselines  # noqa: E402
import config  # noqa: E402
import metrics  # noqa: E402
from dataset import open_store, window_starts  # noqa: E402
from normalization import denormalize_target, target_input_frames, window_steps  # noqa: E402


def sweep(params, stats, split, sigmas, threshold=1.0):
    """Per width: (ContingencyAccumulator at `threshold`, ContinuousAccumulator) per lead, over every
    window of the split (the scores of evaluate.py, metrics.py)."""
    data = params["data"]
    folder = os.path.join(params["paths"]["processed_data"], split)
    leads = [data["lead_steps"] + k for k in range(data["output_steps"])]
    acc = [(metrics.ContingencyAccumulator([threshold], lead_axis=0), metrics.ContinuousAccumulator(lead_axis=0))
           for _ in sigmas]
    for name in [n for n in config.list_folder(folder, "split folder") if n.endswith(".zarr")]:
        root = open_store(os.path.join(folder, name))
        for start in tqdm(window_starts(root, data, stats), desc=name, unit="window"):
            inputs, targets = window_steps(start, data)
            frames = target_input_frames(root["inputs"][inputs], stats)
            forecast = baselines.extrapolation(frames, leads, motion_frames=data["motion_frames"], fill_value=0.0)
            observed = denormalize_target(root["target"][targets], stats)                 # (T_out, H, W) mm/h
            covered = root["coverage"][targets].astype(bool)
            for sigma, accumulators in zip(sigmas, acc):
                smoothed = np.stack([gaussian_filter(f, sigma) for f in forecast]) if sigma else forecast
                for accumulator in accumulators:
                    accumulator.update(smoothed, observed, covered)
    return acc


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="outputs/real/smoothing/params.json",
                        help="params.json of a bench/real_data.py run (default: outputs/real/smoothing/params.json)")
    parser.add_argument("--split", default="val", choices=("train", "val", "test"), help="split (default: val)")
    parser.add_argument("--sigmas", default="0,0.5,1,1.5,2,3,4,5,6,8,10",
                        help="Gaussian widths in pixels, comma-separated (default: 0,0.5,1,1.5,2,3,4,5,6,8,10)")
    args = parser.parse_args(argv)
    params = config.load_params(args.config)
    try:
        sigmas = [float(s) for s in args.sigmas.split(",")]
    except ValueError:
        raise config.UserError(f"--sigmas {args.sigmas}: expected comma-separated widths in pixels, e.g. 0,1,2") from None
    if not sigmas or min(sigmas) < 0:
        raise config.UserError(f"--sigmas {args.sigmas}: widths must be >= 0")
    stats_path = os.path.join(params["paths"]["processed_data"], "stats.json")
    if not os.path.isfile(stats_path):
        raise config.UserError(f"{stats_path}: not found (run bench/real_data.py first; it writes the stores)")
    with open(stats_path) as fh:
        stats = json.load(fh)
    acc = sweep(params, stats, args.split, sigmas)
    csi = np.array([categorical.scores()["csi"][0] for categorical, _ in acc])    # (sigma, lead)
    mse = np.array([continuous.scores()["mse"] for _, continuous in acc])
    minutes = [(params["data"]["lead_steps"] + k) * params["data"]["time_step_minutes"] for k in range(csi.shape[1])]
    print(f"{args.split} split: CSI at 1 mm/h per lead (min) and smoothing sigma (pixels)")
    print("  sigma " + "".join(f"{m:7d}" for m in minutes) + "    mean")
    for j, sigma in enumerate(sigmas):
        print(f"  {sigma:5.1f} " + "".join(f"{v:7.3f}" for v in csi[j]) + f"  {csi[j].mean():6.3f}")
    best = mse.argmin(axis=0)
    lead = np.arange(csi.shape[1])
    print("sigma of the lowest MSE: " + " ".join(f"{sigmas[b]:g}" for b in best))
    print(f"there: CSI mean {csi[best, lead].mean():.4f} (unsmoothed {csi[0].mean():.4f}), "
          f"MSE mean {mse[best, lead].mean():.4f} (unsmoothed {mse[0].mean():.4f})")
    return 0


if __name__ == "__main__":
    config.run_main(main)
