"""Consolidate daily ASI sea-ice files into one gap-filled (time, y, x) file, .nc or .zarr.

    python consolidate_data.py --source_dir ./data --start_date 20240401 --end_date 20240430 \
        --output_file ./sea_ice_concentration_202404.nc [--land_mask_file ./land_mask.nc] \
        [--batch_size 30] [--time_window 3] [--space_window 10] [--alpha 25.0] [--sigma 5.0] \
        [--max_time_gap 5]

The time axis is the calendar: every day from start to end is a frame. Files are
read through asi_files (checked against the Bremen ASI format; unambiguous
deviations such as y descending or a fraction instead of % are corrected and
said, and kept in the `corrections` attribute). A day with no file, or with an
unusable one (not the format, values outside 0..100 %, no valid value at all), is
an all-NaN frame and is listed in `missing_dates`; time distances are true days.
A usable day on another grid than the first one is an error (mixed products).

Gaps are filled in two stages (values in %), see interpolation.py:
1. time-linear: a NaN run of at most max_time_gap days with a value on both
   sides is filled linearly; runs touching the first/last day or longer are not;
2. Gaussian: each pixel still NaN (and not land) becomes sum(w v) / sum(w) over
   the valid values v (observed or filled in stage 1, never land) in the box
   [t +- time_window] x [y, x +- space_window] clipped to the range and the grid,
   w = exp(-(dy^2 + dx^2 + alpha dt^2) / (2 sigma^2)); 0 when sum(w) < 1e-9.
The output is value / 100 (fraction); land (when a mask is given) is 0. The
mask's pole hole (create_mask.py's pole_hole: no satellite coverage, not land)
is never Gaussian-filled: each day it is the mean of the valid values within
POLE_RIM_PIXELS of its rim, NaN (missing) when the rim has none.

Frames are processed batch_size at a time with a halo of time_window +
max_time_gap days on each side, so the output is bit-identical for every
batch_size and memory grows with batch_size, not with the length of the range.

Output (NetCDF-4 zlib or Zarr v3, one frame per chunk at most):
  sea_ice_conc (time, y, x) float32 fraction, NaN only in a pole hole without rim value
  fill_flag    (time, y, x) uint8: 0 observed, 1 time-linear, 2 Gaussian,
                                  3 no neighbour (set to 0), 4 land (set to 0),
                                  5 pole hole (rim mean)
  time (time) int32 YYYYMMDD, every day; missing_dates (missing) int32 YYYYMMDD
  x, y (metres) and the grid mapping variable copied from the source files;
  the parameters used as global attributes.
"""
import argparse
import datetime as dt
import os
import sys
import time
import warnings

import netCDF4
import numpy as np
from scipy import ndimage
from tqdm import tqdm

from atomic import atomic_path
from asi_files import BadDay, date_flag, date_range, format_dates, read_day, read_grid, scan_days
from config import SCHEMA, UserError, add_config_arg, ensure_folder, load_params, run_main
from interpolation import fill_gaussian, fill_time_linear

FLAG_OBSERVED, FLAG_TIME_LINEAR, FLAG_GAUSSIAN, FLAG_NO_NEIGHBOUR, FLAG_LAND, FLAG_POLE_HOLE = range(6)
FLAG_MEANINGS = "observed time_linear gaussian no_neighbour land pole_hole"
N_FLAGS = 6
POLE_RIM_PIXELS = 3  # the pole hole is filled with the mean of the valid pixels within this many pixels of it
CHUNK_SIDE = 1024  # output chunks are (1, <=1024, <=1024): one frame at most, ROI reads stay cheap


# --------------------------------------------------------------------------- reading the source
def plain(value):
    """A netCDF attribute as a JSON-friendly Python value (for Zarr attributes)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_land_mask(path, shape, grid):
    """(land, pole_hole) of create_mask.py's output as bool (H, W) arrays, True on land / in the pole hole
    (pole_hole all False for a mask file without that variable); checks the grid."""
    if not os.path.isfile(path):
        raise UserError(f"--land_mask_file {path}: file not found (create it with create_mask.py)")
    try:
        with netCDF4.Dataset(path) as nc:
            if "land_mask" not in nc.variables:
                raise UserError(f"{path}: no variable 'land_mask'; expected create_mask.py output")
            land = np.ma.filled(nc.variables["land_mask"][:], 0)
            pole = np.ma.filled(nc.variables["pole_hole"][:], 0) if "pole_hole" in nc.variables else None
            coords = {name: np.asarray(nc.variables[name][:]) for name in ("x", "y") if name in nc.variables}
    except OSError as exc:
        raise UserError(f"{path}: cannot read the land mask ({exc})") from None
    if land.shape != tuple(shape) or (pole is not None and pole.shape != land.shape):
        raise UserError(f"{path}: land_mask is {'x'.join(map(str, land.shape))}, expected "
                        f"{shape[0]}x{shape[1]} like the source files")
    for name, values in coords.items():
        if values.shape != grid[name][0].shape or not np.allclose(values, grid[name][0], rtol=0, atol=1.0):
            raise UserError(f"{path}: coordinate {name} differs from the source files' (another grid?)")
    pole = np.zeros(land.shape, bool) if pole is None else pole != 0
    return (land != 0) & ~pole, pole


# --------------------------------------------------------------------------- writing the output
def variable_attrs(mapping_name):
    """CF attributes of the two (time, y, x) variables."""
    grid_mapping = {"grid_mapping": mapping_name} if mapping_name else {}
    conc = {"long_name": "sea ice concentration, gap-filled", "standard_name": "sea_ice_area_fraction",
            "units": "1", "valid_min": np.float32(0), "valid_max": np.float32(1),
            "ancillary_variables": "fill_flag", **grid_mapping}
    flag = {"long_name": "how each value was obtained", "flag_values": np.arange(N_FLAGS, dtype=np.uint8),
            "flag_meanings": FLAG_MEANINGS, **grid_mapping}
    return conc, flag


class NetCDFWriter:
    """NetCDF-4 output, zlib-compressed, written one frame at a time."""

    def __init__(self, path, grid, times, attrs):
        n_y, n_x = len(grid["y"][0]), len(grid["x"][0])
        self.nc = netCDF4.Dataset(path, "w", format="NETCDF4")
        self.nc.setncatts(attrs)
        self.nc.createDimension("time", len(times))
        self.nc.createDimension("y", n_y)
        self.nc.createDimension("x", n_x)
        self.nc.createDimension("missing", None)
        var = self.nc.createVariable("time", "i4", ("time",))
        var.setncatts({"long_name": "date (YYYYMMDD)", "axis": "T"})
        var[:] = times
        for name in ("x", "y"):
            values, var_attrs, dtype = grid[name]
            var = self.nc.createVariable(name, dtype, (name,))
            var.setncatts(var_attrs)
            var[:] = values
        mapping_name = None
        if grid["mapping"] is not None:
            mapping_name, dtype, var_attrs = grid["mapping"]
            self.nc.createVariable(mapping_name, dtype).setncatts(var_attrs)
        conc_attrs, flag_attrs = variable_attrs(mapping_name)
        chunks = (1, min(n_y, CHUNK_SIDE), min(n_x, CHUNK_SIDE))
        self.conc = self.nc.createVariable("sea_ice_conc", "f4", ("time", "y", "x"), zlib=True, complevel=1,
                                           shuffle=True, chunksizes=chunks, fill_value=False)
        self.conc.setncatts(conc_attrs)
        self.flag = self.nc.createVariable("fill_flag", "u1", ("time", "y", "x"), zlib=True, complevel=1,
                                           shuffle=True, chunksizes=chunks, fill_value=False)
        self.flag.setncatts(flag_attrs)

    def write(self, t, conc, flag):
        self.conc[t] = conc
        self.flag[t] = flag

    def close(self, missing_dates=None, attrs=None):
        """Finish the file: missing_dates and extra global attributes (None: just close, e.g. on failure)."""
        if attrs:
            self.nc.setncatts(attrs)
        if missing_dates is not None:
            var = self.nc.createVariable("missing_dates", "i4", ("missing",))
            var.setncatts({"long_name": "days with no usable source file (all-NaN input frames), YYYYMMDD"})
            var[:] = np.asarray(missing_dates, np.int32)
        self.nc.close()


class ZarrWriter:
    """Zarr v3 store (xarray reads it with dimension names and CF attributes), one frame at a time."""

    def __init__(self, path, grid, times, attrs):
        import zarr

        self.zarr, self.path = zarr, path
        n_y, n_x = len(grid["y"][0]), len(grid["x"][0])
        self.group = zarr.open_group(path, mode="w", zarr_format=3,
                                     attributes={k: plain(v) for k, v in attrs.items()})
        self.group.create_array("time", data=np.asarray(times, np.int32), dimension_names=("time",),
                                attributes={"long_name": "date (YYYYMMDD)", "axis": "T"})
        for name in ("x", "y"):
            values, var_attrs, dtype = grid[name]
            self.group.create_array(name, data=np.asarray(values, dtype), dimension_names=(name,),
                                    attributes={k: plain(v) for k, v in var_attrs.items()})
        mapping_name = None
        if grid["mapping"] is not None:
            mapping_name, dtype, var_attrs = grid["mapping"]
            self.group.create_array(mapping_name, shape=(), dtype=dtype, fill_value=0,
                                    attributes={k: plain(v) for k, v in var_attrs.items()})
        conc_attrs, flag_attrs = variable_attrs(mapping_name)
        chunks = (1, min(n_y, CHUNK_SIDE), min(n_x, CHUNK_SIDE))
        shape = (len(times), n_y, n_x)
        self.conc = self.group.create_array("sea_ice_conc", shape=shape, dtype="f4", chunks=chunks,
                                            fill_value=np.float32(0), dimension_names=("time", "y", "x"),
                                            attributes={k: plain(v) for k, v in conc_attrs.items()})
        self.flag = self.group.create_array("fill_flag", shape=shape, dtype="u1", chunks=chunks,
                                            fill_value=np.uint8(0), dimension_names=("time", "y", "x"),
                                            attributes={k: plain(v) for k, v in flag_attrs.items()})

    def write(self, t, conc, flag):
        self.conc[t] = conc
        self.flag[t] = flag

    def close(self, missing_dates=None, attrs=None):
        """Finish the store: missing_dates and extra attributes (None: nothing to do, e.g. on failure)."""
        if missing_dates is None:
            return
        if attrs:
            self.group.attrs.update({k: plain(v) for k, v in attrs.items()})
        self.group.create_array(
            "missing_dates", data=np.asarray(missing_dates, np.int32), dimension_names=("missing",),
            attributes={"long_name": "days with no usable source file (all-NaN input frames), YYYYMMDD"})
        with warnings.catch_warnings():  # "consolidated metadata is not part of the v3 spec": xarray uses it
            warnings.simplefilter("ignore")
            self.zarr.consolidate_metadata(self.path)


def check_output(path, extension):
    """Refuse to replace something that is not an older output of the same kind."""
    if extension == ".nc" and os.path.isdir(path):
        raise UserError(f"--output_file {path}: is a folder, expected a NetCDF file name")
    if extension == ".zarr" and os.path.lexists(path) and not (
            os.path.isfile(os.path.join(path, "zarr.json")) or os.path.isfile(os.path.join(path, ".zgroup"))):
        raise UserError(f"--output_file {path}: exists and is not a Zarr store; remove it or choose another name")


# --------------------------------------------------------------------------- the consolidation
def load_frame(frame, path, land, note):
    """Read one day into `frame` (H, W) in %, land set to NaN; False (frame all NaN) when the day cannot
    be used (warned about). note(text) receives the corrections read_day makes."""
    try:
        frame[:] = read_day(path, note=note)
    except Exception as exc:  # BadDay (not the format, values out of range, no valid value) or a read error
        reason = str(exc) if isinstance(exc, BadDay) else f"cannot read ({exc})"
        tqdm.write(f"warning: {path}: {reason}; day treated as missing", file=sys.stderr)
        frame[:] = np.nan
        return False
    if land is not None:
        frame[land] = np.nan  # land is never a neighbour, even where observed
    return True


def finish_frame(raw, stage1, values, no_neighbour, land, pole, rim):
    """fill_flag (H, W) uint8 of one frame, and its values in %: land 0, the pole hole (pixels of `pole`
    still NaN after stage 1) the mean of the valid values on its rim, NaN when the rim has none.

    raw: the frame before filling (NaN = missing); stage1: bool, filled by stage 1; values,
    no_neighbour: the frame after stage 2 (modified in place).
    """
    flag = stage1.view(np.uint8).copy()  # FLAG_TIME_LINEAR (1) where stage 1 filled, else 0
    flag[np.isnan(raw)] = FLAG_GAUSSIAN  # land and the pole hole too, overwritten below
    flag[no_neighbour] = FLAG_NO_NEIGHBOUR
    if land is not None:
        flag[land] = FLAG_LAND
        values[land] = 0.0
    if pole is not None:
        hole = pole & np.isnan(values)
        flag[hole] = FLAG_POLE_HOLE
        rim_values = values[rim & (flag <= FLAG_GAUSSIAN)]
        values[hole] = rim_values.mean(dtype=np.float64) if rim_values.size else np.nan
    return flag, values


def consolidate(paths, days, shape, land, writer, batch_size, time_window, space_window, alpha,
                sigma, max_time_gap, progress=True, pole=None, note=None):
    """Fill every day batch by batch and hand each frame to writer.write.

    paths: file or None per day; shape (H, W); land, pole: bool (H, W) or None (land; the pole
    hole, never Gaussian-filled, filled from its rim: see finish_frame).
    The window of a batch [b0, b1) is [b0 - halo, b1 + halo) clipped to the
    range, halo = time_window + max_time_gap: stage 1 there equals stage 1 on
    the whole range for every frame within time_window of the batch, which is
    all stage 2 reads, so the output does not depend on batch_size.
    Frames shared with the previous window are kept (restored to their raw
    values), so each file is read once. note(text): corrections made while reading.
    Returns (missing day indices, flag counts int64 (N_FLAGS,), days whose pole hole stayed NaN).
    """
    n_days, (n_y, n_x) = len(days), shape
    halo = time_window + max_time_gap
    buffer = np.empty((min(n_days, batch_size + 2 * halo), n_y, n_x), np.float32)
    missing = {i for i, p in enumerate(paths) if p is None}
    flag_counts, unfilled_pole = np.zeros(N_FLAGS, np.int64), []
    not_land = None if land is None else ~land
    fillable = not_land if pole is None else (~pole if not_land is None else not_land & ~pole)
    rim = None if pole is None else ndimage.binary_dilation(pole, iterations=POLE_RIM_PIXELS) & ~pole & (
        True if land is None else ~land)
    lo = hi = 0  # the window held in buffer[:hi - lo]
    filled1 = None  # stage-1 mask of that window
    bar = tqdm(total=n_days, desc="consolidate", unit="day", disable=not progress)
    for b0 in range(0, n_days, batch_size):
        b1 = min(n_days, b0 + batch_size)
        new_lo, new_hi = max(0, b0 - halo), min(n_days, b1 + halo)
        for j, t in enumerate(range(new_lo, min(hi, new_hi))):  # keep the overlap, raw again
            k = t - lo
            if k != j:
                buffer[j] = buffer[k]
            np.putmask(buffer[j], filled1[k], np.float32(np.nan))
        for t in range(max(hi, new_lo), new_hi):
            if paths[t] is None:
                buffer[t - new_lo] = np.nan
            elif not load_frame(buffer[t - new_lo], paths[t], land, note):
                missing.add(t)
                paths[t] = None
        lo, hi = new_lo, new_hi
        window = buffer[:hi - lo]
        filled1 = fill_time_linear(window, max_time_gap)
        for t in range(b0, b1):
            i = t - lo
            values, no_neighbour = fill_gaussian(window, fillable, None, time_window, space_window,
                                                 alpha, sigma, frames=(i, i + 1))
            flag, values = finish_frame(window[i], filled1[i], values[0], no_neighbour[0], land, pole, rim)
            conc = values / np.float32(100.0)
            if np.isnan(conc).any():  # only a pole hole whose rim had no value that day
                if pole is None or np.isnan(conc[~pole]).any():
                    raise RuntimeError(f"NaN left outside the pole hole in frame {days[t]:%Y%m%d}")
                unfilled_pole.append(t)
            writer.write(t, conc, flag)
            flag_counts += np.bincount(flag.ravel(), minlength=N_FLAGS)[:N_FLAGS]
            bar.update(1)
    bar.close()
    return sorted(missing), flag_counts, unfilled_pole


# --------------------------------------------------------------------------- command line
FLAG_KEYS = {"--source_dir": "paths.sea_ice_data", "--start_date": "sea_ice.start_date",
             "--end_date": "sea_ice.end_date", "--output_file": "sea_ice.consolidated_file",
             "--land_mask_file": "sea_ice.land_mask_file", "--batch_size": "sea_ice.batch_size",
             "--time_window": "sea_ice.time_window", "--space_window": "sea_ice.space_window",
             "--alpha": "sea_ice.alpha", "--sigma": "sea_ice.sigma", "--max_time_gap": "sea_ice.max_time_gap"}


def default_of(dotted):
    section, key = dotted.split(".")
    return SCHEMA[section][key].default


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arg(parser, builtin_defaults=True)

    def add(flag, type_, unit, help_):
        key = FLAG_KEYS[flag]
        parser.add_argument(flag, type=type_, default=None,
                            help=f"{help_} (default: {key} in params.json, {default_of(key)!r}{unit})")

    add("--source_dir", str, "", "folder of daily asi-AMSR2-<product>-YYYYMMDD-v5.4.nc files")
    add("--start_date", str, "", "first day, YYYYMMDD")
    add("--end_date", str, "", "last day, YYYYMMDD, inclusive")
    add("--output_file", str, "", "output, ending in .nc (NetCDF-4) or .zarr (Zarr v3 store)")
    add("--land_mask_file", str, "",
        "land mask NetCDF from create_mask.py: land is set to 0 and never used; '' for none")
    add("--batch_size", int, " days", "days filled per batch; memory grows with it, the result does not change")
    add("--time_window", int, " days", "Gaussian fill: half-width of the box in time")
    add("--space_window", int, " pixels", "Gaussian fill: half-width of the box in y and x")
    add("--alpha", float, "",
        "Gaussian fill: weight of time against space, w = exp(-(dy^2+dx^2+alpha dt^2)/(2 sigma^2))")
    add("--sigma", float, " pixels", "Gaussian fill: kernel width")
    add("--max_time_gap", int, " days", "time-linear fill: longest NaN run filled")
    return parser


def load_settings(argv):
    """(params, output_file, extension) from the command line and params.json; UserErrors name the flag."""
    args = build_parser().parse_args(argv)
    overrides = {key: getattr(args, flag[2:]) for flag, key in FLAG_KEYS.items()}
    overrides["sea_ice.start_date"] = date_flag("--start_date", args.start_date)
    overrides["sea_ice.end_date"] = date_flag("--end_date", args.end_date)
    try:
        params = load_params(args.config, overrides, builtin_defaults=True)
    except UserError as exc:
        flag = next((f for f, k in FLAG_KEYS.items() if str(exc).startswith(k + ":")
                     and overrides[k] is not None), None)
        raise UserError(f"{flag}: {exc}" if flag else str(exc)) from None
    output_file = params["sea_ice"]["consolidated_file"]
    extension = os.path.splitext(output_file.rstrip("/"))[1].lower()
    if extension not in (".nc", ".zarr"):
        raise UserError(f"--output_file {output_file}: expected a name ending in .nc (NetCDF) or .zarr (Zarr)")
    output_file = output_file.rstrip("/")
    check_output(output_file, extension)
    ensure_folder(os.path.dirname(os.path.abspath(output_file)), "--output_file folder")
    if not os.path.isdir(params["paths"]["sea_ice_data"]):
        raise UserError(f"--source_dir {params['paths']['sea_ice_data']}: folder not found")
    return params, output_file, extension


def output_attrs(params, grid, days, source_dir, land_mask_file, settings):
    return {"title": "ASI AMSR2 sea ice concentration, daily, gap-filled", "Conventions": "CF-1.8",
            "source": grid["source_title"], "source_dir": os.path.abspath(source_dir),
            "product": params["sea_ice"]["product"], "start_date": f"{days[0]:%Y%m%d}",
            "end_date": f"{days[-1]:%Y%m%d}",
            "land_mask_file": os.path.abspath(land_mask_file) if land_mask_file else "",
            **{k: (float(v) if k in ("alpha", "sigma") else np.int32(v)) for k, v in settings.items()},
            "gap_filling": "stage 1: time-linear over NaN runs of <= max_time_gap days; stage 2: "
                           "sum(w v)/sum(w) over the box [t +- time_window] x [y, x +- space_window], "
                           "w = exp(-(dy^2 + dx^2 + alpha dt^2) / (2 sigma^2)), 0 when sum(w) < 1e-9; "
                           "pole hole (land mask's pole_hole): mean of the valid values within "
                           f"{POLE_RIM_PIXELS} pixels of it",
            "history": f"{dt.datetime.now():%Y-%m-%d %H:%M} consolidate_data.py"}


def main(argv=None):
    params, output_file, extension = load_settings(argv)
    ice = params["sea_ice"]
    source_dir, land_mask_file = params["paths"]["sea_ice_data"], ice["land_mask_file"]
    settings = {k: ice[k] for k in ("time_window", "space_window", "alpha", "sigma", "max_time_gap")}
    days = date_range(ice["start_date"], ice["end_date"])

    started = time.perf_counter()
    scan = scan_days(source_dir, days, ice["product"])
    if scan.absent:
        print(f"warning: {len(scan.absent)} of {len(days)} days have no file in {source_dir} "
              f"(all-NaN frames, listed in missing_dates): {format_dates(scan.absent)}", file=sys.stderr)
    grid = read_grid(scan.first_path)
    land = pole = None
    if land_mask_file:
        land, pole = read_land_mask(land_mask_file, scan.shape, grid)
    else:
        print("note: no --land_mask_file: land and the pole hole are filled like gaps (or set to 0, flag "
              "no_neighbour); make a mask with create_mask.py to keep them apart", file=sys.stderr)
    corrections = {}  # correction -> [day], said once per file on stderr and kept in the output

    def note(path, text):
        tqdm.write(f"note: {path}: {text}", file=sys.stderr)
        corrections.setdefault(text, []).append(days[scan.paths.index(path)])

    times = np.array([int(f"{d:%Y%m%d}") for d in days], np.int32)
    with atomic_path(output_file) as tmp:
        try:
            writer = (NetCDFWriter if extension == ".nc" else ZarrWriter)(
                tmp, grid, times, output_attrs(params, grid, days, source_dir, land_mask_file, settings))
        except OSError as exc:
            raise UserError(f"--output_file {output_file}: cannot write {tmp} ({exc})") from None
        try:
            missing, flag_counts, unfilled_pole = consolidate(
                list(scan.paths), days, scan.shape, land, writer, ice["batch_size"], **settings, pole=pole,
                note=note)
        except BaseException:
            writer.close(None)
            raise
        writer.close([times[i] for i in missing],
                     {"corrections": "; ".join(f"{k}: {format_dates(v, 10)}" for k, v in corrections.items())})
    elapsed = time.perf_counter() - started
    share = 100.0 * flag_counts / max(1, flag_counts.sum())
    missing_text = ": " + format_dates([days[i] for i in missing], 5) if missing else ""
    print(f"wrote {output_file}: {len(days)} days {days[0]:%Y%m%d}..{days[-1]:%Y%m%d} of {scan.shape[0]}x"
          f"{scan.shape[1]} ({len(missing)} missing{missing_text}"
          f"{f', {sum(map(len, corrections.values()))} corrections' if corrections else ''}); "
          f"pixels: {share[0]:.1f}% observed, {share[1]:.1f}% time-linear, {share[2]:.1f}% Gaussian, "
          f"{share[3]:.1f}% no neighbour, {share[4]:.1f}% land, {share[5]:.2f}% pole hole"
          f"{f' (NaN on {len(unfilled_pole)} days: no value on its rim)' if unfilled_pole else ''}; "
          f"{elapsed:.1f} s ({len(days) / elapsed:.2f} days/s)")
    return 0


if __name__ == "__main__":
    run_main(main)
