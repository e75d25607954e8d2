"""Land mask from a long record of daily ASI files: land is NaN (nearly) every day.

For each pixel, nan_frequency = (days on which the pixel is NaN) / (usable days), where a
usable day is a file of the range that passes the format check (asi_files.DayFile) and has at
least one valid value; absent, unusable and all-NaN days (no data that day) are skipped and
listed. A pixel NaN on at least `threshold` of the days (nan_frequency >= threshold, as in
the seed) is land, except the pole hole: the connected always-NaN region around the North
Pole (no satellite coverage, surrounded by ice) gets its own flag, `pole_hole`, and is not
land. The longer the record, the better the mask: swath gaps move from day to day, land
never does.

    python create_mask.py --source_dir ./data --start_date 20130101 --end_date 20231231 \
        --output_file ./land_mask_85pct.nc --threshold 0.85

Streams day by day: memory is one frame plus one counter, whatever the range. A file whose
grid differs from the first one is an error.

Output NetCDF (CF): land_mask (y, x) uint8 (1 land, 0 ocean or pole hole: the seed's 0/1
mask), pole_hole (y, x) uint8 (1 pole hole), nan_frequency (y, x) float32 fraction, x and y
(metres, copied from the source), the source's grid mapping variable, and global attributes
days_used, first_date, last_date, threshold, missing_dates (no file), unreadable_dates (file
there but unusable or all NaN).
"""
import argparse
import datetime as dt
import os
import sys

import netCDF4
import numpy as np
from scipy import ndimage
from tqdm import tqdm

from asi_files import (BadDay, add_day_range_args, date_flag, date_range, format_dates, read_day, read_grid,
                       scan_days)
from atomic import atomic_path
from config import Overrides, UserError, add_config_arg, ensure_folder, load_params, path_arg, run_main


def write_mask(path, land_mask, pole_hole, nan_frequency, grid, attrs):
    """Write the mask NetCDF under a temporary name, then rename it to `path`."""
    with atomic_path(path) as tmp, netCDF4.Dataset(tmp, "w", format="NETCDF4") as nc:
        nc.setncatts(attrs)
        n_y, n_x = land_mask.shape
        nc.createDimension("y", n_y)
        nc.createDimension("x", n_x)
        for name in ("x", "y"):
            values, var_attrs, dtype = grid[name]
            var = nc.createVariable(name, dtype, (name,))
            var.setncatts(var_attrs)
            var[:] = values
        mapping_attr = {}
        if grid["mapping"] is not None:
            name, dtype, var_attrs = grid["mapping"]
            var = nc.createVariable(name, dtype)
            var.setncatts(var_attrs)
            mapping_attr = {"grid_mapping": name}
        chunks = (min(n_y, 512), min(n_x, 512))
        var = nc.createVariable("land_mask", "u1", ("y", "x"), zlib=True, complevel=4, chunksizes=chunks)
        var.setncatts({"long_name": "land mask (1 land, 0 ocean or pole hole)",
                       "flag_values": np.array([0, 1], dtype=np.uint8), "flag_meanings": "not_land land",
                       "comment": f"land where nan_frequency >= {attrs['threshold']}, except the pole hole",
                       **mapping_attr})
        var[:] = land_mask
        var = nc.createVariable("pole_hole", "u1", ("y", "x"), zlib=True, complevel=4, chunksizes=chunks)
        var.setncatts({"long_name": "pole hole: no satellite coverage near the pole (1), not land",
                       "flag_values": np.array([0, 1], dtype=np.uint8), "flag_meanings": "covered pole_hole",
                       "comment": "the connected region of pixels with nan_frequency >= threshold that holds "
                                  "the pole, within 500 km of it", **mapping_attr})
        var[:] = pole_hole.astype(np.uint8)
        var = nc.createVariable("nan_frequency", "f4", ("y", "x"), zlib=True, complevel=4, chunksizes=chunks)
        var.setncatts({"long_name": "fraction of usable days on which the pixel is NaN", "units": "1",
                       "valid_min": np.float32(0), "valid_max": np.float32(1), **mapping_attr})
        var[:] = nan_frequency


POLE_HOLE_MAX_RADIUS_M = 500e3  # a region of always-NaN pixels around the pole larger than this is land


def find_pole_hole(always_nan, x, y, mapping_attrs=None):
    """Bool (H, W): the pole hole, the connected region of `always_nan` pixels that holds the pole.

    always_nan: bool (H, W), pixels NaN on (nearly) every day; x (W,), y (H,) ascending metres of a
    polar stereographic grid, the pole at (false_easting, false_northing) of its grid mapping (0, 0
    for the Bremen grids). The region is the pole hole only when it lies within
    POLE_HOLE_MAX_RADIUS_M of the pole (AMSR2's hole is ~100 km across; SSM/I's ~310 km); a larger
    one (Antarctica on the south grids) is land. All False when the pole is off the grid or observed.
    """
    attrs = mapping_attrs or {}
    pole_x, pole_y = float(attrs.get("false_easting", 0.0)), float(attrs.get("false_northing", 0.0))
    hole = np.zeros(always_nan.shape, dtype=bool)
    if not (x[0] <= pole_x <= x[-1] and y[0] <= pole_y <= y[-1]):
        return hole
    i, j = int(np.argmin(np.abs(y - pole_y))), int(np.argmin(np.abs(x - pole_x)))
    if not always_nan[i, j]:
        return hole
    labels, _ = ndimage.label(always_nan)
    rows, cols = np.nonzero(labels == labels[i, j])
    if np.hypot(x[cols] - pole_x, y[rows] - pole_y).max() > POLE_HOLE_MAX_RADIUS_M:
        return hole
    hole[rows, cols] = True
    return hole


def count_nan(scan, days, source_dir):
    """Stream the usable days: (nan_count int32 (H, W), used days, unusable [(day, reason)])."""
    nan_count = np.zeros(scan.shape, dtype=np.int32)
    used, unusable = [], list(scan.bad)
    for day, path in zip(tqdm(days, desc="create_mask", unit="day"), scan.paths):
        if path is None:
            continue
        try:
            frame = read_day(path)
        except BadDay as exc:  # values out of range, or no valid value at all (no data that day)
            tqdm.write(f"warning: {path}: {exc}; day skipped", file=sys.stderr)
            unusable.append((day, str(exc)))
            continue
        nan_count += np.isnan(frame)
        used.append(day)
    if not used:
        raise UserError(f"{source_dir}: no usable day file for {days[0]:%Y%m%d}..{days[-1]:%Y%m%d} "
                        f"({len(unusable)} unusable, {len(scan.absent)} absent)")
    return nan_count, used, sorted(unusable)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arg(parser, builtin_defaults=True)
    add_day_range_args(parser)
    parser.add_argument("--output_file", default=None, type=path_arg,
                        help="mask NetCDF to write (default: sea_ice.land_mask_file when set, "
                             "else ./land_mask.nc)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="land where the NaN frequency is at least this fraction, 0..1 "
                             "(default: sea_ice.mask_threshold, 0.85)")
    args = parser.parse_args(argv)
    overrides = Overrides({"paths.sea_ice_data": args.source_dir,
                           "sea_ice.start_date": date_flag("--start_date", args.start_date),
                           "sea_ice.end_date": date_flag("--end_date", args.end_date),
                           "sea_ice.mask_threshold": args.threshold},
                          {"sea_ice.mask_threshold": "--threshold", "paths.sea_ice_data": "--source_dir"})
    params = load_params(args.config, overrides, builtin_defaults=True)
    ice = params["sea_ice"]
    source_dir, threshold = params["paths"]["sea_ice_data"], float(ice["mask_threshold"])
    output_file = args.output_file or ice["land_mask_file"] or "land_mask.nc"
    days = date_range(ice["start_date"], ice["end_date"])
    if not os.path.isdir(source_dir):
        raise UserError(f"--source_dir {source_dir}: folder not found")
    if os.path.isdir(output_file):
        raise UserError(f"--output_file {output_file}: is a folder, expected a NetCDF file name")
    ensure_folder(os.path.dirname(os.path.abspath(output_file)), "--output_file folder")

    scan = scan_days(source_dir, days, ice["product"])
    grid = read_grid(scan.first_path)
    nan_count, used, unusable = count_nan(scan, days, source_dir)
    missing = scan.absent
    if missing:
        print(f"{len(missing)} of {len(days)} days missing (skipped): {format_dates(missing)}")
    if unusable:
        print(f"{len(unusable)} of {len(days)} days unusable (skipped): {format_dates([d for d, _ in unusable])}")

    # a pixel NaN on at least `threshold` of the days is land, or the pole hole (float64: 17/20 >= 0.85)
    nan_frequency = nan_count / np.float64(len(used))
    always_nan = nan_frequency >= threshold
    pole_hole = find_pole_hole(always_nan, grid["x"][0].astype(np.float64), grid["y"][0].astype(np.float64),
                               grid["mapping"][2] if grid["mapping"] else None)
    land_mask = (always_nan & ~pole_hole).astype(np.uint8)
    attrs = {"title": "land mask from the NaN frequency of daily ASI AMSR2 files", "Conventions": "CF-1.6",
             "source_dir": os.path.abspath(source_dir), "product": ice["product"],
             "start_date": f"{days[0]:%Y%m%d}", "end_date": f"{days[-1]:%Y%m%d}",
             "first_date": f"{used[0]:%Y%m%d}", "last_date": f"{used[-1]:%Y%m%d}",
             "days_used": np.int32(len(used)), "threshold": np.float64(threshold),
             "missing_dates": ",".join(f"{d:%Y%m%d}" for d in missing),
             "unreadable_dates": ",".join(f"{d:%Y%m%d}" for d, _ in unusable),
             "history": f"{dt.datetime.now():%Y-%m-%d %H:%M} create_mask.py"}
    write_mask(output_file, land_mask, pole_hole, nan_frequency.astype(np.float32), grid, attrs)
    n_land, n_pole = int(land_mask.sum()), int(pole_hole.sum())
    print(f"wrote {output_file}: {n_land} land pixels of {land_mask.size} ({100 * n_land / land_mask.size:.1f}%), "
          f"{n_pole} pole-hole pixels, threshold {threshold:g}, from {len(used)} of {len(days)} days "
          f"({len(missing)} missing, {len(unusable)} unusable)")
    return 0


if __name__ == "__main__":
    run_main(main)
