"""Land mask from a long record of daily ASI files: land is NaN (nearly) every day.

For each pixel, nan_frequency = (days on which the pixel is NaN) / (available days),
where an available day is a file of the range that exists and opens. A pixel is
land when nan_frequency > threshold (strictly). The longer the record, the better
the mask: swath gaps move from day to day, land never does.

    python create_mask.py --source_dir ./data --start_date 20130101 --end_date 20231231 \
        --output_file ./land_mask_85pct.nc --threshold 0.85

Streams day by day: memory is one frame plus one counter, whatever the range.
Missing days are skipped and listed; an unreadable file is warned about and
skipped; a file whose grid differs from the first one is an error.

Output NetCDF (CF): land_mask (y, x) uint8 (1 land, 0 ocean), nan_frequency (y, x)
float32 fraction, x and y (metres, copied from the source), the source's grid
mapping variable, and global attributes days_used, first_date, last_date,
threshold, missing_dates, unreadable_dates.
"""
import argparse
import datetime as dt
import os
import sys

import netCDF4
import numpy as np
from tqdm import tqdm

from asi_files import add_day_range_args, asi_filename, date_flag, date_range, format_dates, read_day, read_grid
from config import UserError, add_config_arg, load_params, run_main


def write_mask(path, land_mask, nan_frequency, grid, attrs):
    """Write the mask NetCDF under a temporary name, then rename it to `path`."""
    tmp = path + ".tmp"
    with netCDF4.Dataset(tmp, "w", format="NETCDF4") as nc:
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
        var.setncatts({"long_name": "land mask (1 land, 0 ocean)",
                       "flag_values": np.array([0, 1], dtype=np.uint8), "flag_meanings": "ocean land",
                       "comment": f"land where nan_frequency > {attrs['threshold']}", **mapping_attr})
        var[:] = land_mask
        var = nc.createVariable("nan_frequency", "f4", ("y", "x"), zlib=True, complevel=4, chunksizes=chunks)
        var.setncatts({"long_name": "fraction of available days on which the pixel is NaN", "units": "1",
                       "valid_min": np.float32(0), "valid_max": np.float32(1), **mapping_attr})
        var[:] = nan_frequency
    os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arg(parser)
    add_day_range_args(parser)
    parser.add_argument("--output_file", default=None,
                        help="mask NetCDF to write (default: sea_ice.land_mask_file when set, "
                             "else ./land_mask.nc)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="land where the NaN frequency exceeds this fraction, 0..1 "
                             "(default: sea_ice.mask_threshold, 0.85)")
    args = parser.parse_args(argv)
    params = load_params(args.config, {"paths.sea_ice_data": args.source_dir,
                                       "sea_ice.start_date": date_flag("--start_date", args.start_date),
                                       "sea_ice.end_date": date_flag("--end_date", args.end_date),
                                       "sea_ice.mask_threshold": args.threshold})
    ice = params["sea_ice"]
    source_dir, threshold = params["paths"]["sea_ice_data"], float(ice["mask_threshold"])
    output_file = args.output_file or ice["land_mask_file"] or "land_mask.nc"
    days = date_range(ice["start_date"], ice["end_date"])
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"threshold {threshold:g} (--threshold or sea_ice.mask_threshold): "
                        "expected a fraction between 0 and 1")
    if not os.path.isdir(source_dir):
        raise UserError(f"--source_dir {source_dir}: folder not found")

    nan_count = None  # int32 (H, W): days on which each pixel is NaN
    used, missing, unreadable = [], [], []
    first_path = grid = None
    for day in tqdm(days, desc="create_mask", unit="day"):
        path = os.path.join(source_dir, asi_filename(day, ice["product"]))
        if not os.path.exists(path):
            missing.append(day)
            continue
        try:
            frame = read_day(path)
        except Exception as exc:  # damaged download, not NetCDF, no z: skip the day
            tqdm.write(f"warning: {path}: cannot read ({exc}); day skipped", file=sys.stderr)
            unreadable.append(day)
            continue
        if frame.ndim != 2:
            raise UserError(f"{path}: z has shape {frame.shape}, expected 2-D (y, x)")
        if nan_count is None:
            first_path, nan_count = path, np.zeros(frame.shape, dtype=np.int32)
            grid = read_grid(path)
        elif frame.shape != nan_count.shape:
            raise UserError(f"{path}: z is {frame.shape[0]}x{frame.shape[1]}, expected "
                            f"{nan_count.shape[0]}x{nan_count.shape[1]} like {first_path}")
        nan_count += np.isnan(frame)
        used.append(day)
    if missing:
        print(f"{len(missing)} of {len(days)} days missing (skipped): {format_dates(missing)}")
    if not used:
        raise UserError(f"{source_dir}: no readable asi-AMSR2-{ice['product']}-*.nc file for "
                        f"{days[0]:%Y%m%d}..{days[-1]:%Y%m%d}")

    nan_frequency = nan_count / np.float64(len(used))  # float64: 17/20 > 0.85 must be False
    land_mask = (nan_frequency > threshold).astype(np.uint8)
    nan_frequency = nan_frequency.astype(np.float32)
    attrs = {"title": "land mask from the NaN frequency of daily ASI AMSR2 files", "Conventions": "CF-1.6",
             "source_dir": os.path.abspath(source_dir), "product": ice["product"],
             "start_date": f"{days[0]:%Y%m%d}", "end_date": f"{days[-1]:%Y%m%d}",
             "first_date": f"{used[0]:%Y%m%d}", "last_date": f"{used[-1]:%Y%m%d}",
             "days_used": np.int32(len(used)), "threshold": np.float64(threshold),
             "missing_dates": ",".join(f"{d:%Y%m%d}" for d in missing),
             "unreadable_dates": ",".join(f"{d:%Y%m%d}" for d in unreadable),
             "history": f"{dt.datetime.now():%Y-%m-%d %H:%M} create_mask.py"}
    os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
    write_mask(output_file, land_mask, nan_frequency, grid, attrs)
    n_land = int(land_mask.sum())
    print(f"wrote {output_file}: {n_land} land pixels of {land_mask.size} ({100 * n_land / land_mask.size:.1f}%), "
          f"threshold {threshold:g}, from {len(used)} of {len(days)} days "
          f"({len(missing)} missing, {len(unreadable)} unreadable)")
    return 0


if __name__ == "__main__":
    run_main(main)
