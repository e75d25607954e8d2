"""Figures a researcher looks at: a sea-ice day on its map, training curves, verification, forecasts.

Exactly one input flag picks the figure:

    python visualization.py --input_file ./data/asi-AMSR2-n3125-20240417-v5.4.nc
        the day's concentration (%) on its North Polar Stereographic map, offline
        coastlines, lat/lon grid, NaN grey (the file is checked and read as every
        script reads it). A consolidated file (.nc or .zarr, consolidate_data.py)
        works too: --date picks the day (default: the first); land (fill_flag) is
        drawn tan, no data (no neighbour, pole hole) grey, and the title says when
        the day had no usable file.
    python visualization.py --train_log outputs/train_log.csv
        train and validation loss per epoch, and the learning rate (training.py's log).
    python visualization.py --metrics outputs/eval/test/metrics.json --score csi
        a score against lead time, one line per method, one panel per threshold
        (evaluate.py's metrics; scores such as csi pod far hss fss mse mae).
    python visualization.py --forecast outputs/forecasts/case_X_202406011200.nc
        the forecast file of evaluate.py --predict (.nc or .zarr: rain_rate (lead, y, x)
        in mm/h, lead in minutes, NaN and an optional coverage variable outside radar
        coverage): one map per lead time (at most 6).
    python visualization.py --forecast sample.npz
        forecast panels of one sample: an .npz with inputs (T_in, H, W), target and
        prediction (T_out, H, W) in mm/h, lead_minutes (T_out,), optional coverage
        (H, W) bool and input_minutes (T_in,).

--output_file PATH sets the PNG (default: <paths.outputs>/plots/<name derived from
the input>.png); the script prints where it wrote.
"""
import argparse
import os
import sys

import numpy as np

import asi_files
import plotting
from config import UserError, add_config_arg, load_params, path_arg, run_main


def read_sea_ice_field(path, date=None):
    """(z (H, W) float32 in %, Grid, date YYYYMMDD int or None, kind) of a day file or a consolidated file.

    A Bremen ASI day is read as every script reads it (asi_files: checked against the format,
    corrections said on stderr; rows ascending in y); one that cannot be used is a UserError,
    except a day with no valid value, drawn all grey. A consolidated file gives the day `date`.
    """
    ds = plotting.open_dataset(path)
    if "z" in ds.variables:  # a Bremen ASI day
        try:
            day = asi_files.DayFile(path)
            try:
                z = day.read()
            except asi_files.NoData:
                z = np.full(day.shape, np.nan, np.float32)
        except asi_files.BadDay as exc:
            raise UserError(f"{path}: not usable as a Bremen ASI day ({exc})") from None
        for text in day.corrections:
            print(f"note: {path}: {text}", file=sys.stderr)
        grid = plotting.read_grid(ds, "z", path)._replace(x=day.x, y=day.y)
        file_date = str(ds.attrs.get("date", ""))
        return z, grid, int(file_date) if file_date.isdigit() else None, "day"
    if "sea_ice_conc" in ds.variables:  # consolidate_data.py output, fraction
        var = plotting.require_var(ds, "sea_ice_conc", path, ("time", "y", "x"))
        index = consolidated_index(ds, path, date)
        z = np.asarray(var.isel(time=index).values, dtype=np.float32) * 100
        return z, plotting.read_grid(ds, "sea_ice_conc", path), int(ds["time"].values[index]), "consolidated"
    raise UserError(f"{path}: neither a Bremen ASI day (variable 'z') nor a consolidated file "
                    f"(variable 'sea_ice_conc'); variables: {', '.join(map(str, ds.variables))}")


def consolidated_index(ds, path, date):
    """Index along time of `date` (YYYYMMDD int; None: the first day) in a consolidated file."""
    times = np.asarray(ds["time"].values).astype(np.int64) if "time" in ds.variables else np.zeros(0, np.int64)
    if times.size == 0:
        raise UserError(f"{path}: no time steps")
    if date is None:
        return 0
    found = np.flatnonzero(times == int(date))
    if found.size == 0:
        raise UserError(f"{path}: date {date} not in the file (it covers {times[0]}..{times[-1]})")
    return int(found[0])


# consolidate_data.py fill_flag: 3 no neighbour (stored as 0), 4 land (stored as 0), 5 pole hole (no satellite
# coverage; filled from its rim, or NaN)
FLAG_NO_NEIGHBOUR, FLAG_LAND, FLAG_POLE_HOLE = 3, 4, 5


def consolidated_day(path, date):
    """What a consolidated file says about one day: (land bool (H, W) or None, no_data bool (H, W) or None,
    missing: True when the day had no usable source file). From fill_flag and missing_dates."""
    ds = plotting.open_dataset(path)
    index = consolidated_index(ds, path, date)
    land = no_data = None
    if "fill_flag" in ds.variables:
        flag = np.asarray(ds["fill_flag"].isel(time=index).values)
        land, no_data = flag == FLAG_LAND, (flag == FLAG_NO_NEIGHBOUR) | (flag == FLAG_POLE_HOLE)
    day = int(ds["time"].values[index])
    missing = "missing_dates" in ds.variables and day in np.asarray(ds["missing_dates"].values).astype(np.int64)
    return land, no_data, bool(missing)


def draw_sea_ice(path, date, output):
    """The map of --input_file (a day or a consolidated file); returns (MapResult, shape)."""
    z, grid, date, kind = read_sea_ice_field(path, date)
    day = f"{date // 10000}-{date // 100 % 100:02d}-{date % 100:02d}" if date else "unknown date"
    name = stem(path) + (f"_{date}" if kind == "consolidated" else "") + ".png"
    if kind == "day":
        empty = " (no valid value: no data that day)" if np.isnan(z).all() else ""
        return plotting.plot_sea_ice_map(z, grid, output(name), title=f"AMSR2 ASI sea-ice concentration, {day}{empty}"), \
            z.shape
    land, no_data, missing = consolidated_day(path, date)
    if no_data is not None:
        z[no_data] = np.nan  # no neighbour (stored as 0) and the pole hole (filled): not data, drawn grey
    title = f"consolidated sea-ice concentration, {day}"
    if missing:
        title += "\nday MISSING (no usable file): every value is interpolated"
    label = "no data (no neighbour, pole hole)" if no_data is not None else "no data (NaN)"
    return plotting.plot_sea_ice_map(z, grid, output(name), title=title, land=land, no_data_label=label), z.shape


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
    what.add_argument("--input_file", metavar="PATH", type=path_arg,
                      help="sea-ice map of a Bremen ASI day .nc (z in %%) or a consolidated .nc/.zarr")
    what.add_argument("--train_log", metavar="PATH", type=path_arg, help="training curves from training.py's train_log.csv")
    what.add_argument("--metrics", metavar="PATH", type=path_arg, help="verification plot from evaluate.py's metrics.json")
    what.add_argument("--forecast", metavar="PATH", type=path_arg,
                      help="forecast maps of evaluate.py --predict's .nc/.zarr (rain_rate (lead, y, x) mm/h), "
                           "or forecast panels of an .npz sample (inputs, target, prediction)")
    parser.add_argument("--date", metavar="YYYYMMDD",
                        help="with a consolidated --input_file: the day to draw (default: its first day)")
    parser.add_argument("--score", default="csi",
                        help="with --metrics: the score to plot, one of the file's scores, e.g. "
                             f"{', '.join(plotting.SCORES)} (default: csi)")
    parser.add_argument("--output_file", metavar="PATH", type=path_arg,
                        help="PNG to write (default: <paths.outputs>/plots/<name from the input>.png)")
    args = parser.parse_args(argv)

    def output(name):
        if args.output_file:
            return args.output_file
        return plotting.default_output(load_params(args.config, builtin_defaults=True)["paths"]["outputs"], name)

    if args.input_file:
        result, shape = draw_sea_ice(args.input_file, asi_files.date_flag("--date", args.date), output)
        note = "" if result.coastlines else " (no coastlines)"
        print(f"wrote {result.path}: {shape[0]} x {shape[1]} map of {args.input_file}{note}")
    elif args.train_log:
        path = plotting.plot_training_curves(args.train_log, output("train_curves.png"))
        print(f"wrote {path}: training curves of {args.train_log}")
    elif args.metrics:
        path = plotting.plot_verification(args.metrics, args.score, output(f"verification_{args.score}.png"))
        print(f"wrote {path}: {args.score.upper()} of each method from {args.metrics}")
    elif args.forecast.rstrip("/").endswith((".nc", ".zarr")):
        forecast = read_forecast_file(args.forecast)
        path = plotting.plot_forecast_maps(**forecast, out_path=output(stem(args.forecast) + ".png"))
        print(f"wrote {path}: forecast maps of {args.forecast}")
    else:
        sample = read_forecast_npz(args.forecast)
        path = plotting.plot_forecast_panels(**sample, out_path=output(stem(args.forecast) + ".png"),
                                             title=f"Forecast {stem(args.forecast)}")
        print(f"wrote {path}: forecast panels of {args.forecast}")
    return 0


def read_forecast_file(path):
    """Arguments of plotting.plot_forecast_maps from evaluate.py --predict's output (.nc or .zarr):
    rain_rate (lead, y, x) mm/h (NaN: no forecast), lead (minutes), optional coverage ((y, x) or
    (lead, y, x), False outside radar coverage). UserError naming the file when it is not that."""
    ds = plotting.open_dataset(path)
    var = plotting.require_var(ds, "rain_rate", path)
    if var.ndim != 3 or var.dims[0] != "lead":
        raise UserError(f"{path}: rain_rate has dims {var.dims}, expected (lead, y, x) as evaluate.py --predict writes")
    prediction = np.asarray(var.values, dtype=np.float32)
    if "lead" in ds.variables:
        lead_minutes = [float(v) for v in np.asarray(ds["lead"].values)]
    else:
        lead_minutes = [float(k + 1) for k in range(prediction.shape[0])]
    coverage = None
    if "coverage" in ds.variables:
        coverage = np.asarray(ds["coverage"].values)
        if coverage.shape not in (prediction.shape, prediction.shape[1:]):
            raise UserError(f"{path}: coverage has shape {coverage.shape}, expected {prediction.shape[1:]} or "
                            f"{prediction.shape}")
        coverage = np.nan_to_num(coverage.astype(np.float64)) != 0
    finite = prediction[np.isfinite(prediction)]
    if finite.size and finite.min() < 0:
        print(f"warning: {path}: {int((finite < 0).sum())} negative rain rates (min {finite.min():g} mm/h)",
              file=sys.stderr)
    when = ds.attrs.get("forecast_reference_time", "")
    case = ds.attrs.get("case", stem(path))
    return {"prediction": prediction, "lead_minutes": lead_minutes, "coverage": coverage,
            "title": f"Forecast {case}" + (f" from {when}" if when else "")}


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
