"""Figures a researcher looks at: a sea-ice day on its map, training curves, verification, forecasts.

Exactly one input flag picks the figure:

    python visualization.py --input_file ./data/asi-AMSR2-n3125-20240417-v5.4.nc
        the day's concentration (%) on its North Polar Stereographic map, offline
        coastlines, lat/lon grid, NaN grey. A consolidated file (.nc or .zarr,
        consolidate_data.py) works too: --date picks the day (default: the first).
    python visualization.py --train_log outputs/train_log.csv
        train and validation loss per epoch, and the learning rate (training.py's log).
    python visualization.py --metrics outputs/eval/test/metrics.json --score csi
        a score against lead time, one line per method, one panel per threshold
        (evaluate.py's metrics; scores such as csi pod far hss fss mse mae).
    python visualization.py --forecast outputs/eval/forecast_case_X.npz
        forecast panels of one sample: an .npz with inputs (T_in, H, W), target and
        prediction (T_out, H, W) in mm/h, lead_minutes (T_out,), optional coverage
        (H, W) bool and input_minutes (T_in,).

--output_file PATH sets the PNG (default: <paths.outputs>/plots/<name derived from
the input>.png); the script prints where it wrote.
"""
import argparse
import os

import numpy as np

import plotting
from config import UserError, add_config_arg, load_params, run_main


def read_sea_ice_field(path, date=None):
    """(z (H, W) float32 in %, Grid, date YYYYMMDD int or None, kind) of a day file or a consolidated file."""
    ds = plotting.open_dataset(path)
    if "z" in ds.variables:  # a Bremen ASI day
        var = plotting.require_var(ds, "z", path)
        if var.ndim != 2:
            raise UserError(f"{path}: variable 'z' has dims {var.dims}, expected (y, x)")
        z = np.asarray(var.values, dtype=np.float32)
        if str(var.attrs.get("units", "%")).strip() in ("1", "fraction"):
            z = z * 100
        file_date = ds.attrs.get("date")
        return z, plotting.read_grid(ds, "z", path), int(file_date) if file_date else None, "day"
    if "sea_ice_conc" in ds.variables:  # consolidate_data.py output, fraction
        var = plotting.require_var(ds, "sea_ice_conc", path, ("time", "y", "x"))
        times = np.asarray(ds["time"].values).astype(np.int64)
        if times.size == 0:
            raise UserError(f"{path}: no time steps")
        if date is None:
            index = 0
        else:
            found = np.flatnonzero(times == int(date))
            if found.size == 0:
                raise UserError(f"{path}: date {date} not in the file (it covers {times[0]}..{times[-1]})")
            index = int(found[0])
        z = np.asarray(var.isel(time=index).values, dtype=np.float32) * 100
        return z, plotting.read_grid(ds, "sea_ice_conc", path), int(times[index]), "consolidated"
    raise UserError(f"{path}: neither a Bremen ASI day (variable 'z') nor a consolidated file "
                    f"(variable 'sea_ice_conc'); variables: {', '.join(map(str, ds.variables))}")


def stem(path):
    name = os.path.basename(os.path.normpath(path))
    for ext in (".nc", ".zarr", ".npz", ".json", ".csv"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arg(parser, builtin_defaults=True)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--input_file", metavar="PATH",
                      help="sea-ice map of a Bremen ASI day .nc (z in %%) or a consolidated .nc/.zarr")
    what.add_argument("--train_log", metavar="PATH", help="training curves from training.py's train_log.csv")
    what.add_argument("--metrics", metavar="PATH", help="verification plot from evaluate.py's metrics.json")
    what.add_argument("--forecast", metavar="PATH", help="forecast panels from an .npz sample (mm/h)")
    parser.add_argument("--date", type=int, metavar="YYYYMMDD",
                        help="with a consolidated --input_file: the day to draw (default: its first day)")
    parser.add_argument("--score", default="csi",
                        help="with --metrics: the score to plot, one of the file's scores, e.g. "
                             f"{', '.join(plotting.SCORES)} (default: csi)")
    parser.add_argument("--output_file", metavar="PATH",
                        help="PNG to write (default: <paths.outputs>/plots/<name from the input>.png)")
    args = parser.parse_args(argv)

    def output(name):
        if args.output_file:
            return args.output_file
        return plotting.default_output(load_params(args.config, builtin_defaults=True)["paths"]["outputs"], name)

    if args.input_file:
        z, grid, date, kind = read_sea_ice_field(args.input_file, args.date)
        day = f"{date // 10000}-{date // 100 % 100:02d}-{date % 100:02d}" if date else "unknown date"
        name = stem(args.input_file) + (f"_{date}" if kind == "consolidated" else "") + ".png"
        label = "consolidated" if kind == "consolidated" else "AMSR2 ASI"
        result = plotting.plot_sea_ice_map(z, grid, output(name), title=f"{label} sea-ice concentration, {day}")
        note = "" if result.coastlines else " (no coastlines)"
        print(f"wrote {result.path}: {z.shape[0]} x {z.shape[1]} map of {args.input_file}{note}")
    elif args.train_log:
        path = plotting.plot_training_curves(args.train_log, output("train_curves.png"))
        print(f"wrote {path}: training curves of {args.train_log}")
    elif args.metrics:
        path = plotting.plot_verification(args.metrics, args.score, output(f"verification_{args.score}.png"))
        print(f"wrote {path}: {args.score.upper()} of each method from {args.metrics}")
    else:
        sample = read_forecast_npz(args.forecast)
        path = plotting.plot_forecast_panels(**sample, out_path=output(stem(args.forecast) + ".png"),
                                             title=f"Forecast {stem(args.forecast)}")
        print(f"wrote {path}: forecast panels of {args.forecast}")
    return 0


def read_forecast_npz(path):
    """Arguments of plotting.plot_forecast_panels from an .npz sample; UserError when keys are missing."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: file not found")
    try:
        data = np.load(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not an .npz file ({exc})") from None
    missing = [k for k in ("inputs", "target", "prediction", "lead_minutes") if k not in data.files]
    if missing:
        raise UserError(f"{path}: missing array(s) {', '.join(missing)}; expected inputs, target, prediction, "
                        "lead_minutes (+ optional coverage, input_minutes)")
    sample = {k: data[k] for k in ("inputs", "target", "prediction")}
    sample["lead_minutes"] = [float(v) for v in data["lead_minutes"]]
    for key in ("coverage", "input_minutes"):
        sample[key] = data[key] if key in data.files else None
    try:
        plotting.check_forecast_shapes(sample["inputs"], sample["target"], sample["prediction"],
                                       sample["lead_minutes"])
    except ValueError as exc:
        raise UserError(f"{path}: {exc}") from None
    return sample


if __name__ == "__main__":
    run_main(main)
