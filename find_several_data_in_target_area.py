"""Day by day, report which days have missing data (NaN) inside a rectangular region (ROI).

    python find_several_data_in_target_area.py --source_dir ./data \
        --start_date 20240401 --end_date 20240430 --ymin 100 --ymax 200 --xmin 300 --xmax 400

The ROI is rows [ymin, ymax) x columns [xmin, xmax) of the file's (y, x) grid, half-open,
row 0 = the smallest y (south edge); `python get_dims.py` prints the grid size. For each
day with NaN inside the ROI it prints the number and percentage of missing pixels; absent
files and unusable ones (not the Bremen ASI format, values outside 0..100 %, no data at all)
are reported too. Each day is read and checked whole, as consolidate_data.py reads it (one
frame in memory; a flipped or transposed file is corrected, and said, before the ROI is cut).

It also draws the full grid of the first available day with the ROI outlined in red
(PNG, --output_file), to check that the indices are where you meant.
"""
import argparse
import os
import sys

import numpy as np
from tqdm import tqdm

from asi_files import BadDay, NoData, add_day_range_args, asi_filename, date_flag, date_range, read_day, scan_days
from config import UserError, add_config_arg, load_params, path_arg, run_main
from plotting import plot_roi_pixels


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arg(parser, builtin_defaults=True)
    add_day_range_args(parser)
    for name, what in (("ymin", "first ROI row"), ("ymax", "ROI row end, exclusive"),
                       ("xmin", "first ROI column"), ("xmax", "ROI column end, exclusive")):
        parser.add_argument(f"--{name}", type=int, default=None,
                            help=f"{what}, pixels (default: from sea_ice.roi [ymin, ymax, xmin, xmax])")
    parser.add_argument("--output_file", default=None, type=path_arg,
                        help="ROI figure, PNG (default: <paths.outputs>/plots/roi_<start>_<end>_y<ymin>-<ymax>"
                             "_x<xmin>-<xmax>.png)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    params = load_params(args.config, {"paths.sea_ice_data": args.source_dir,
                                       "sea_ice.start_date": date_flag("--start_date", args.start_date),
                                       "sea_ice.end_date": date_flag("--end_date", args.end_date)},
                         builtin_defaults=True)
    ice, source_dir = params["sea_ice"], params["paths"]["sea_ice_data"]
    days = date_range(ice["start_date"], ice["end_date"])
    flags = [args.ymin, args.ymax, args.xmin, args.xmax]
    roi = [f if f is not None else (ice["roi"][i] if ice["roi"] else None) for i, f in enumerate(flags)]
    if None in roi:
        names = [f"--{n}" for n, v in zip(("ymin", "ymax", "xmin", "xmax"), roi) if v is None]
        raise UserError(f"no ROI: give {' '.join(names)} (or set sea_ice.roi in params.json)")
    ymin, ymax, xmin, xmax = roi
    if not os.path.isdir(source_dir):
        raise UserError(f"--source_dir {source_dir}: folder not found")
    roi_text = f"y [{ymin}, {ymax}) x [{xmin}, {xmax})"
    output_file = args.output_file or os.path.join(
        params["paths"]["outputs"], "plots",
        f"roi_{days[0]:%Y%m%d}_{days[-1]:%Y%m%d}_y{ymin}-{ymax}_x{xmin}-{xmax}.png")

    scan = scan_days(source_dir, days, ice["product"],
                     warn=lambda text: tqdm.write(f"warning: {text}", file=sys.stderr))
    n_y, n_x = scan.shape
    if not (0 <= ymin < ymax <= n_y and 0 <= xmin < xmax <= n_x):
        raise UserError(f"ROI {roi_text}: expected 0 <= ymin < ymax <= {n_y} and 0 <= xmin < xmax "
                        f"<= {n_x} (the grid of {scan.first_path} is {n_y}x{n_x})")
    window = (slice(ymin, ymax), slice(xmin, xmax))
    n_pixels = (ymax - ymin) * (xmax - xmin)
    with_nan, unusable = [], [d for d, _ in scan.bad]
    for day in scan.absent:
        tqdm.write(f"{day:%Y%m%d}  file missing: {asi_filename(day, ice['product'])}")
    for day, path in zip(tqdm(days, desc="scan ROI", unit="day"), scan.paths):
        if path is None:
            continue
        try:
            n_nan = int(np.isnan(read_day(path)[window]).sum())  # the whole day is checked, as consolidate does
        except NoData:
            unusable.append(day)
            tqdm.write(f"{day:%Y%m%d}  no data at all (z NaN everywhere): a missing day")
            continue
        except BadDay as exc:
            unusable.append(day)
            tqdm.write(f"warning: {path}: {exc}; day skipped", file=sys.stderr)
            continue
        if n_nan:
            with_nan.append(day)
            tqdm.write(f"{day:%Y%m%d}  {n_nan} of {n_pixels} ROI pixels missing ({100 * n_nan / n_pixels:.2f}%)")
    first_day, first_path, first_frame = first_usable_frame(days, scan.paths, unusable)
    plot_roi_pixels(first_frame, (ymin, ymax, xmin, xmax),
                    f"ROI {roi_text} ({ymax - ymin}x{xmax - xmin} pixels), {first_day:%Y-%m-%d}\n"
                    f"{os.path.basename(first_path)}", output_file)
    n_checked = len(days) - len(scan.absent) - len(unusable)
    print(f"checked {n_checked} of {len(days)} days in ROI {roi_text} ({n_pixels} pixels): "
          f"{len(with_nan)} with missing pixels, {len(scan.absent)} files missing, {len(unusable)} unusable "
          f"(unreadable, not the format, or no data); ROI figure: {output_file}")
    return 0


def first_usable_frame(days, paths, unusable):
    """(day, path, frame (H, W) in %) of the first day with a usable file, for the figure."""
    for day, path in zip(days, paths):
        if path is not None and day not in unusable:
            try:
                return day, path, read_day(path, note=lambda *_: None)
            except BadDay:
                continue
    raise UserError(f"no usable day file for {days[0]:%Y%m%d}..{days[-1]:%Y%m%d} (see the warnings above)")


if __name__ == "__main__":
    run_main(main)
