"""PyTorch dataset over a consolidated sea-ice file (consolidate_data.py output, .nc or .zarr).

    from utils import ConsolidatedSICDataset
    dataset = ConsolidatedSICDataset("./sea_ice_concentration_202404.nc", 20240401, 20240430,
                                     input_length=5, pred_length=3)
    inputs, targets = dataset[0]   # float32 tensors (5, 1, H, W) and (3, 1, H, W), fraction 0..1

The file holds `sea_ice_conc (time, y, x)` float32 fraction, `time` int32 YYYYMMDD
(every day of its range), `missing_dates` int32 (days that had no usable source
file and were filled entirely by interpolation), `x`, `y` in metres.

Sample indexing (all in days, counted on the file's daily time axis):
    input span    = input_gap * (input_length - 1) + 1
    inputs        = start + input_gap * j,                               j < input_length
    targets       = start + input_span - 1 + pred_shift + pred_gap * k,  k < pred_length
    sample starts = start_time, start_time + samples_gap, ...; every frame of a sample
                    lies within [start_time, end_time].
With the defaults (gaps 1, pred_shift 1) the targets are the days right after the inputs.
A sample "touches" a missing date when one of its input or target days is in
`missing_dates`; such samples are dropped (skip_missing=True, the default) without
moving the grid of sample starts.

Frames are read lazily, only the frames an item needs (and only the ROI of them);
each process (each DataLoader worker) opens its own file handle on first use, so the
dataset pickles and works with num_workers > 0. preload_data=True reads every frame
the samples need into memory once, at construction.
"""
import os
import warnings

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from config import SCHEMA, UserError
from asi_files import to_date

FLAG_OBSERVED, FLAG_LAND, FLAG_POLE_HOLE = 0, 4, 5  # fill_flag values of consolidate_data.py
DEFAULT_MAX_MISSING_FRACTION = SCHEMA["sea_ice"]["max_missing_fraction"].default


# --------------------------------------------------------------------------- file readers
class _NetCDFReader:
    """Read variables of a NetCDF file with netCDF4 (CF scale/offset applied, values as stored
    otherwise: no masked arrays, which would cost ~40% more per frame for nothing here)."""

    def __init__(self, path):
        import netCDF4

        self.file = netCDF4.Dataset(path)
        self.file.set_auto_mask(False)
        self.variables = self.file.variables

    def dims(self, name):
        return tuple(self.variables[name].dimensions)

    def read(self, name, key=()):
        return np.asarray(self.variables[name][key])

    def close(self):
        self.file.close()


class _ZarrReader:
    """Read arrays of a Zarr store (v2 or v3, as xarray writes them) with zarr."""

    def __init__(self, path):
        import zarr

        self.group = zarr.open_group(path, mode="r")
        self.variables = {name: array for name, array in self.group.arrays()}

    def dims(self, name):
        array = self.variables[name]
        names = getattr(array.metadata, "dimension_names", None) or array.attrs.get("_ARRAY_DIMENSIONS")
        return tuple(names or ())

    def read(self, name, key=()):
        array = self.variables[name]
        values = np.asarray(array[key])
        scale, offset = array.attrs.get("scale_factor"), array.attrs.get("add_offset")
        if scale is not None or offset is not None:
            values = values * (1 if scale is None else scale) + (0 if offset is None else offset)
        return values

    def close(self):
        pass


def open_consolidated(path):
    """A reader (.read(name, key), .dims(name), .variables, .close()) for a .nc file or .zarr store."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UserError(f"{path}: consolidated file not found (make it with consolidate_data.py)")
    kind = "zarr" if path.rstrip("/\\").endswith(".zarr") or os.path.isdir(path) else "nc"
    try:
        return _ZarrReader(path) if kind == "zarr" else _NetCDFReader(path)
    except Exception as exc:
        raise UserError(f"{path}: cannot open as {'Zarr' if kind == 'zarr' else 'NetCDF'} ({exc})") from None


# --------------------------------------------------------------------------- the dataset
class ConsolidatedSICDataset(Dataset):
    """Input/target sequences of daily sea-ice concentration from one consolidated file.

    consolidated_file_path: .nc file or .zarr store written by consolidate_data.py.
    start_time, end_time: first and last day (int or str YYYYMMDD, inclusive) from which
        samples are drawn; None: the file's first / last day. Must lie within the file.
    input_length, input_gap, pred_gap, pred_shift, pred_length, samples_gap: days, see the
        module docstring (all >= 1).
    preload_data: read every needed frame into memory at construction (fast items, memory
        = frames x H x W x 4 bytes); False reads each item's frames from disk.
    skip_missing: drop samples whose input or target days include a date of `missing_dates`.
    land_mask: None, the path of a create_mask.py NetCDF (variable land_mask), or an array
        (H, W) of the file's full grid (numpy or torch, nonzero/True = land). Exposed as
        `self.land_mask`, a bool tensor (h, w) after the ROI crop (None without a mask); the
        file's pole_hole variable (no data, not land) as `self.pole_hole` (None without it):
        leave it out of a loss too (`~land_mask & ~pole_hole`), its values are filled.
    mask_land: with a land mask, set land pixels to 0 in inputs and targets (a consolidated
        file made with the same mask already has land at 0). Default False: values untouched.
    max_missing_fraction: a sample is dropped when one of its input or target days has more
        than this fraction of its pixels not observed (fill_flag not 0 "observed"; counted over
        the ROI's pixels that are not land, by fill_flag 4 or land_mask, nor pole hole, fill_flag
        5). Days in missing_dates are left to skip_missing. Default 0.5
        (sea_ice.max_missing_fraction); 1 keeps every sample. Needs the file's
        fill_flag (a warning says when it has none). The fraction of each needed day is
        `unobserved_fraction[t]` (NaN for days not read), the count dropped `n_too_unobserved`.
    roi: (ymin, ymax, xmin, xmax) pixel rows/columns to keep, half-open ([ymin, ymax) x
        [xmin, xmax)), row 0 = the first row of the file (smallest y). None: the full frame.

    Item i -> (inputs float32 tensor (input_length, 1, h, w), targets float32 tensor
    (pred_length, 1, h, w)), fraction 0..1.
    Attributes: times (all file days, int YYYYMMDD), missing_dates, input_indices
    (N, input_length) and target_indices (N, pred_length) into `times`, x (w,), y (h,) in
    metres, land_mask, n_touching_missing (samples that touch a missing date, kept or not).

    Methods (the seed's names):
        GetTimes() -> (input_times (N, input_length), target_times (N, pred_length)) int64
            YYYYMMDD; reads no frame.
        GetInputs(max_gib=2.0) -> float32 tensor (N, input_length, 1, h, w): every sample's
            inputs (each frame read once); UserError if that would exceed max_gib GiB.
        GetTargets(max_gib=2.0) -> float32 tensor (N, pred_length, 1, h, w), likewise.
        close() -> closes this process's file handle (reopened if needed).

    Land in a loss: `ocean = ~dataset.land_mask` (True on water). Note that land_mask is
    1 on land: multiplying data by it, as the seed's README example does, keeps land and
    zeroes the ocean; multiply by `ocean` (or use mask_land=True) instead.
    """

    def __init__(self, consolidated_file_path, start_time=None, end_time=None, input_length=5, input_gap=1,
                 pred_gap=1, pred_shift=1, pred_length=3, samples_gap=1, preload_data=False,
                 skip_missing=True, land_mask=None, roi=None, mask_land=False,
                 max_missing_fraction=DEFAULT_MAX_MISSING_FRACTION):
        super().__init__()
        self.path = os.fspath(consolidated_file_path)
        steps = {"input_length": input_length, "input_gap": input_gap, "pred_gap": pred_gap,
                 "pred_shift": pred_shift, "pred_length": pred_length, "samples_gap": samples_gap}
        for name, value in steps.items():
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise UserError(f"{name}: expected an integer >= 1, got {value!r}")
        self.input_length, self.input_gap, self.pred_gap = int(input_length), int(input_gap), int(pred_gap)
        self.pred_shift, self.pred_length, self.samples_gap = int(pred_shift), int(pred_length), int(samples_gap)
        self.skip_missing, self.mask_land = bool(skip_missing), bool(mask_land)
        self._reader_obj, self._reader_pid = None, None

        reader = open_consolidated(self.path)
        try:
            self._read_metadata(reader)
        finally:
            reader.close()
        self._select_roi(roi)
        self._enumerate_samples(start_time, end_time)
        self._load_land_mask(land_mask)
        self._drop_unobserved(max_missing_fraction)
        self._preloaded = None
        if preload_data:
            self._preload()

    # ----------------------------------------------------------------------- construction
    def _read_metadata(self, reader):
        for name in ("sea_ice_conc", "time"):
            if name not in reader.variables:
                raise UserError(f"{self.path}: no variable {name!r}; expected consolidate_data.py output "
                                f"(variables: {', '.join(reader.variables)})")
        dims = reader.dims("sea_ice_conc")
        shape = tuple(reader.variables["sea_ice_conc"].shape)
        if len(shape) != 3 or (dims and dims[0] != "time"):
            raise UserError(f"{self.path}: sea_ice_conc has dims {dims or shape}, expected (time, y, x)")
        self.times = reader.read("time").astype(np.int64).ravel()
        if len(self.times) != shape[0]:
            raise UserError(f"{self.path}: time has {len(self.times)} values but sea_ice_conc {shape[0]} frames")
        self.frame_shape = shape[1:]
        self.missing_dates = (reader.read("missing_dates").astype(np.int64).ravel()
                              if "missing_dates" in reader.variables else np.zeros(0, np.int64))
        self._full_x = reader.read("x") if "x" in reader.variables else None
        self._full_y = reader.read("y") if "y" in reader.variables else None
        try:
            self._ordinals = np.array([to_date(int(t)).toordinal() for t in self.times], dtype=np.int64)
        except UserError:
            raise UserError(f"{self.path}: time values are not dates YYYYMMDD "
                            f"(first: {self.times[:3].tolist()})") from None
        if len(self.times) and np.any(np.diff(self._ordinals) != 1):
            bad = int(np.flatnonzero(np.diff(self._ordinals) != 1)[0])
            raise UserError(f"{self.path}: time is not one frame per day ({self.times[bad]} is followed by "
                            f"{self.times[bad + 1]}); expected consolidate_data.py output")

    def _select_roi(self, roi):
        n_y, n_x = self.frame_shape
        if roi is None:
            roi = (0, n_y, 0, n_x)
        try:
            ymin, ymax, xmin, xmax = (int(v) for v in roi)
        except (TypeError, ValueError):
            raise UserError(f"roi {roi!r}: expected (ymin, ymax, xmin, xmax) integers") from None
        if not (0 <= ymin < ymax <= n_y and 0 <= xmin < xmax <= n_x):
            raise UserError(f"roi {tuple(roi)}: expected 0 <= ymin < ymax <= {n_y} and 0 <= xmin < xmax <= {n_x} "
                            f"(half-open pixel ranges of the {n_y}x{n_x} grid of {self.path})")
        self.roi = (ymin, ymax, xmin, xmax)
        self._window = (slice(ymin, ymax), slice(xmin, xmax))
        self.y = None if self._full_y is None else self._full_y[ymin:ymax]
        self.x = None if self._full_x is None else self._full_x[xmin:xmax]

    def _enumerate_samples(self, start_time, end_time):
        if len(self.times) == 0:
            raise UserError(f"{self.path}: the file has no time steps")
        first, last = to_date(int(self.times[0])), to_date(int(self.times[-1]))
        start = first if start_time is None else to_date(start_time)
        end = last if end_time is None else to_date(end_time)
        if end < start:
            raise UserError(f"end_time {end:%Y%m%d} is before start_time {start:%Y%m%d}")
        if start < first or end > last:
            raise UserError(f"{self.path}: requested {start:%Y%m%d}..{end:%Y%m%d} is outside the file's time "
                            f"range {first:%Y%m%d}..{last:%Y%m%d}")
        i_start, i_end = start.toordinal() - first.toordinal(), end.toordinal() - first.toordinal()
        self.start_time, self.end_time = int(f"{start:%Y%m%d}"), int(f"{end:%Y%m%d}")

        input_span = self.input_gap * (self.input_length - 1) + 1
        first_target = input_span - 1 + self.pred_shift  # offset of the first target from the start
        sample_span = first_target + self.pred_gap * (self.pred_length - 1) + 1
        starts = np.arange(i_start, i_end - sample_span + 2, self.samples_gap, dtype=np.int64)
        if len(starts) == 0:
            raise UserError(
                f"no sample fits in {self.start_time}..{self.end_time} ({i_end - i_start + 1} days): one sample "
                f"spans {sample_span} days (input_length {self.input_length}, input_gap {self.input_gap}, "
                f"pred_shift {self.pred_shift}, pred_length {self.pred_length}, pred_gap {self.pred_gap})")
        inputs = starts[:, None] + self.input_gap * np.arange(self.input_length)
        targets = starts[:, None] + first_target + self.pred_gap * np.arange(self.pred_length)
        missing_idx = np.flatnonzero(np.isin(self.times, self.missing_dates))
        touches = np.isin(inputs, missing_idx).any(axis=1) | np.isin(targets, missing_idx).any(axis=1)
        self.n_touching_missing = int(touches.sum())
        if self.skip_missing:
            if touches.all():
                inside = [int(t) for t in self.times[missing_idx] if self.start_time <= t <= self.end_time]
                raise UserError(f"all {len(starts)} samples in {self.start_time}..{self.end_time} touch a missing "
                                f"date ({', '.join(map(str, inside[:10]))}{' ...' if len(inside) > 10 else ''}); "
                                "pass skip_missing=False to keep them")
            inputs, targets = inputs[~touches], targets[~touches]
        self.input_indices, self.target_indices = inputs, targets

    def _load_land_mask(self, land_mask):
        self._land = self._pole = self._pole_full = None
        self.land_mask = self.pole_hole = None
        if land_mask is None:
            if self.mask_land:
                raise UserError("mask_land=True needs a land_mask (path or (H, W) array)")
            return
        if isinstance(land_mask, (str, os.PathLike)):
            mask = self._read_mask_file(os.fspath(land_mask))
        else:
            mask = land_mask.detach().cpu().numpy() if torch.is_tensor(land_mask) else np.asarray(land_mask)
            if mask.shape != tuple(self.frame_shape):
                raise UserError(f"land_mask has shape {mask.shape}, expected the full grid {tuple(self.frame_shape)} "
                                f"of {self.path} (the ROI crop is applied by the dataset)")
        self._land = np.ascontiguousarray(mask[self._window] != 0)
        self.land_mask = torch.from_numpy(self._land.copy())
        if self._pole_full is not None:  # create_mask.py's pole_hole: no data, not land
            self._pole = np.ascontiguousarray(self._pole_full[self._window]) & ~self._land
            self.pole_hole = torch.from_numpy(self._pole.copy())

    def _read_mask_file(self, path):
        if not os.path.isfile(path):
            raise UserError(f"{path}: land mask file not found (make it with create_mask.py)")
        reader = open_consolidated(path)
        try:
            if "land_mask" not in reader.variables:
                raise UserError(f"{path}: no variable 'land_mask'; expected create_mask.py output")
            mask = reader.read("land_mask")
            if "pole_hole" in reader.variables and reader.variables["pole_hole"].shape == mask.shape:
                self._pole_full = np.nan_to_num(reader.read("pole_hole").astype(np.float64)) != 0
            if mask.shape != tuple(self.frame_shape):
                raise UserError(f"{path}: land_mask is {mask.shape[0]}x{mask.shape[1]}, expected "
                                f"{self.frame_shape[0]}x{self.frame_shape[1]} like {self.path}")
            for name, ours in (("x", self._full_x), ("y", self._full_y)):
                if ours is not None and name in reader.variables:
                    theirs = reader.read(name)
                    if theirs.shape != ours.shape or not np.allclose(theirs, ours, rtol=0, atol=1.0):
                        raise UserError(f"{path}: its {name} coordinates differ from those of {self.path} "
                                        "(mask made on another grid?)")
        finally:
            reader.close()
        return np.nan_to_num(mask.astype(np.float64)) != 0

    def _drop_unobserved(self, max_missing_fraction):
        """Drop the samples with a day whose unobserved fraction (fill_flag != observed, over the ROI's
        pixels that are neither land (flag or land_mask) nor pole hole) exceeds max_missing_fraction."""
        if isinstance(max_missing_fraction, bool) or not isinstance(max_missing_fraction, (int, float, np.number)) \
                or not 0 <= max_missing_fraction <= 1:
            raise UserError(f"max_missing_fraction: expected a fraction between 0 and 1, got {max_missing_fraction!r}")
        self.max_missing_fraction = float(max_missing_fraction)
        self.unobserved_fraction = np.full(len(self.times), np.nan)
        self.n_too_unobserved = 0
        if self.max_missing_fraction >= 1:
            return
        reader = open_consolidated(self.path)
        try:
            if "fill_flag" not in reader.variables:
                warnings.warn(f"{self.path}: no fill_flag variable: max_missing_fraction cannot be applied "
                              "(only days in missing_dates are known to be missing)", stacklevel=3)
                return
            needed = self._needed_indices()
            for t in tqdm(needed, desc="fill_flag", unit="day", disable=len(needed) < 50):
                self.unobserved_fraction[t] = self._unobserved(reader.read("fill_flag", (int(t),) + self._window))
        finally:
            reader.close()
        too_many = self.unobserved_fraction > self.max_missing_fraction
        too_many[np.isin(self.times, self.missing_dates)] = False  # days with no file: skip_missing decides
        drop = too_many[self.input_indices].any(axis=1) | too_many[self.target_indices].any(axis=1)
        self.n_too_unobserved = int(drop.sum())
        if drop.all():
            worst = [f"{self.times[t]} ({self.unobserved_fraction[t]:.2f})" for t in np.flatnonzero(too_many)[:5]]
            raise UserError(f"all {len(drop)} samples in {self.start_time}..{self.end_time} have a day with more "
                            f"than max_missing_fraction={self.max_missing_fraction:g} of its pixels not observed "
                            f"(e.g. {', '.join(worst)}); raise max_missing_fraction (sea_ice.max_missing_fraction)")
        self.input_indices, self.target_indices = self.input_indices[~drop], self.target_indices[~drop]

    def _unobserved(self, flag):
        """Fraction of the pixels of one fill_flag frame (h, w) that are neither land nor pole hole and were
        not observed; NaN when there is no such pixel."""
        counted = (flag != FLAG_LAND) & (flag != FLAG_POLE_HOLE)
        if self._land is not None:
            counted &= ~self._land
        if self._pole is not None:
            counted &= ~self._pole
        n = np.count_nonzero(counted)
        return np.count_nonzero(counted & (flag != FLAG_OBSERVED)) / n if n else np.nan

    def _needed_indices(self):
        return np.unique(np.concatenate([self.input_indices.ravel(), self.target_indices.ravel()]))

    def _preload(self):
        needed = self._needed_indices()
        h, w = self.roi[1] - self.roi[0], self.roi[3] - self.roi[2]
        data = np.empty((len(needed), h, w), dtype=np.float32)
        for row, t in enumerate(tqdm(needed, desc="preload", unit="frame", disable=len(needed) < 10)):
            data[row] = self._read_frame(t)
        row_of = np.full(len(self.times), -1, dtype=np.int64)
        row_of[needed] = np.arange(len(needed))
        self._preloaded, self._row_of = data, row_of
        self.close()

    # ----------------------------------------------------------------------- reading
    def _reader(self):
        """This process's reader; opened on first use in each process (DataLoader workers)."""
        pid = os.getpid()
        if self._reader_obj is None or self._reader_pid != pid:
            self._reader_obj, self._reader_pid = open_consolidated(self.path), pid
        return self._reader_obj

    def _read_frame(self, t):
        """Frame t of the file, ROI only: float32 (h, w), fraction."""
        return self._reader().read("sea_ice_conc", (int(t),) + self._window).astype(np.float32, copy=False)

    def _frames(self, indices):
        """Frames at file time indices: float32 (len(indices), h, w), land zeroed when mask_land."""
        if self._preloaded is not None:
            frames = self._preloaded[self._row_of[indices]]
        else:
            frames = np.stack([self._read_frame(t) for t in indices])
        if self.mask_land:
            frames[:, self._land] = 0.0
        return frames

    def __len__(self):
        return len(self.input_indices)

    def __getitem__(self, index):
        """(inputs (input_length, 1, h, w), targets (pred_length, 1, h, w)) float32 tensors, fraction."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"sample {index} out of range (dataset has {n} samples)")
        index %= n
        inputs = self._frames(self.input_indices[index])
        targets = self._frames(self.target_indices[index])
        return torch.from_numpy(inputs[:, None]), torch.from_numpy(targets[:, None])

    # ----------------------------------------------------------------------- whole-set views
    def GetTimes(self):
        """(input_times (N, input_length), target_times (N, pred_length)) int64 YYYYMMDD. Reads no frame."""
        return self.times[self.input_indices], self.times[self.target_indices]

    def _stack(self, indices, what, max_gib):
        n_bytes = indices.size * (self.roi[1] - self.roi[0]) * (self.roi[3] - self.roi[2]) * 4
        if n_bytes > max_gib * 2 ** 30:
            raise UserError(f"Get{what}() would hold {n_bytes / 2 ** 30:.2f} GiB ({indices.shape[0]} samples x "
                            f"{indices.shape[1]} frames of {self.roi[1] - self.roi[0]}x{self.roi[3] - self.roi[2]}), "
                            f"more than max_gib={max_gib:g}; iterate over the dataset, use a roi, or raise max_gib")
        unique = np.unique(indices)
        frames = self._frames(unique)  # each frame read once
        return torch.from_numpy(frames[np.searchsorted(unique, indices)][:, :, None])

    def GetInputs(self, max_gib=2.0):
        """All samples' inputs, float32 tensor (N, input_length, 1, h, w). UserError above max_gib GiB."""
        return self._stack(self.input_indices, "Inputs", max_gib)

    def GetTargets(self, max_gib=2.0):
        """All samples' targets, float32 tensor (N, pred_length, 1, h, w). UserError above max_gib GiB."""
        return self._stack(self.target_indices, "Targets", max_gib)

    # ----------------------------------------------------------------------- handles
    def close(self):
        """Close this process's file handle (it is reopened if an item is read again)."""
        if self._reader_obj is not None and self._reader_pid == os.getpid():
            self._reader_obj.close()
        self._reader_obj, self._reader_pid = None, None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_reader_obj"], state["_reader_pid"] = None, None  # never pickle an open handle
        return state

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        h, w = self.roi[1] - self.roi[0], self.roi[3] - self.roi[2]
        return (f"ConsolidatedSICDataset({self.path!r}, {self.start_time}..{self.end_time}, {len(self)} samples: "
                f"{self.input_length} input days -> {self.pred_length} target days, frames {h}x{w}"
                f"{', preloaded' if self._preloaded is not None else ''})")
