"""Bremen ASI AMSR2 day files: names, dates, and reading them (one place for every sea-ice script).

    asi_filename(20240417)          -> "asi-AMSR2-n3125-20240417-v5.4.nc"
    date_range(20240401, 20240430)  -> [datetime.date, ...] (inclusive)
    read_day(path)                  -> z as float32 (H, W) in %, NaN where missing
    read_grid(path)                 -> x, y and the grid mapping, to copy into outputs

File layout: ../shared/docs/bremen-asi-format.md. HDF5 is not thread-safe: open these
files from one thread at a time (separate processes are fine).
"""
import datetime as dt

import netCDF4
import numpy as np

from config import UserError, parse_date


# --------------------------------------------------------------------------- names and dates
def asi_filename(date, product="n3125"):
    """File name of one Bremen ASI day: asi-AMSR2-n3125-20240417-v5.4.nc."""
    return f"asi-AMSR2-{product}-{to_date(date):%Y%m%d}-v5.4.nc"


def to_date(value):
    """A datetime.date from a date, an int 20240417 or a string '20240417'."""
    if isinstance(value, dt.date):
        return value
    day = parse_date(value)
    if day is None:
        raise UserError(f"{str(value)!r}: expected a date as YYYYMMDD")
    return day


def date_range(start, end):
    """Every day from start to end inclusive, as datetime.date."""
    start, end = to_date(start), to_date(end)
    if end < start:
        raise UserError(f"end date {end:%Y%m%d} is before start date {start:%Y%m%d}")
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def date_flag(flag, text):
    """A date flag as int YYYYMMDD (None when not given); UserError naming the flag when not a date."""
    if text is None:
        return None
    try:
        return int(f"{to_date(text):%Y%m%d}")
    except UserError as exc:
        raise UserError(f"{flag} {exc}") from None


def add_day_range_args(parser):
    """--source_dir, --start_date, --end_date (the seed's flags); None when not given, so the
    params.json values (paths.sea_ice_data, sea_ice.start_date/end_date) apply."""
    parser.add_argument("--source_dir", default=None,
                        help="folder of daily asi-AMSR2-<product>-YYYYMMDD-v5.4.nc files "
                             "(default: paths.sea_ice_data in params.json)")
    parser.add_argument("--start_date", default=None,
                        help="first day, YYYYMMDD (default: sea_ice.start_date in params.json)")
    parser.add_argument("--end_date", default=None,
                        help="last day, YYYYMMDD, inclusive (default: sea_ice.end_date in params.json)")
    return parser


def format_dates(dates, limit=20):
    """'20240405, 20240406' (at most `limit` dates, then '... (N in all)')."""
    text = ", ".join(f"{d:%Y%m%d}" for d in dates[:limit])
    return text + (f", ... ({len(dates)} in all)" if len(dates) > limit else "")


# --------------------------------------------------------------------------- reading
def _z(nc):
    if "z" not in nc.variables:
        raise KeyError(f"no variable 'z' (variables: {', '.join(nc.variables) or 'none'})")
    z = nc.variables["z"]
    if z.ndim != 2:
        raise ValueError(f"z has shape {z.shape}, expected 2-D (y, x)")
    return z


def z_shape(path):
    """(H, W) of z in one file, reading only the header; raises when unreadable."""
    with netCDF4.Dataset(path) as nc:
        return tuple(_z(nc).shape)


def read_day(path, window=Ellipsis):
    """z of one ASI file as C-contiguous float32 in %, NaN where missing: (H, W), or the part `window`
    selects (e.g. (slice(ymin, ymax), slice(xmin, xmax)); only that part is read). Raises on any read
    problem (not NetCDF, no z, z not 2-D)."""
    with netCDF4.Dataset(path) as nc:
        z = _z(nc)[window]
    return np.ascontiguousarray(np.ma.filled(np.ma.asarray(z, dtype=np.float32), np.nan))


def read_grid(path):
    """x, y and the grid mapping of one ASI file, to copy into outputs.

    Returns {"x": (values, attrs, dtype), "y": (...), "mapping": (name, dtype, attrs) or None,
    "source_title": str}. A missing x or y is a UserError naming the file.
    """
    with netCDF4.Dataset(path) as nc:
        grid = {}
        for name in ("x", "y"):
            if name not in nc.variables:
                raise UserError(f"{path}: no coordinate variable {name!r}; expected the Bremen ASI layout")
            var = nc.variables[name]
            var.set_auto_mask(False)
            grid[name] = (np.asarray(var[:]), {k: var.getncattr(k) for k in var.ncattrs() if k != "_FillValue"},
                          var.dtype)
        mapping_name = getattr(nc.variables["z"], "grid_mapping", "polar_stereographic") \
            if "z" in nc.variables else "polar_stereographic"
        grid["mapping"] = None
        if mapping_name in nc.variables:
            var = nc.variables[mapping_name]
            grid["mapping"] = (mapping_name, var.dtype,
                               {k: var.getncattr(k) for k in var.ncattrs() if k != "_FillValue"})
        grid["source_title"] = str(getattr(nc, "title", getattr(nc, "product", "ASI AMSR2")))
    return grid
