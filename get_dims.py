"""Print the grid size (H rows, W columns) of the daily ASI files, to choose ROI indices.

    python get_dims.py                      # looks in paths.sea_ice_data (./data)
    python get_dims.py --source_dir ./data

Reads the header of the first day file of the folder (by name, asi-AMSR2-*.nc files first,
then any *.nc) that passes the format check of asi_files.DayFile (z with dims (y, x), x/y
evenly spaced; a file that does not is named and skipped); no data is read. H and W are
those of z as every script reads it: rows run 0..H-1 from the smallest y (south edge),
columns 0..W-1 from the smallest x (west edge), whatever the file's storage order (a
correction is said); ROI ranges are half-open. Runs from any folder: without a
./params.json the built-in defaults apply.
"""
import argparse
import glob
import os
import sys

from asi_files import BadDay, DayFile
from config import UserError, add_config_arg, load_params, run_main


def first_day_file(source_dir):
    """DayFile of the first usable asi-AMSR2-*.nc file of source_dir by name, else of the first usable *.nc;
    unusable files are named on stderr and skipped. UserError when the folder is missing or has none."""
    if not os.path.isdir(source_dir):
        raise UserError(f"--source_dir {source_dir}: folder not found")
    asi = sorted(glob.glob(os.path.join(source_dir, "asi-AMSR2-*.nc")))
    others = sorted(set(glob.glob(os.path.join(source_dir, "*.nc"))) - set(asi))
    if not asi and not others:
        raise UserError(f"--source_dir {source_dir}: no .nc file in this folder (download some with download.py)")
    skipped = 0
    for path in asi + others:
        try:
            return DayFile(path)
        except BadDay as exc:
            print(f"warning: {path}: {exc}; skipped", file=sys.stderr)
            skipped += 1
    raise UserError(f"--source_dir {source_dir}: none of its {skipped} .nc files is a Bremen ASI day "
                    "(see the warnings above)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arg(parser, builtin_defaults=True)
    parser.add_argument("--source_dir", default=None,
                        help="folder of daily .nc files (default: paths.sea_ice_data in params.json, 'data')")
    args = parser.parse_args(argv)
    params = load_params(args.config, {"paths.sea_ice_data": args.source_dir}, builtin_defaults=True)
    day = first_day_file(params["paths"]["sea_ice_data"])
    for text in day.corrections:
        print(f"note: {day.path}: {text}", file=sys.stderr)
    n_y, n_x = day.shape
    print(f"{day.path}: z (y, x) is H={n_y} rows x W={n_x} columns "
          f"(ROI indices: y 0..{n_y}, x 0..{n_x}, half-open)")
    return 0


if __name__ == "__main__":
    run_main(main)
