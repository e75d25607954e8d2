"""Day by day, report which days have missing data (NaN) inside a rectangular region (ROI).

    python find_several_data_in_target_area.py --source_dir ./data \
        --start_date 20240401 --end_date 20240430 --ymin 100 --ymax 200 --xmin 300 --xmax 400

The ROI is rows [ymin, ymax) x columns [xmin, xmax) of the file's (y, x) grid, half-open,
row 0 = the smallest y (south edge); `python get_dims.py` prints the grid size. For each
day with NaN inside the ROI it prints the number and percentage of missing pixels; absent
and unreadable files are reported too. Only the ROI of each file is read.

It also draws the full grid of the first available day with the ROI outlined in red
(PNG, --output_file), to check that the indices are where you meant.
"""
import argparse
import os
import sys

import numpy as np
from tqdm import tqdm

from asi_files import add_day_range_args, asi_filename, date_flag, date_range, read_day
from config import UserError, add_config_arg, load_params, run_main
from plotting import plot_roi_pixels


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arg(parser)
    add_day_range_args(parser)
    for name, what in (("ymin", "first ROI row"), ("ymax", "ROI row end, exclusive"),
                       ("xmin", "first ROI column"), ("xmax", "ROI column end, exclusive")):
        parser.add_argument(f"--{name}", type=int, default=None,
                            help=f"{what}, pixels (default: from sea_ice.roi [ymin, ymax, xmin, xmax])")
    parser.add_argument("--output_file", default=None,
                        help="ROI figure, PNG (default: <paths.outputs>/plots/roi_<start>_<end>_y<ymin>-<ymax>"
                             "_x<xmin>-<xmax>.png)")
    args = parser.parse_args(argv)
    params = load_params(args.config, {"paths.sea_ice_data": args.source_dir,
                                       "sea_ice.start_date": date_flag("--start_date", args.start_date),
                                       "sea_ice.end_date": date_flag("--end_date", args.end_date)})
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

    window = (slice(ymin, ymax), slice(xmin, xmax))
    n_pixels = (ymax - ymin) * (xmax - xmin)
    first_frame = first_day = first_path = None
    with_nan, missing, unreadable = [], [], []
    for day in tqdm(days, desc="scan ROI", unit="day"):
        path = os.path.join(source_dir, asi_filename(day, ice["product"]))
        if not os.path.exists(path):
            missing.append(day)
            tqdm.write(f"{day:%Y%m%d}  file missing: {os.path.basename(path)}")
            continue
        try:
            if first_frame is None:
                frame = read_day(path)
                n_y, n_x = frame.shape
                if not (0 <= ymin < ymax <= n_y and 0 <= xmin < xmax <= n_x):
                    raise UserError(f"ROI {roi_text}: expected 0 <= ymin < ymax <= {n_y} and 0 <= xmin < xmax "
                                    f"<= {n_x} (the grid of {path} is {n_y}x{n_x})")
                first_frame, first_day, first_path = frame, day, path
                part = frame[window]
            else:
                part = read_day(path, window)
        except UserError:
            raise
        except Exception as exc:
            unreadable.append(day)
            tqdm.write(f"warning: {path}: cannot read ({exc}); day skipped", file=sys.stderr)
            continue
        if part.shape != (ymax - ymin, xmax - xmin):
            raise UserError(f"{path}: its grid is smaller than {first_path}; the ROI {roi_text} does not fit")
        n_nan = int(np.isnan(part).sum())
        if n_nan:
            with_nan.append(day)
            tqdm.write(f"{day:%Y%m%d}  {n_nan} of {n_pixels} ROI pixels missing ({100 * n_nan / n_pixels:.2f}%)")
    if first_frame is None:
        raise UserError(f"{source_dir}: no readable asi-AMSR2-{ice['product']}-*.nc file for "
                        f"{days[0]:%Y%m%d}..{days[-1]:%Y%m%d}")

    plot_roi_pixels(first_frame, (ymin, ymax, xmin, xmax),
             f"ROI {roi_text} ({ymax - ymin}x{xmax - xmin} pixels), {first_day:%Y-%m-%d}\n"
             f"{os.path.basename(first_path)}", output_file)
    n_checked = len(days) - len(missing) - len(unreadable)
    print(f"checked {n_checked} of {len(days)} days in ROI {roi_text} ({n_pixels} pixels): "
          f"{len(with_nan)} with missing pixels, {len(missing)} files missing, {len(unreadable)} unreadable; "
          f"ROI figure: {output_file}")
    return 0


if __name__ == "__main__":
    run_main(main)
