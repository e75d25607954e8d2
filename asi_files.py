"""Bremen ASI AMSR2 day files: names, dates, and reading them checked (one place for every sea-ice script).

    asi_filename(20240417)          -> "asi-AMSR2-n3125-20240417-v5.4.nc"
    date_range(20240401, 20240430)  -> [datetime.date, ...] (inclusive)
    DayFile(path)                   -> the header checked against the format (BadDay if unusable)
    read_day(path)                  -> z as float32 (H, W) in %, NaN where missing, rows ascending in y
    read_grid(path)                 -> x, y and the grid mapping, to copy into outputs
    scan_days(folder, days, product)-> each day's file or None (absent / unusable), the grid

File layout: ../shared/docs/bremen-asi-format.md. Every file is checked against it in all the
pipeline uses (z, its dims, x/y present, evenly spaced and ascending, units, values in 0..100 %);
what is unambiguous is corrected and said (y descending: flipped; fraction: x 100), anything else
makes the day unusable (BadDay), and every script treats it as a missing day. HDF5 is not
thread-safe: open these files from one thread at a time (separate processes are fine).
"""
import collections
import datetime as dt
import os
import sys

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
        raise UserError(f"{str(value)!r}: expected a calendar day as YYYYMMDD (8 digits)")
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


# --------------------------------------------------------------------------- reading, checked
# What the pipeline relies on (../shared/docs/bremen-asi-format.md), checked for every file it reads:
# NetCDF-4 (HDF5), a numeric variable z with dims (y, x) in % in [0, 100] (NaN = no data), and 1-D
# coordinates x, y in metres, evenly spaced and ascending. What can be corrected without doubt is
# corrected and said (DayFile.corrections); anything else makes the day unusable (BadDay).
PERCENT_UNITS = ("%", "percent", "percentage")
FRACTION_UNITS = ("1", "fraction", "0-1")
METRE_UNITS = ("m", "meter", "meters", "metre", "metres")
RANGE_TOLERANCE = 1e-3  # %, float rounding around 0 and 100


class BadDay(Exception):
    """A day file that cannot be used as a Bremen ASI day: unreadable, not the format, or no valid value.
    The day is treated as missing; str(exc) is the reason, one line."""


class Unreadable(BadDay):
    """A file that does not open as NetCDF, or whose z cannot be read (damaged, truncated)."""


class BadValues(BadDay):
    """A complete, well-formed day file whose values are outside 0..100 %."""


class NoData(BadDay):
    """A complete, well-formed day file with no valid value (z NaN everywhere): no data that day."""


def _reason(exc):
    text = str(exc.args[-1] if getattr(exc, "args", None) else exc)
    return text.splitlines()[0] if text else type(exc).__name__


class DayFile:
    """One Bremen ASI day file, its header checked against the format at construction.

    DayFile(path) raises BadDay when the file is not NetCDF-4, has no numeric 2-D z with dims
    (y, x) (either order), no 1-D x/y of matching length that are finite, evenly spaced and
    monotonic, or z/x/y units that are neither the format's nor an unambiguous variant.
    Attributes: path; shape (H, W) as read() returns it; x (W,), y (H,) ascending, metres;
    corrections: what read() corrects, e.g. "y descending: rows flipped to ascending y".
    Corrections made without doubt: y or x descending (flipped), z stored (x, y) (transposed),
    z in fraction units "1" (x 100), x/y in km (x 1000); a z in [0, 1] on a whole frame
    although its units say % is a fraction too (read() adds that correction).
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self.corrections = []
        try:
            with netCDF4.Dataset(self.path) as nc:
                if nc.disk_format != "HDF5":
                    raise BadDay(f"a {nc.data_model} file; Bremen ASI days are NetCDF-4 (HDF5), and a truncated "
                                 "classic file cannot be told from a complete one")
                self._check_z(nc)
                self.x, self.flip_x = self._axis(nc, "x")
                self.y, self.flip_y = self._axis(nc, "y")
        except BadDay:
            raise
        except FileNotFoundError:
            raise Unreadable("file not found") from None
        except (OSError, RuntimeError, ValueError, KeyError, IndexError, AttributeError) as exc:
            raise Unreadable(f"does not open as NetCDF ({_reason(exc)})") from None
        self.shape = (len(self.y), len(self.x))

    def _check_z(self, nc):
        if "z" not in nc.variables:
            raise BadDay(f"no variable 'z' (variables: {', '.join(nc.variables) or 'none'})")
        z = nc.variables["z"]
        if z.dtype.kind not in "fiu":
            raise BadDay(f"z is {z.dtype}, expected numbers (float32 % in the format)")
        if tuple(z.dimensions) not in (("y", "x"), ("x", "y")):
            raise BadDay(f"z has dims {tuple(z.dimensions)} {tuple(z.shape)}, expected (y, x)")
        self.transposed = tuple(z.dimensions) == ("x", "y")
        if self.transposed:
            self.corrections.append("z stored as (x, y): transposed to (y, x)")
        units = str(getattr(z, "units", "%")).strip().lower()
        if units in FRACTION_UNITS:
            self.scale = 100.0
            self.corrections.append(f"z units {units!r} (fraction): multiplied by 100 to %")
        elif units in PERCENT_UNITS or units == "":
            self.scale = 1.0
        else:
            raise BadDay(f"z units {units!r}, expected '%' (sea-ice concentration in percent)")

    def _axis(self, nc, name):
        if name not in nc.variables:
            raise BadDay(f"no coordinate variable {name!r}; expected the Bremen ASI layout")
        var = nc.variables[name]
        var.set_auto_mask(False)
        values = np.asarray(var[:], dtype=np.float64)
        size = len(nc.dimensions[name]) if name in nc.dimensions else -1
        if values.ndim != 1 or values.size != size or values.size < 2:
            raise BadDay(f"{name} has shape {values.shape}, expected ({size},) along dimension {name!r}")
        units = str(getattr(var, "units", "m")).strip().lower()
        if units == "km":
            values = values * 1000.0
            self.corrections.append(f"{name} in km: converted to metres")
        elif units not in METRE_UNITS:
            raise BadDay(f"{name} units {units!r}, expected metres ('m')")
        steps = np.diff(values)
        if not np.isfinite(values).all() or not (np.all(steps > 0) or np.all(steps < 0)) or \
                np.ptp(steps) > 1e-3 * np.abs(steps).mean():
            raise BadDay(f"{name} is not evenly spaced and monotonic ({values[0]:g} .. {values[-1]:g}, "
                         f"steps {steps.min():g} .. {steps.max():g} m)")
        flip = bool(steps[0] < 0)
        if flip:
            values = values[::-1].copy()
            self.corrections.append(f"{name} descending: flipped to ascending {name} "
                                    f"({'row 0 = southern edge' if name == 'y' else 'column 0 = western edge'})")
        return values, flip

    def _stored_window(self, window):
        """Slices of the stored (unflipped, untransposed) z for a window of the corrected grid."""
        rows, cols = window
        n_y, n_x = self.shape
        rows, cols = slice(*rows.indices(n_y)), slice(*cols.indices(n_x))
        if rows.step != 1 or cols.step != 1:
            raise ValueError("read(): window slices must have step 1")
        if self.flip_y:
            rows = slice(n_y - rows.stop, n_y - rows.start)
        if self.flip_x:
            cols = slice(n_x - cols.stop, n_x - cols.start)
        return (cols, rows) if self.transposed else (rows, cols)

    def read(self, window=None):
        """z as C-contiguous float32 in %, NaN where missing, rows ascending in y: (H, W), or the part
        window = (slice(ymin, ymax), slice(xmin, xmax)) of that grid (only that part is read).

        Raises BadDay when a value lies outside 0..100 %, or, for the whole frame, when no value is
        valid (the day is missing). The fraction check (a whole frame within 0..1 although its
        units say %) needs the whole frame; it is not made for a window.
        """
        whole = window is None or window is Ellipsis
        key = Ellipsis if whole else self._stored_window(window)
        try:
            with netCDF4.Dataset(self.path) as nc:
                z = _read_z(nc.variables["z"], key)
        except (OSError, RuntimeError, ValueError, KeyError, IndexError) as exc:
            raise Unreadable(f"cannot read z ({_reason(exc)})") from None
        if self.transposed:
            z = z.T
        if self.flip_y:
            z = z[::-1]
        if self.flip_x:
            z = z[:, ::-1]
        z = np.ascontiguousarray(z) * np.float32(self.scale)
        valid = ~np.isnan(z)
        if whole and not valid.any():
            raise NoData("no valid value (z is NaN everywhere): no data that day")
        values = z[valid]
        if values.size:
            low, high = float(values.min()), float(values.max())
            if whole and self.scale == 1.0 and 0 < high <= 1.0:
                z *= np.float32(100)
                low, high = low * 100, high * 100
                note = "z within 0..1 although in %: a fraction, multiplied by 100"
                if note not in self.corrections:
                    self.corrections.append(note)
            if low < -RANGE_TOLERANCE or high > 100 + RANGE_TOLERANCE or not np.isfinite([low, high]).all():
                bad = int(np.count_nonzero(~((values >= -RANGE_TOLERANCE) & (values <= 100 + RANGE_TOLERANCE))))
                raise BadValues(f"{bad} values of z outside 0..100 % (min {low:g}, max {high:g})")
            np.clip(z, 0, 100, out=z)
        return z


def _read_z(var, key):
    """var[key] as float32, NaN where missing (NaN, _FillValue or the netCDF default fill, missing_value),
    scale_factor and add_offset applied. Unlike netCDF4's auto-masking, values outside a declared
    valid range are kept, so that the range check sees them (a file that hides them is not trusted)."""
    var.set_auto_maskandscale(False)
    raw = np.asarray(var[key])
    attrs = {name: var.getncattr(name) for name in var.ncattrs()}
    missing = np.isnan(raw) if raw.dtype.kind == "f" else np.zeros(raw.shape, bool)
    fills = [attrs.get("_FillValue", netCDF4.default_fillvals.get(raw.dtype.str[1:]))]
    fills += list(np.atleast_1d(attrs.get("missing_value", [])))
    for fill in fills:
        if fill is not None and not np.isnan(np.float64(fill)):
            missing |= raw == fill
    z = raw.astype(np.float32)
    if "scale_factor" in attrs:
        z *= np.float32(attrs["scale_factor"])
    if "add_offset" in attrs:
        z += np.float32(attrs["add_offset"])
    z[missing] = np.nan
    return z


def read_day(path, window=None, note=None):
    """z of one ASI day checked against the format: float32 (H, W) in %, NaN where missing, rows ascending
    in y (see DayFile.read; window selects a part). note(path, text) is called with each correction
    made (default: a line "note: <path>: <text>" on stderr). Raises BadDay when the day cannot be used."""
    day = DayFile(path)
    z = day.read(window)
    for text in day.corrections:
        (note or _note_stderr)(path, text)
    return z


def _note_stderr(path, text):
    from tqdm import tqdm
    tqdm.write(f"note: {path}: {text}", file=sys.stderr)


def z_shape(path):
    """(H, W) of z in one file as read_day returns it, from the header only; raises BadDay."""
    return DayFile(path).shape


def read_grid(path):
    """x, y and the grid mapping of one ASI day, to copy into outputs; x, y ascending in metres as read_day
    returns the rows and columns (a corrected file gives corrected coordinates).

    Returns {"x": (values, attrs, dtype), "y": (...), "mapping": (name, dtype, attrs) or None,
    "source_title": str}. Raises BadDay when the file does not pass DayFile's checks.
    """
    day = DayFile(path)
    with netCDF4.Dataset(path) as nc:
        grid = {}
        for name, values in (("x", day.x), ("y", day.y)):
            var = nc.variables[name]
            attrs = {k: var.getncattr(k) for k in var.ncattrs() if k != "_FillValue"}
            dtype = var.dtype if np.array_equal(values.astype(var.dtype), values) else np.dtype(np.float64)
            if "units" in attrs:
                attrs["units"] = "m"
            grid[name] = (values.astype(dtype), attrs, dtype)
        mapping_name = getattr(nc.variables["z"], "grid_mapping", "polar_stereographic")
        grid["mapping"] = None
        if mapping_name in nc.variables:
            var = nc.variables[mapping_name]
            grid["mapping"] = (mapping_name, var.dtype,
                               {k: var.getncattr(k) for k in var.ncattrs() if k != "_FillValue"})
        grid["source_title"] = str(getattr(nc, "title", getattr(nc, "product", "ASI AMSR2")))
    return grid


# --------------------------------------------------------------------------- scanning a range of days
DayScan = collections.namedtuple("DayScan", "paths shape first_path absent bad")


def scan_days(source_dir, days, product, warn=None):
    """Find each day's file and check its header (DayFile), for every sea-ice script.

    Returns DayScan(paths, shape, first_path, absent, bad): paths[i] is the file of days[i], or None
    when there is none (day listed in `absent`) or its header fails the check (listed in `bad` as
    (day, reason) and warned about, via warn(text), default stderr); shape (H, W) and first_path of
    the first usable file. UserError when a usable file is on another grid than the first one
    (shape or x/y coordinates: mixed products), or when no file of the range is usable.
    """
    warn = warn or (lambda text: print(f"warning: {text}", file=sys.stderr))
    paths, absent, bad = [], [], []
    first = None
    for day in days:
        path = os.path.join(source_dir, asi_filename(day, product))
        if not os.path.exists(path):
            paths.append(None)
            absent.append(day)
            continue
        try:
            header = DayFile(path)
        except BadDay as exc:
            warn(f"{path}: {exc}; day treated as missing")
            paths.append(None)
            bad.append((day, str(exc)))
            continue
        if first is None:
            first = header
        elif header.shape != first.shape:
            raise UserError(f"{path}: z is {header.shape[0]}x{header.shape[1]}, expected "
                            f"{first.shape[0]}x{first.shape[1]} like {first.path}; do not mix products in one folder")
        elif not all(np.allclose(a, b, rtol=0, atol=1.0) for a, b in ((header.x, first.x), (header.y, first.y))):
            raise UserError(f"{path}: x/y coordinates differ from those of {first.path} (another grid?); "
                            "do not mix products in one folder")
        paths.append(path)
    if first is None:
        pattern = asi_filename(days[0], product).replace(f"{days[0]:%Y%m%d}", "*")
        raise UserError(f"{source_dir}: no readable {pattern} file for {days[0]:%Y%m%d}..{days[-1]:%Y%m%d}")
    return DayScan(paths, first.shape, first.path, absent, bad)
