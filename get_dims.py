"""Print the grid size (H rows, W columns) of the daily ASI files, to choose ROI indices.

    python get_dims.py                      # looks in paths.sea_ice_data (./data)
    python get_dims.py --source_dir ./data

Reads the shape of variable `z` (y, x) of the first .nc file of the folder (by name,
asi-AMSR2-*.nc files first); no data is read. Pixel rows run 0..H-1 from the smallest y
(south edge), columns 0..W-1 from the smallest x (west edge); ROI ranges are half-open.
"""
import argparse
import glob
import os

import netCDF4

from config import UserError, add_config_arg, load_params, run_main


def first_nc_file(source_dir):
    """The first asi-AMSR2-*.nc file of source_dir by name, else the first *.nc; UserError if none."""
    if not os.path.isdir(source_dir):
        raise UserError(f"--source_dir {source_dir}: folder not found")
    for pattern in ("asi-AMSR2-*.nc", "*.nc"):
        files = sorted(glob.glob(os.path.join(source_dir, pattern)))
        if files:
            return files[0]
    raise UserError(f"--source_dir {source_dir}: no .nc file in this folder (download some with download.py)")


def z_dims(path):
    """(dimension names, (H, W)) of variable z of one file."""
    try:
        with netCDF4.Dataset(path) as nc:
            if "z" not in nc.variables:
                raise UserError(f"{path}: no variable 'z' (variables: {', '.join(nc.variables) or 'none'}); "
                                "expected a Bremen ASI file")
            var = nc.variables["z"]
            names, shape = var.dimensions, var.shape
    except OSError as exc:
        raise UserError(f"{path}: cannot open as NetCDF ({exc})") from None
    if len(shape) != 2:
        raise UserError(f"{path}: z has dims {names} {shape}, expected 2-D (y, x)")
    return names, shape


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arg(parser)
    parser.add_argument("--source_dir", default=None,
                        help="folder of daily .nc files (default: paths.sea_ice_data in params.json, 'data')")
    args = parser.parse_args(argv)
    params = load_params(args.config, {"paths.sea_ice_data": args.source_dir})
    path = first_nc_file(params["paths"]["sea_ice_data"])
    names, (n_y, n_x) = z_dims(path)
    print(f"{path}: z {tuple(names)} is H={n_y} rows x W={n_x} columns "
          f"(ROI indices: y 0..{n_y}, x 0..{n_x}, half-open)")
    return 0


if __name__ == "__main__":
    run_main(main)
