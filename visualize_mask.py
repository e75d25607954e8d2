"""Land mask of create_mask.py on its map: the binary mask and the NaN-frequency map side by side.

    python visualize_mask.py --input_file ./land_mask.nc --output_file ./land_mask_visualization.png

Left: land (1) / ocean (0), and the pole hole (the file's pole_hole, not land) in its
own colour. Right: the fraction of days each pixel was NaN, with the mask's threshold
drawn as a contour. Both on the file's own projection with
offline coastlines and a lat/lon grid. Prints where it wrote.
"""
import argparse
import os

import numpy as np

import plotting
from config import UserError, add_config_arg, load_params, path_arg, run_main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_arg(parser, builtin_defaults=True)
    parser.add_argument("--input_file", required=True, metavar="PATH", type=path_arg,
                        help="mask NetCDF from create_mask.py (land_mask (y, x) uint8, nan_frequency (y, x) fraction)")
    parser.add_argument("--output_file", metavar="PATH", type=path_arg,
                        help="PNG to write (default: <paths.outputs>/plots/<input name>_visualization.png)")
    args = parser.parse_args(argv)

    ds = plotting.open_dataset(args.input_file)
    land = plotting.require_var(ds, "land_mask", args.input_file)
    frequency = plotting.require_var(ds, "nan_frequency", args.input_file)
    if land.ndim != 2 or frequency.shape != land.shape:
        raise UserError(f"{args.input_file}: expected land_mask and nan_frequency of one (y, x) shape, got "
                        f"{land.shape} and {frequency.shape}")
    grid = plotting.read_grid(ds, "land_mask", args.input_file)
    pole = None
    if "pole_hole" in ds.variables and ds["pole_hole"].shape == land.shape:
        pole = np.nan_to_num(np.asarray(ds["pole_hole"].values, dtype=np.float64)) != 0
    threshold = ds.attrs.get("threshold")
    span = ""
    if "days_used" in ds.attrs:
        span = f" from {ds.attrs['days_used']} days"
        if "first_date" in ds.attrs and "last_date" in ds.attrs:
            span += f" ({ds.attrs['first_date']}..{ds.attrs['last_date']})"
    title = f"Land mask{span}" + (f", land where NaN frequency >= {float(threshold):g}"
                                  if threshold is not None else "")

    output_file = args.output_file
    if not output_file:
        name = os.path.splitext(os.path.basename(os.path.normpath(args.input_file)))[0] + "_visualization.png"
        output_file = plotting.default_output(load_params(args.config, builtin_defaults=True)["paths"]["outputs"], name)
    result = plotting.plot_land_mask(np.asarray(land.values), np.asarray(frequency.values, dtype=np.float32), grid,
                                     output_file, title=title,
                                     threshold=float(threshold) if threshold is not None else None,
                                     pole_hole=pole)
    note = "" if result.coastlines else " (no coastlines)"
    print(f"wrote {result.path}: land mask and NaN frequency of {args.input_file}{note}")
    return 0


if __name__ == "__main__":
    run_main(main)
