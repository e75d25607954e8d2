"""Before / after gap filling for one day: original (with its gaps), consolidated, and fill_flag.

    python visualization_compare_between_full_sic.py \
        --original_file ./data/asi-AMSR2-n3125-20240417-v5.4.nc \
        --consolidated_file ./sea_ice_concentration_202404.nc --date 20240417

Three panels on the same map (the file's projection, offline coastlines, lat/lon
grid): the original day in % (NaN grey), the consolidated day (fraction, shown
in %), and where each consolidated value came from (consolidate_data.py's
fill_flag: observed, time-linear, Gaussian, no neighbour -> 0, land). The caption
checks that observed pixels were kept (max |consolidated - original|).
Reads one frame of the consolidated file (.nc or .zarr), whatever its length.
"""
import argparse

import numpy as np

import plotting
from config import UserError, add_config_arg, load_params, path_arg, run_main
from asi_files import date_flag
from visualization import read_sea_ice_field


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_arg(parser, builtin_defaults=True)
    parser.add_argument("--original_file", required=True, metavar="PATH", type=path_arg,
                        help="one Bremen ASI day .nc (z (y, x) in %%, NaN gaps)")
    parser.add_argument("--consolidated_file", metavar="PATH", type=path_arg,
                        help="consolidate_data.py output, .nc or .zarr (sea_ice_conc (time, y, x) fraction; "
                             "default: sea_ice.consolidated_file in params.json)")
    parser.add_argument("--date", required=True, metavar="YYYYMMDD", help="the day to compare")
    parser.add_argument("--output_file", metavar="PATH", type=path_arg,
                        help="PNG to write (default: <paths.outputs>/plots/interpolation_comparison_<date>.png)")
    args = parser.parse_args(argv)
    date = date_flag("--date", args.date)
    params = None
    if args.consolidated_file is None or args.output_file is None:
        params = load_params(args.config, builtin_defaults=True)
    consolidated_file = args.consolidated_file or params["sea_ice"]["consolidated_file"]

    original, grid, file_date, kind = read_sea_ice_field(args.original_file)  # checked as every script reads it
    if kind != "day":
        raise UserError(f"--original_file {args.original_file}: a consolidated file, expected one Bremen ASI day")
    if file_date is not None and file_date != date:
        raise UserError(f"{args.original_file}: holds day {file_date}, not --date {date}")

    ds = plotting.open_dataset(consolidated_file)
    conc = plotting.require_var(ds, "sea_ice_conc", consolidated_file, ("time", "y", "x"))
    times = np.asarray(ds["time"].values).astype(np.int64)
    found = np.flatnonzero(times == date)
    if found.size == 0:
        span = f"{times[0]}..{times[-1]}" if times.size else "no days"
        raise UserError(f"{consolidated_file}: date {date} not in the file (it covers {span})")
    if conc.shape[1:] != original.shape:
        raise UserError(f"{consolidated_file}: grid {conc.shape[1:]} differs from {args.original_file} "
                        f"{original.shape}")
    index = int(found[0])
    consolidated = np.asarray(conc.isel(time=index).values, dtype=np.float32) * 100  # fraction -> %
    fill_flag = None
    if "fill_flag" in ds.variables:
        fill_flag = np.asarray(ds["fill_flag"].isel(time=index).values, dtype=np.uint8)
    missing = set(np.asarray(ds["missing_dates"].values).astype(np.int64).tolist()) \
        if "missing_dates" in ds.variables else set()
    note = " (day missing upstream: every value is filled)" if date in missing else ""

    output_file = args.output_file or plotting.default_output(params["paths"]["outputs"],
                                                              f"interpolation_comparison_{date}.png")
    pretty = f"{date // 10000}-{date // 100 % 100:02d}-{date % 100:02d}"
    result = plotting.plot_comparison(original, consolidated, fill_flag, grid, output_file,
                                      title=f"Sea-ice concentration {pretty}: before / after gap filling{note}")
    note = "" if result.coastlines else " (no coastlines)"
    print(f"wrote {result.path}: original, consolidated and fill_flag for {date}{note}")
    return 0


if __name__ == "__main__":
    run_main(main)
