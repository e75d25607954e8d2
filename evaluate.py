"""Verify a trained nowcasting model against persistence and optical-flow extrapolation.

    python evaluate.py [--config params.json] --checkpoint CKPT [--split test]
                       [--methods model,persistence,extrapolation]
    python evaluate.py [--config params.json] --checkpoint CKPT --predict RAW_CASE_DIR [--output F.nc|F.zarr]

Scoring: every method forecasts every valid window of the split (all forecast start
times t0 of every <processed_data>/<split>/<case>.zarr, or only the rainy ones with the NL-50
filter data.rain_filter_fraction > 0, as dataset.window_starts; full frames), in physical units
(mm/h, the inverse of the normalisation in the checkpoint's stats), and is scored where the
target has coverage. Scores are exact over the whole split (contingency tables and sums are
accumulated, metrics.py), per lead time:
  categorical at evaluation.thresholds (event: value >= threshold, mm/h): csi, pod, far, hss
  (standard Heidke), hss_half (= hss / 2: SmaAt-UNet's code and seed 004's table), ets,
  frequency_bias, accuracy, precision, f1; continuous: mse, mae, rmse, bias (mean error), corr,
  pmse (metrics.pmse: MSE of the step accumulation in (mm per step)^2, SmaAt-UNet's "mse_pixel");
  FSS at evaluation.thresholds x evaluation.fss_windows.
Writes <paths.outputs>/eval/<split>/metrics.json:
  {"thresholds": [...], "lead_minutes": [...], "fss_windows": [...], "split", "n_windows",
   "methods": {method: {"csi": {"1.0": [per lead]}, ..., "fss": {"1.0": {"5": [per lead]}},
                        "mse": [per lead], "mae": [per lead], ...}}}
(threshold keys are str(float(t))), table.csv (one row per method and threshold, scores
averaged over the leads; columns in seed 004's order: pmse, accuracy, precision, recall, f1, csi,
far, hss_half = the seed's "HSS", then hss, mse, mae) and verification plots (one PNG per score).

Prediction (--predict): the raw case is placed on the time axis, gap-filled and normalised
with the checkpoint's stats (preproc.py's steps, no new statistics), the model forecasts from
the last valid input window (or --t0), and the forecast is written as NetCDF or Zarr
(rain_rate (lead, y, x) in mm/h, valid times, t0) with a PNG of forecast panels.
"""
import argparse
import csv
import datetime as dt
import json
import os
import tempfile
import warnings

import numpy as np
import torch
import zarr
from tqdm import tqdm

import baselines
import config
import metrics
from atomic import atomic_path
from config import UserError
from dataset import ChunkCache, open_store, window_starts
from model import Lagrangian, build_model
from normalization import check_config, check_store, denormalize_target, target_input_frames, window_steps
from preproc import EPOCH, NoCoverage, minutes_since_epoch, scan_case, write_case
from training import load_checkpoint, load_model_state, pick_device, reuse_cpu_memory

CATEGORICAL = ("csi", "pod", "far", "hss", "hss_half", "ets", "frequency_bias", "accuracy", "precision", "f1")
CONTINUOUS = ("mse", "mae", "rmse", "bias", "corr", "pmse")
PLOTTED = ("csi", "pod", "far", "hss", "fss", "mse", "mae")
# seed 004's columns in its order (its HSS is hss_half, SmaAt-UNet's convention), then the standard HSS, MSE, MAE
TABLE_COLUMNS = ("pmse", "accuracy", "precision", "recall", "f1", "csi", "far", "hss_half", "hss", "mse", "mae")


# --------------------------------------------------------------------------- forecasters
class Forecaster:
    """Forecasts of the model and the baselines for a batch of windows; every output in mm/h."""

    def __init__(self, model, stats, params, device, source="checkpoint"):
        self.model, self.stats, self.device, self.source = model, stats, device, source
        data = params["data"]
        self.leads = [data["lead_steps"] + k for k in range(data["output_steps"])]  # steps after t0
        self.motion_frames = data["motion_frames"]
        self.lagrangian = isinstance(model, Lagrangian)

    def last_target_frames(self, x):
        """The target channel of the inputs x (..., T_in, C, H, W) in mm/h, (..., T_in, H, W); None if it is no input."""
        return target_input_frames(x, self.stats)

    def forecasts(self, x, methods):
        """{method: (B, T_out, H, W) mm/h} for normalised inputs x (B, T_in, C, H, W) numpy.

        The motion of each window (baselines.motion_field of its last data.motion_frames target
        frames) is estimated once and used by the extrapolation and by a Lagrangian model.
        """
        frames = self.last_target_frames(x)
        baseline = [m for m in methods if m != "model"]
        if baseline and frames is None:
            raise UserError(f"--methods {baseline[0]}: the target {self.stats['target']['channel']!r} is not an "
                            f"input channel, so {baseline[0]} has no past frames to extrapolate")
        motion = None
        if "extrapolation" in methods or (self.lagrangian and "model" in methods):
            motion = np.stack([baselines.motion_field(f[-self.motion_frames:]) for f in frames])
        out = {}
        if "model" in methods:
            out["model"] = self.model_forecast(x, motion)
        if "persistence" in methods:
            out["persistence"] = baselines.persistence(frames, self.leads)
        if "extrapolation" in methods:
            out["extrapolation"] = baselines.extrapolation(frames, self.leads, motion_frames=self.motion_frames,
                                                           fill_value=0.0, motion=motion)
        return out

    @torch.no_grad()
    def model_forecast(self, x, motion=None):
        """x: normalised inputs (B, T_in, C, H, W) numpy (motion (B, 2, H, W) for a Lagrangian model)
        -> (B, T_out, H, W) mm/h. A rain-rate target (log1p transform, as preproc.py's non-negative
        channels) is clipped to 0 .. config.RAIN_RATE_MAX: a network can extrapolate its output far
        beyond any rain rate ever measured, which would dominate the MSE."""
        inputs = torch.from_numpy(x).to(self.device)
        with reuse_cpu_memory():
            if self.lagrangian:
                pred = self.model(inputs, torch.from_numpy(motion).to(self.device, inputs.dtype))
            else:
                pred = self.model(inputs)
        out = denormalize_target(pred.float()[:, :, 0], self.stats).cpu().numpy()
        if self.stats["target"]["transform"] == "log1p":
            np.clip(out, 0.0, config.RAIN_RATE_MAX, out=out)
        return out


def load_model(checkpoint, params, device):
    state = load_checkpoint(checkpoint, device)
    for key in ("model", "stats", "params"):
        if key not in state:
            raise UserError(f"{checkpoint}: not a training.py checkpoint (no {key!r})")
    if state["stats"] is None:
        raise UserError(f"{checkpoint}: a sea-ice checkpoint; evaluate.py scores nowcasting models "
                        "(training.py writes the sea-ice test scores to test_metrics.json)")
    ckpt_params = state["params"]
    model = build_model(ckpt_params, len(state["stats"]["channels"]), state["stats"]).to(device)
    load_model_state(model, state["model"], checkpoint)
    model.eval()
    data_keys = ("input_steps", "lead_steps", "output_steps")
    trained = ", ".join(f"data.{k}={ckpt_params['data'][k]}" for k in data_keys)
    wanted = ", ".join(f"data.{k}={params['data'][k]}" for k in data_keys)
    if trained != wanted:
        raise UserError(f"{checkpoint}: trained with {trained}, but the config has {wanted}")
    check_config(params, state["stats"], f"checkpoint {checkpoint}")
    return model, state["stats"]


# --------------------------------------------------------------------------- scoring
def score_split(forecaster, params, split, methods, batch_size, stride=1):
    """Accumulate every method's scores over every window of <processed_data>/<split>."""
    data, evaluation = params["data"], params["evaluation"]
    folder = os.path.join(params["paths"]["processed_data"], split)
    stores = [n for n in config.list_folder(folder, "split folder") if n.endswith(".zarr")] \
        if os.path.isdir(folder) else []
    if not stores:
        raise UserError(f"{folder}: no .zarr stores (run preproc.py, or pick another --split)")
    acc = {m: (metrics.ContingencyAccumulator(evaluation["thresholds"], lead_axis=0),
               metrics.ContinuousAccumulator(lead_axis=0, step_minutes=data["time_step_minutes"]),
               metrics.FSSAccumulator(evaluation["thresholds"], evaluation["fss_windows"], lead_axis=0))
           for m in methods}
    windows = {}  # store name -> first input step of every valid window (NL-50 filter: data.rain_filter_fraction)
    for name in stores:
        root = open_store(os.path.join(folder, name))
        check_store(os.path.join(folder, name), root.attrs.asdict(), forecaster.stats, f"checkpoint {forecaster.source}")
        windows[name] = window_starts(root, data, forecaster.stats)[::stride]
    n_windows = sum(len(w) for w in windows.values())
    bar = tqdm(total=n_windows, desc=f"evaluate {split} ({', '.join(methods)})", unit="window")
    cache = ChunkCache(data["cache_mb"])  # consecutive windows share all frames but one
    for name, starts in windows.items():
        store = zarr.open_group(os.path.join(folder, name), mode="r")
        for first in range(0, len(starts), batch_size):
            batch = starts[first:first + batch_size]
            reads = [cache.read({"x": ((name, "inputs"), store["inputs"], (inputs,)),
                                 "y": ((name, "target"), store["target"], (targets,)),
                                 "coverage": ((name, "coverage"), store["coverage"], (targets,))})
                     for inputs, targets in (window_steps(s, data) for s in batch)]
            x = np.stack([r["x"] for r in reads])
            obs = denormalize_target(np.stack([r["y"] for r in reads]), forecaster.stats)
            cover = np.stack([r["coverage"] for r in reads])
            for method, fc in forecaster.forecasts(x, methods).items():
                for i in range(len(batch)):  # per window: (T_out, H, W), lead axis 0
                    for accumulator in acc[method]:
                        accumulator.update(fc[i], obs[i], cover[i])
            bar.update(len(batch))
    bar.close()
    if n_windows == 0:
        raise UserError(f"{folder}: no valid window (input_steps + lead_steps + output_steps longer than the cases?)")
    return acc, n_windows


def metrics_report(acc, params, split, n_windows, lead_minutes):
    evaluation = params["evaluation"]
    keys = [str(float(t)) for t in evaluation["thresholds"]]
    report = {"thresholds": [float(t) for t in evaluation["thresholds"]], "lead_minutes": lead_minutes,
              "fss_windows": list(evaluation["fss_windows"]), "split": split, "n_windows": n_windows,
              "methods": {}}
    for method, (cat_acc, cont_acc, fss_acc) in acc.items():
        cat, cont, fss = cat_acc.scores(), cont_acc.scores(), fss_acc.scores()["fss"]
        scores = {s: {k: _listed(cat[s][i]) for i, k in enumerate(keys)} for s in CATEGORICAL}
        scores["fss"] = {k: {str(w): _listed(fss[i, j]) for j, w in enumerate(evaluation["fss_windows"])}
                         for i, k in enumerate(keys)}
        scores.update({s: _listed(cont[s]) for s in CONTINUOUS})
        report["methods"][method] = scores
    return report


def _listed(values):
    """Per-lead list of floats, NaN written as null (JSON has no NaN)."""
    return [None if not np.isfinite(v) else float(v) for v in np.atleast_1d(np.asarray(values, dtype=float))]


def _mean(values):
    finite = [v for v in values if v is not None]
    return float(np.mean(finite)) if finite else float("nan")


def table_rows(report):
    """One row per method and threshold, every score averaged over the lead times (seed 004's table)."""
    rows = []
    for method, scores in report["methods"].items():
        for key in (str(float(t)) for t in report["thresholds"]):
            row = {"method": method, "threshold_mm_h": key}
            for column in TABLE_COLUMNS:
                source = "pod" if column == "recall" else column
                values = scores[source][key] if isinstance(scores[source], dict) else scores[source]
                row[column] = _mean(values)
            rows.append(row)
    return rows


def write_outputs(report, out_dir):
    path = os.path.join(out_dir, "metrics.json")
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        json.dump(report, fh, indent=1)
    rows = table_rows(report)
    table = os.path.join(out_dir, "table.csv")
    with atomic_path(table) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["method", "threshold_mm_h", *TABLE_COLUMNS])
        writer.writeheader()
        writer.writerows({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()} for row in rows)
    plots = []
    try:
        import plotting
    except ImportError:  # the plots are an extra; the scores are written either way
        plotting = None
    if plotting is not None:
        for score in PLOTTED:
            plots.append(plotting.plot_verification(report, score, os.path.join(out_dir, f"{score}.png"),
                                                    title=f"{score.upper()} on the {report['split']} split"))
    return path, table, rows, plots


def print_table(rows, threshold):
    print(f"scores averaged over lead times at {threshold} mm/h:")
    print(f"  {'method':<14}" + "".join(f"{c:>11}" for c in TABLE_COLUMNS))
    for row in rows:
        if row["threshold_mm_h"] == threshold:
            print(f"  {row['method']:<14}" + "".join(f"{table_cell(row[c]):>11}" for c in TABLE_COLUMNS))


def table_cell(value):
    """A score in at most 10 characters: 4 decimals, or 4 significant digits when that is wider."""
    text = f"{value:.4f}"
    return text if len(text) <= 10 else f"{value:.4g}"


# --------------------------------------------------------------------------- prediction
def predict(forecaster, params, raw_case_dir, output, t0_text):
    """Forecast from one raw case; returns (output path, png path)."""
    raw_case_dir = os.path.normpath(raw_case_dir)
    if not os.path.isdir(raw_case_dir):
        raise UserError(f"{raw_case_dir}: raw case folder not found (expected <case>/<source>/<YYYYmmddHHMM>.npy)")
    raw_dir, case = os.path.split(raw_case_dir)
    data = params["data"]
    wanted = parse_t0(t0_text) if t0_text else None
    plan = scan_case(raw_dir or ".", case, params)
    no_motion = {**params, "data": {**data, "motion": False}}  # the forecaster estimates the window's motion
    with tempfile.TemporaryDirectory() as tmp:
        try:
            store = zarr.open_group(write_case(plan, "predict", tmp, forecaster.stats, no_motion)[0], mode="r")
        except NoCoverage as exc:
            raise UserError(f"{raw_case_dir}: {exc}") from None
        valid, minutes = store["valid"][:], store["time"][:]
        ends = [t for t in range(data["input_steps"] - 1, len(valid)) if valid[t - data["input_steps"] + 1:t + 1].all()]
        if t0_text:
            ends = [t for t in ends if minutes[t] == wanted]
            if not ends:
                raise UserError(f"--t0 {t0_text}: no valid input window ends then in {raw_case_dir}")
        if not ends:
            raise UserError(f"{raw_case_dir}: no {data['input_steps']} consecutive valid steps to forecast from")
        t0 = ends[-1]
        x = store["inputs"][t0 - data["input_steps"] + 1:t0 + 1][None]
        forecast = forecaster.forecasts(x, ["model"])["model"][0]  # (T_out, H, W) mm/h
        inputs_mm = forecaster.last_target_frames(x[0])
        lead_steps = np.array(forecaster.leads)
        targets = [t0 + k for k in lead_steps]
        have_target = all(t < len(valid) and valid[t] for t in targets)
        target = denormalize_target(np.stack([store["target"][t] for t in targets]), forecaster.stats) \
            if have_target else None
        coverage = store["coverage"][t0]
    forecast[:, ~coverage] = np.nan  # outside radar coverage at t0 there is no forecast
    step = data["time_step_minutes"]
    t0_time = EPOCH + dt.timedelta(minutes=int(minutes[t0]))
    valid_times = [t0_time + dt.timedelta(minutes=int(step * k)) for k in lead_steps]
    output = output or os.path.join(params["paths"]["outputs"], "forecasts", f"{case}_{t0_time:%Y%m%d%H%M}.nc")
    write_forecast(output, forecast, valid_times, t0_time, lead_steps * step, case, coverage)
    png = os.path.splitext(output)[0] + ".png"
    try:
        import plotting
        panels_in = inputs_mm if inputs_mm is not None else np.zeros((1,) + forecast.shape[1:], np.float32)
        plotting.plot_forecast_panels(panels_in, target if target is not None else np.full_like(forecast, np.nan),
                                      forecast, list(lead_steps * step), png, coverage=coverage,
                                      title=f"{case}: forecast from {t0_time:%Y-%m-%d %H:%M} UTC")
    except ImportError:
        png = None
    return output, png


def parse_t0(text):
    """Minutes since 1970-01-01 of a --t0 YYYYmmddHHMM; UserError naming the flag otherwise."""
    try:
        return minutes_since_epoch(text)
    except ValueError:
        raise UserError(f"--t0 {text!r}: expected a time as YYYYmmddHHMM (12 digits, UTC)") from None


def write_forecast(path, forecast, valid_times, t0_time, lead_minutes, case, coverage):
    """rain_rate (lead, y, x) mm/h (NaN outside coverage) and coverage (y, x) with valid times, as
    NetCDF (.nc) or Zarr (.zarr); temp name then rename."""
    import xarray as xr
    if not path.endswith((".nc", ".zarr")):
        raise UserError(f"--output {path}: expected a name ending in .nc or .zarr")
    ds = xr.Dataset(
        {"rain_rate": (("lead", "y", "x"), forecast.astype(np.float32),
                       {"units": "mm h-1", "long_name": "forecast rain rate", "comment": "NaN outside coverage"}),
         "coverage": (("y", "x"), coverage.astype(np.uint8),
                      {"long_name": "radar coverage at the forecast reference time (1: data, 0: none)",
                       "flag_values": np.array([0, 1], np.uint8), "flag_meanings": "no_data data"})},
        coords={"lead": ("lead", np.asarray(lead_minutes, dtype=np.int32), {"units": "minutes", "long_name": "lead time"}),
                "time": ("lead", np.array(valid_times, dtype="datetime64[ns]"), {"long_name": "valid time (UTC)"}),
                "y": np.arange(forecast.shape[1], dtype=np.int32), "x": np.arange(forecast.shape[2], dtype=np.int32)},
        attrs={"case": case, "forecast_reference_time": f"{t0_time:%Y-%m-%dT%H:%M}Z", "source": "evaluate.py --predict"})
    with atomic_path(path) as tmp:
        if path.endswith(".nc"):
            ds.to_netcdf(tmp, encoding={"rain_rate": {"zlib": True, "complevel": 4}})
        else:
            with warnings.catch_warnings():  # "consolidated metadata is not part of the v3 spec": xarray uses it
                warnings.simplefilter("ignore")
                ds.to_zarr(tmp, mode="w", consolidated=True)  # so xr.open_zarr opens it without a warning


# --------------------------------------------------------------------------- main
def methods_override(args):
    """The override flags' values, with --methods a,b as evaluation.methods (checked by config.py)."""
    overrides = config.overrides_from(args)
    if args.methods is not None:
        overrides["evaluation.methods"] = [m.strip() for m in args.methods.split(",")]
        overrides.flags["evaluation.methods"] = "--methods"
    return overrides


def check_flags(args, params):
    """UserError for flags that do not fit together, before any work; the output folder is made."""
    for flag, value in (("--stride", args.stride), ("--batch_size", args.batch_size)):
        if value is not None and value < 1:  # --batch_size None: the device's default
            raise UserError(f"{flag} {value}: expected an integer >= 1")
    if args.predict is None:
        for flag, value in (("--t0", args.t0), ("--output", args.output)):
            if value is not None:
                raise UserError(f"{flag} {value}: only used with --predict RAW_CASE_DIR")
        config.ensure_folder(os.path.join(params["paths"]["outputs"], "eval", args.split), "paths.outputs")
    elif args.output is not None:
        if not args.output.endswith((".nc", ".zarr")):
            raise UserError(f"--output {args.output}: expected a name ending in .nc or .zarr")
        config.ensure_folder(os.path.dirname(os.path.abspath(args.output)), "--output folder")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    config.add_config_arg(parser)
    parser.add_argument("--checkpoint", required=True, help="training.py checkpoint (e.g. outputs/checkpoints/best.pt)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"), help="split to score (default: test)")
    parser.add_argument("--methods", help="comma-separated: model, persistence, extrapolation "
                                          "(default: evaluation.methods)")
    parser.add_argument("--batch_size", type=int, help="windows per model call (default: 4 on CUDA, 1 on the CPU, "
                                                       "where larger batches only take more memory: 1.26x slower "
                                                       "and 2.2x the peak memory at 4 on FMI frames)")
    parser.add_argument("--stride", type=int, default=1,
                        help="score every N-th window of each case only, for a quick look (default: 1, all)")
    config.add_override_flags(parser, [("--device", "training.device"),
                                       ("--rain_filter_fraction", "data.rain_filter_fraction")])
    config.add_protocol_arg(parser)
    parser.add_argument("--predict", metavar="RAW_CASE_DIR", help="forecast from this raw case instead of scoring")
    parser.add_argument("--t0", metavar="YYYYmmddHHMM", help="--predict: forecast from this time (default: the last)")
    parser.add_argument("--output", help="--predict: forecast file, .nc or .zarr "
                                         "(default: <outputs>/forecasts/<case>_<t0>.nc)")
    args = parser.parse_args(argv)
    params = config.load_params(args.config, methods_override(args))
    methods = params["evaluation"]["methods"]
    check_flags(args, params)
    device = pick_device(params["training"]["device"])
    model, stats = load_model(args.checkpoint, params, device)
    if getattr(model, "smoothing", None) is not None:
        widths = model.smoothing.variance().detach().sqrt().tolist()
        print("model: learned smoothing width (Gaussian sigma, pixels) per lead: " + " ".join(f"{w:.2f}" for w in widths))
    forecaster = Forecaster(model, stats, params, device, os.path.basename(args.checkpoint))
    if args.predict:
        output, png = predict(forecaster, params, args.predict, args.output, args.t0)
        print(f"evaluate: forecast -> {output}" + (f", panels -> {png}" if png else ""))
        return 0
    step = params["data"]["time_step_minutes"]
    lead_minutes = [step * lead for lead in forecaster.leads]
    batch_size = args.batch_size if args.batch_size is not None else 4 if device.type == "cuda" else 1
    acc, n_windows = score_split(forecaster, params, args.split, methods, batch_size, args.stride)
    report = metrics_report(acc, params, args.split, n_windows, lead_minutes)
    out_dir = os.path.join(params["paths"]["outputs"], "eval", args.split)
    path, table, rows, plots = write_outputs(report, out_dir)
    thresholds = [str(float(t)) for t in params["evaluation"]["thresholds"]]
    print_table(rows, "1.0" if "1.0" in thresholds else thresholds[0])
    print(f"evaluate: {n_windows} windows of the {args.split} split, methods {', '.join(methods)} -> {path}, "
          f"{table}, {len(plots)} plots in {out_dir}")
    return 0


if __name__ == "__main__":
    config.run_main(main)
