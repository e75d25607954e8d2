"""Raw nowcasting cases -> normalised per-event Zarr stores (seed 000, `preproc.py`).

    python preproc.py [--config params.json] [--raw_dataset DIR] [--processed_data DIR] [--skip_bad_cases]
                      [--workers N]

Reads `<raw_dataset>/<case>/<source>/<YYYYmmddHHMM>.npy` (../shared/docs/raw-case-layout.md) for
every source in `data.inputs` and the target source, and writes

    <processed_data>/stats.json            channel order, per-channel min/max after the transform
                                           (training cases only), transforms, target stats, split
    <processed_data>/<split>/<case>.zarr   one Zarr 3 store per case (split = train, val, test):
        inputs   (T, C, H, W) float32  normalised inputs, channels in data.inputs order (source by source)
        target   (T, H, W)    float32  normalised target channel
        coverage (T, H, W)    bool     the target has data there after gap filling
        valid    (T,)         bool     every source has data at this step; samples use valid steps only
        time     (T,)         int64    minutes since 1970-01-01 00:00 UTC
        motion   (T, 2, ceil(H/4), ceil(W/4)) float32  (data.motion) the target's motion field at each
                                       step at every 4th pixel, pixels per step, [0] along x, [1] along
                                       y (baselines.motion_field of the last data.motion_frames frames;
                                       see write_motion)
        rain_max (T, ceil(H/8), ceil(W/8)) float32  target max per 8 x 8 block, physical units
                                       (mm/h), NaN ignored, 0 where no data: dataset.py uses it to
                                       find rainy crops without reading the target
    Group attributes: case, split, channels, channel_sources, transform, target, grid_shape,
    time_step_minutes, max_gap_steps, native_step_minutes, files, steps_filled, steps_invalid,
    rain_block, normalisation (the min/max used).

The seven steps of the seed:
1. Discover cases (sub-folders of raw_dataset, sorted) and, in each, the source folders. Every
   file is checked without reading its data (np.load mmap header): name, dtype, channels, grid.
2. Common time axis per case: step `data.time_step_minutes`, from the earliest to the latest file
   of any source; a file lands on the step of its time (a time off that axis is an error). A
   source's *native step* is the most common difference between its consecutive file times
   (hourly NWP: 12 steps of 5 minutes; a 10-minute radar: 2 steps).
3. Gap filling, per pixel and channel, with `interpolation.fill_time_linear` (the same kernel as
   stage 1 of consolidate_data.py), in physical units, before the transform:
   - a NaN run of at most `max_gap_steps` steps between two values is filled linearly;
   - a coarse source is interpolated between its own consecutive times whatever max_gap_steps:
     its runs are filled up to max(max_gap_steps, native_steps - 1) steps. Files missing beyond
     the native step (two NWP files 2 h apart) make a gap like any other: filled when the whole
     run is at most that length (in axis steps), else not;
   - steps before the first or after the last file of a source stay NaN.
   `valid[t]` is False when some source has no file at step t and the step is not inside a
   filled run (before its first file, after its last, or in a too-long gap). Samples never use
   such a step, neither as input nor as target. Pixels still NaN (outside radar range) are 0 in
   the stored arrays; `coverage` is False where the *target* is NaN (inputs NaN become 0 too,
   with no mask: the model sees the channel minimum there).
4. Split the cases: `data.split` ratios with its seed (cases sorted, shuffled with
   numpy.random.default_rng(seed); counts by largest remainder; every split with a ratio > 0
   gets at least one case when there are enough cases), or explicit lists of case ids.
5. Per-channel min/max after the transform, from the files of the training cases only, read one
   file at a time (interpolated values lie between file values, so they cannot extend the range).
6. Normalise: x_norm = (transform(x) - min) / (max - min) (max == min: x_norm = transform(x) - min),
   NaN -> 0; `log1p` is log1p(max(x, 0)) (negative rain rates count as 0). The transforms, the
   scaling and its inverse `denormalize_target(y, stats)` (mm/h for rain) live in normalization.py.
   Each case is processed in tiles of all T steps x 128 rows x as many 128-column chunk columns
   as fit in TILE_BYTES (64 MiB; memory stays a few tiles whatever the grid) and written to
   <case>.zarr.tmp, renamed when complete; stores of cases no longer in a split are
   removed. Re-running writes identical stores.
7. A tqdm bar over cases and a one-line summary (cases per split, steps filled, steps invalid).

Bad input (a source folder missing or empty, a file that does not load or is not numeric, a file
name that is not a time, a time off the axis, mismatched grids within a case, a channel count that
does not match data.inputs) raises one line naming the case and file; `--skip_bad_cases` reports
the case and goes on without it.
"""
import argparse
import collections
import concurrent.futures
import contextlib
import datetime as dt
import functools
import json
import multiprocessing
import os
import shutil

import numba
import numpy as np
import zarr
from zarr.codecs import ZstdCodec
from tqdm import tqdm

from atomic import atomic_path
from config import (UserError, add_config_arg, add_override_flags, ensure_folder, list_folder, load_params,
                    overrides_from, run_main)
from interpolation import fill_time_linear
from baselines import motion_field
from normalization import channel_list, denormalize_target, normalize_inplace, sample_starts, transform, window_steps

SPLITS = ("train", "val", "test")
EPOCH = dt.datetime(1970, 1, 1)
TIME_UNITS = "minutes since 1970-01-01 00:00:00"
CHUNK_T = 4      # time steps per chunk (every array): 6 input steps touch 2-3 time chunks
CHUNK_XY = 128   # rows / columns per chunk: a 128 x 128 patch touches at most 4 chunks per time chunk
# Chunks are grouped in shards of all time steps x one chunk column (one file per 128 x 128
# column per array), so a case is a few hundred files, not tens of thousands.
COMPRESSOR = ZstdCodec(level=1)  # radar fields are mostly 0: ~20x smaller, fast to decode
RAIN_BLOCK = 8   # side (pixels) of the rain_max blocks
MOTION_STRIDE = 4  # the motion field is stored at every 4th pixel of each axis
RAIN_CHUNK_T = 16  # rain_max chunks: 16 steps of whole block frames (a crop's check reads 1 or 2)
TILE_BYTES = 64 * 2**20  # a case is processed in tiles of about this size (all steps, channels)


# --------------------------------------------------------------------------- 1-2: discover and place
def case_sources(params):
    """{source: channel names} read by preproc: data.inputs, then the target source if separate."""
    sources = {name: list(channels) for name, channels in params["data"]["inputs"].items()}
    target = params["data"]["target"]
    if target["source"] not in sources:
        sources[target["source"]] = [target["channel"]]
    return sources


def minutes_since_epoch(text):
    """Minutes since 1970-01-01 00:00 UTC of a time written YYYYmmddHHMM (12 digits); ValueError otherwise."""
    if len(text) != 12 or not text.isdigit():
        raise ValueError(f"not a time YYYYmmddHHMM: {text!r}")
    when = dt.datetime.strptime(text, "%Y%m%d%H%M")
    return int((when - EPOCH).total_seconds()) // 60


def parse_time(case_id, path):
    """Minutes since 1970-01-01 of a file named YYYYmmddHHMM.npy."""
    try:
        return minutes_since_epoch(os.path.basename(path)[:-4])
    except ValueError:
        raise UserError(f"case {case_id}: {path}: file name is not a time YYYYmmddHHMM.npy") from None


def read_header(case_id, path):
    """Shape of a .npy file, checked to be a numeric array, without reading its data."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - any failure means the file does not load
        raise UserError(f"case {case_id}: {path}: cannot load as .npy ({type(exc).__name__}: {exc})") from None
    if not isinstance(array, np.ndarray):
        raise UserError(f"case {case_id}: {path}: expected one array in .npy format, got {type(array).__name__}")
    if array.dtype.kind not in "fiu":
        raise UserError(f"case {case_id}: {path}: dtype {array.dtype}, expected a float (or integer) array")
    return array.shape


def scan_case(raw_dir, case_id, params):
    """Check every file of one case and place it on the case's time axis (no data read).

    Returns a plan: {"case", "grid" (H, W), "start" (minutes since 1970), "n_steps" T,
    "sources": {source: {"channels", "steps" int (F,), "paths" [F], "native_steps", "max_gap",
    "valid" bool (T,), "steps_filled", "nonnegative"}}, "valid" bool (T,)}.
    """
    data = params["data"]
    step = data["time_step_minutes"]
    grid, files = None, {}
    for source, channels in case_sources(params).items():
        entries, grid = scan_source(raw_dir, case_id, source, channels, grid)
        files[source] = (channels, entries)
    start = min(entries[0][0] for _, entries in files.values())
    end = max(entries[-1][0] for _, entries in files.values())
    n_steps = (end - start) // step + 1
    plan = {"case": case_id, "grid": grid[0], "start": start, "n_steps": n_steps, "sources": {}}
    valid_all = np.ones(n_steps, dtype=bool)
    for source, (channels, entries) in files.items():
        minutes = np.array([m for m, _ in entries], dtype=np.int64)
        off_axis = np.flatnonzero((minutes - start) % step)
        if off_axis.size:
            first = entries[off_axis[0]][1]
            axis_start = EPOCH + dt.timedelta(minutes=int(start))
            raise UserError(f"case {case_id}: {first}: time is not on the {step}-minute axis starting at "
                            f"{axis_start:%Y%m%d%H%M} (the case's first file; see data.time_step_minutes)")
        placed = place_source((minutes - start) // step, n_steps, data["max_gap_steps"])
        placed.update(channels=channels, paths=[p for _, p in entries],
                      nonnegative=[data["transform"].get(c, "none") == "log1p" for c in channels])
        plan["sources"][source] = placed
        valid_all &= placed["valid"]
    plan["valid"] = valid_all
    return plan


def scan_source(raw_dir, case_id, source, channels, grid):
    """[(minutes, path)] of one source's files, each checked by name and header; grid: None or
    ((H, W), the file that set it), which every file must match. Returns (entries, grid)."""
    folder = os.path.join(raw_dir, case_id, source)
    if not os.path.isdir(folder):
        raise UserError(f"case {case_id}: source folder {folder} missing (data.inputs / data.target "
                        f"list source {source!r})")
    names = [n for n in list_folder(folder, f"case {case_id}: source folder")
             if n.endswith(".npy") and not n.startswith(".")]
    if not names:
        raise UserError(f"case {case_id}: {folder}: no .npy files")
    entries, n = [], len(channels)
    for name in names:
        path = os.path.join(folder, name)
        minute, shape = parse_time(case_id, path), read_header(case_id, path)
        if len(shape) == 3 and shape[0] == n:
            frame = tuple(shape[1:])
        elif len(shape) == 2 and n == 1:
            frame = tuple(shape)
        else:
            found = f"{shape[0]} channels" if len(shape) == 3 else f"{len(shape)} dimensions"
            raise UserError(f"case {case_id}: {path}: shape {tuple(shape)} ({found}), expected {n} "
                            f"channel(s) {channels} of source {source!r} as ({n}, H, W)"
                            + (" or (H, W)" if n == 1 else ""))
        if grid is None:
            grid = (frame, path)
        elif frame != grid[0]:
            raise UserError(f"case {case_id}: {path}: grid {frame[0]}x{frame[1]} differs from "
                            f"{grid[0][0]}x{grid[0][1]} of {grid[1]}")
        entries.append((minute, path))
    return entries, grid


def place_source(steps, n_steps, max_gap_steps):
    """Gap rules of one source on the case axis.

    steps: int (F,) ascending axis indices of the source's files.
    Returns {"steps", "native_steps", "max_gap" (the run length fill_time_linear may fill),
    "valid" bool (T,), "steps_filled" (missing-file steps filled, a coarse source's steps
    between its regular times not counted)}.
    """
    diffs = np.diff(steps)
    if diffs.size:
        counts = collections.Counter(diffs.tolist())
        native = min(d for d, c in counts.items() if c == max(counts.values()))  # most common, ties: smaller
    else:
        native = 1
    max_gap = max(max_gap_steps, native - 1)
    valid = np.zeros(n_steps, dtype=bool)
    valid[steps] = True
    filled = 0
    for a, b in zip(steps[:-1], steps[1:]):
        run = int(b - a - 1)
        if run == 0:
            continue
        if run <= max_gap:
            valid[a + 1:b] = True
            filled += run if b - a > native else 0
    return {"steps": steps, "native_steps": int(native), "max_gap": int(max_gap), "valid": valid,
            "steps_filled": int(filled)}


def drop_impossible(values, nonnegative, found=None):
    """Set values that are no data to NaN in place: +-inf, and negatives of non-negative channels.

    values: float (C, ...) physical; nonnegative: bool per channel (the log1p channels: rain rates
    cannot be below 0 mm/h, a negative value is a no-data flag or an artefact). found: a dict
    counting what was removed, {"negative": count, "lowest": most negative value}, updated.
    """
    values[~np.isfinite(values)] = np.nan
    for channel, keep_sign in zip(values, nonnegative):
        negative = channel < 0
        if keep_sign and negative.any():
            if found is not None:
                found["negative"] = found.get("negative", 0) + int(negative.sum())
                found["lowest"] = min(found.get("lowest", 0.0), float(channel[negative].min()))
            channel[negative] = np.nan
    return values


def read_tile(source_plan, rows, cols, out, found=None):
    """Place one source's files on the axis for one tile, and gap-fill it, in place.

    rows, cols: slices of the grid. out: float32 (n_channels, T, rows, cols), NaN on entry;
    on return it holds physical values, NaN where no data remains (+-inf and negative rain rates
    count as no data, see `drop_impossible`; found counts them).
    """
    for step, path in zip(source_plan["steps"], source_plan["paths"]):
        frame = np.load(path, mmap_mode="r")
        out[:, step] = frame[..., rows, cols] if frame.ndim == 3 else frame[None, rows, cols]
        del frame
    drop_impossible(out, source_plan["nonnegative"], found)
    for channel in out:  # (T, rows, cols), C-contiguous
        fill_time_linear(channel, source_plan["max_gap"])
    return out


# --------------------------------------------------------------------------- 4: split
def split_cases(case_ids, split, skipped=()):
    """{"train": [...], "val": [...], "test": [...]} (sorted ids) from data.split.

    Ratios: ids sorted, permuted with default_rng(seed), counts by largest remainder, every split
    with a ratio > 0 gets at least one case when possible; skipped bad cases take part in the draw
    and are then left out, so skipping a case never moves another case to another split. Lists: ids must exist (ids of skipped
    bad cases are dropped) and appear in one list only; cases in no list are not processed.
    """
    case_ids = sorted(case_ids)
    if isinstance(split["train"], list):
        seen = {}
        for name in SPLITS:
            for case in split[name]:
                if case in seen:
                    raise UserError(f"data.split: case {case!r} is in both {seen[case]} and {name}")
                if case not in case_ids and case not in skipped:
                    raise UserError(f"data.split.{name}: case {case!r} not found among the raw cases")
                seen[case] = name
        return {name: sorted(c for c in split[name] if c in case_ids) for name in SPLITS}
    kept, case_ids = set(case_ids), sorted(set(case_ids) | set(skipped))
    n = len(case_ids)
    ratios = np.array([split[name] for name in SPLITS], dtype=np.float64)
    exact = ratios * n
    counts = np.floor(exact + 1e-9).astype(int)
    remainders = exact - counts
    for i in np.argsort(-remainders, kind="stable")[: max(0, n - counts.sum())]:
        counts[i] += 1
    for i in range(3):  # a split asked for (ratio > 0) but empty takes a case from the largest
        if ratios[i] > 0 and counts[i] == 0:
            donor = int(np.argmax(counts))
            if counts[donor] > 1:
                counts[donor] -= 1
                counts[i] += 1
    order = [case_ids[i] for i in np.random.default_rng(split["seed"]).permutation(n)]
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return {name: sorted(c for c in order[bounds[i]:bounds[i + 1]] if c in kept) for i, name in enumerate(SPLITS)}


# --------------------------------------------------------------------------- 5: statistics
def compute_stats(plans, split, params, progress=True):
    """Per-channel min/max after the transform over the files of the training cases.

    plans: {case: plan}; only split["train"] cases are read, one file at a time.
    Returns the stats.json dict.
    """
    sources = case_sources(params)
    transforms = params["data"]["transform"]
    lo = {(s, c): np.inf for s, chans in sources.items() for c in chans}
    hi = {key: -np.inf for key in lo}
    files = [(source, path) for case in split["train"]
             for source, sp in plans[case]["sources"].items() for path in sp["paths"]]
    for source, path in tqdm(files, desc="stats (train)", unit="file", disable=not progress):
        frame = np.load(path).astype(np.float32, copy=False)
        frame = drop_impossible(frame[None] if frame.ndim == 2 else frame,
                                [transforms.get(c, "none") == "log1p" for c in sources[source]])
        for channel, values in zip(sources[source], frame):
            finite = values[np.isfinite(values)]
            if finite.size:
                lo[source, channel] = min(lo[source, channel], float(finite.min()))
                hi[source, channel] = max(hi[source, channel], float(finite.max()))

    def after_transform(source, channel):
        if not np.isfinite(lo[source, channel]):
            raise UserError(f"stats: channel {channel!r} of source {source!r} has no finite value in the "
                            f"training cases {split['train']}")
        name = transforms.get(channel, "none")
        return float(transform(np.float64(lo[source, channel]), name)), \
            float(transform(np.float64(hi[source, channel]), name))

    channels = channel_list(params)
    ranges = [after_transform(s, c) for s, c, _ in channels]
    target = params["data"]["target"]
    t_lo, t_hi = after_transform(target["source"], target["channel"])
    return {
        "channels": [c for _, c, _ in channels],
        "sources": [s for s, _, _ in channels],
        "transform": [t for _, _, t in channels],
        "min": [r[0] for r in ranges],
        "max": [r[1] for r in ranges],
        "target": {"source": target["source"], "channel": target["channel"],
                   "transform": transforms.get(target["channel"], "none"), "min": t_lo, "max": t_hi},
        "split": split,
        "time_step_minutes": params["data"]["time_step_minutes"],
        "max_gap_steps": params["data"]["max_gap_steps"],
        "note": "x_norm = (transform(x) - min) / (max - min), NaN -> 0; min/max from the training cases",
    }


# --------------------------------------------------------------------------- 6: normalise and write
def block_max(values, block=RAIN_BLOCK):
    """(T, h, W) physical values -> (T, ceil(h/block), ceil(W/block)) max ignoring NaN (0 if none)."""
    n_t, n_y, n_x = values.shape
    pad_y, pad_x = -n_y % block, -n_x % block
    padded = np.pad(values, ((0, 0), (0, pad_y), (0, pad_x)), constant_values=-np.inf)
    padded[np.isnan(padded)] = -np.inf
    out = padded.reshape(n_t, (n_y + pad_y) // block, block, (n_x + pad_x) // block, block).max(axis=(2, 4))
    out[out == -np.inf] = 0.0
    return out.astype(np.float32)


def case_attributes(plan, split_name, stats, params):
    """The group attributes of one case's store (see the module docstring)."""
    step = params["data"]["time_step_minutes"]
    return {
        "case": plan["case"], "split": split_name,
        "channels": stats["channels"], "channel_sources": stats["sources"],
        "transform": dict(zip(stats["channels"], stats["transform"])),
        "target": {k: stats["target"][k] for k in ("source", "channel", "transform")},
        "grid_shape": list(plan["grid"]),
        "time_step_minutes": step,
        "max_gap_steps": params["data"]["max_gap_steps"],
        "native_step_minutes": {s: sp["native_steps"] * step for s, sp in plan["sources"].items()},
        "files": {s: len(sp["paths"]) for s, sp in plan["sources"].items()},
        "steps_filled": {s: sp["steps_filled"] for s, sp in plan["sources"].items()},
        "steps_invalid": int((~plan["valid"]).sum()),
        "rain_block": RAIN_BLOCK,
        "normalisation": {"min": stats["min"], "max": stats["max"],
                          "target_min": stats["target"]["min"], "target_max": stats["target"]["max"]},
    }


class NoCoverage(Exception):
    """The target has no data at any step of a case (no radar coverage): no store is written."""


def write_case(plan, split_name, out_dir, stats, params, pool=None):
    """Fill, normalise and write one case to <out_dir>/<case>.zarr (via .zarr.tmp); the motion
    field (data.motion) on the worker processes of `pool` (motion_pool), or in this process.

    Returns (path, found) with found as `write_tiles` gives it. Raises NoCoverage (and writes
    nothing) when the target has no data anywhere.
    """
    n_steps, (n_y, n_x) = plan["n_steps"], plan["grid"]
    final = os.path.join(out_dir, f"{plan['case']}.zarr")
    with atomic_path(final) as tmp:
        root = zarr.open_group(tmp, mode="w", zarr_format=3,
                               attributes=case_attributes(plan, split_name, stats, params))
        chunk_y, chunk_x = min(CHUNK_XY, n_y), min(CHUNK_XY, n_x)
        shard_t = -(-n_steps // CHUNK_T) * CHUNK_T  # one shard: every step of one chunk column

        def frames(name, channels, dtype, long_name):
            """A (T, [C,] H, W) array chunked (CHUNK_T, [C,] 128, 128), sharded over all of T."""
            c = (channels,) if channels else ()
            return root.create_array(name, shape=(n_steps,) + c + (n_y, n_x), dtype=dtype,
                                     chunks=(CHUNK_T,) + c + (chunk_y, chunk_x),
                                     shards=(shard_t,) + c + (chunk_y, chunk_x),
                                     fill_value=False if dtype == "bool" else 0.0, compressors=COMPRESSOR,
                                     dimension_names=("time",) + ("channel",) * len(c) + ("y", "x"),
                                     attributes={"long_name": long_name})

        channel = params["data"]["target"]["channel"]
        arrays = {"inputs": frames("inputs", len(stats["channels"]), "float32",
                                   f"normalised inputs {', '.join(stats['channels'])}"),
                  "target": frames("target", None, "float32", f"normalised {channel}"),
                  "coverage": frames("coverage", None, "bool", "the target has data after gap filling")}
        rain_max, found = write_tiles(arrays, plan, stats, params, tile_cols=chunk_x, tile_rows=chunk_y)
        if not found["covered"]:
            raise NoCoverage(f"case {plan['case']}: the target {params['data']['target']['source']}/{channel} "
                             "has no data at any step (no radar coverage)")
        root.create_array("rain_max", data=rain_max, chunks=(RAIN_CHUNK_T,) + rain_max.shape[1:],
                          dimension_names=("time", "y_block", "x_block"),
                          attributes={"long_name": f"max of {channel} per {RAIN_BLOCK}x{RAIN_BLOCK} block",
                                      "units": "physical (mm/h for rain rate)"})
        root.create_array("valid", data=plan["valid"], dimension_names=("time",),
                          attributes={"long_name": "every source has data at this step"})
        root.create_array("time", data=plan["start"] + params["data"]["time_step_minutes"] *
                          np.arange(n_steps, dtype=np.int64), dimension_names=("time",),
                          attributes={"units": TIME_UNITS, "calendar": "proleptic_gregorian",
                                      "standard_name": "time"})
        root.attrs["negative_values_dropped"] = found.get("negative", 0)
        if params["data"]["motion"]:
            write_motion(root, tmp, stats, params["data"]["motion_frames"], pool)
    return final, found


def write_motion(root, path, stats, motion_frames, pool=None):
    """The `motion` array: at step t, baselines.motion_field of the target frames
    t - motion_frames + 1 .. t (mm/h, NaN outside coverage) on full frames, pixels per step, [0]
    along x, [1] along y; zeros where fewer than two frames have data (the extrapolation forecasting
    from t uses the same field). The field is smooth (a Gaussian of 15 px ends motion_field), so it
    is stored at every MOTION_STRIDE-th pixel, (T, 2, ceil(H/s), ceil(W/s)) (pixel (s i, s j)):
    16x less disk; dataset.py interpolates a crop back bilinearly.

    The steps are independent: with a `pool` (motion_pool) its processes compute them, each reading
    the frames it needs from the store at `path` (the same values as in this process).
    """
    n_steps, n_y, n_x = root["target"].shape
    shape = (2, -(-n_y // MOTION_STRIDE), -(-n_x // MOTION_STRIDE))
    motion = root.create_array("motion", shape=(n_steps,) + shape, dtype="float32", chunks=(1,) + shape,
                               compressors=COMPRESSOR, dimension_names=("time", "component", "y_motion", "x_motion"),
                               attributes={"long_name": "motion of the target (x, y components)",
                                           "units": "pixels per step", "stride": MOTION_STRIDE})
    steps = range(1, n_steps)  # step 0 has one frame: its motion stays 0
    bar = functools.partial(tqdm, total=len(steps), desc=f"motion {root.attrs['case']}", unit="step", leave=False)
    if pool is None or not steps:
        fields = (step_motion(root, t, motion_frames, stats) for t in steps)
    else:
        fields = pool.map(_stored_step_motion, *zip(*((path, t, motion_frames, stats) for t in steps)))
    for t, field in bar(zip(steps, fields)):
        motion[t] = field


@contextlib.contextmanager
def motion_pool(workers):
    """`workers` processes for write_motion, or None (in this process) for workers <= 1. Spawned: a fresh
    interpreter each, safe whatever threads the caller (torch, numba) runs; one numba thread each (its
    parallel kernels would otherwise start one thread per core in every worker)."""
    if workers <= 1:
        yield None
        return
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=numba.set_num_threads, initargs=(1,)) as pool:
        yield pool


def step_motion(root, t, motion_frames, stats):
    """The stored motion of step t (2, ceil(H/s), ceil(W/s)) float32 of the case's group (see write_motion)."""
    first = max(0, t - motion_frames + 1)
    frames = denormalize_target(root["target"][first:t + 1].astype(np.float64), stats)
    frames[~root["coverage"][first:t + 1]] = np.nan
    return motion_field(frames)[:, ::MOTION_STRIDE, ::MOTION_STRIDE].astype(np.float32)


def _stored_step_motion(path, t, motion_frames, stats):
    """step_motion in a worker process, of the store at `path` (opened once per worker)."""
    return step_motion(_open_store(path), t, motion_frames, stats)


@functools.lru_cache(maxsize=1)
def _open_store(path):
    return zarr.open_group(path, mode="r")


def write_tiles(arrays, plan, stats, params, tile_rows, tile_cols):
    """Fill, normalise and write inputs/target/coverage tile by tile.

    Returns (rain_max (T, by, bx) mm/h, found): found["covered"] counts target pixels with data,
    found["negative"] / found["lowest"] the negative rain rates dropped as no data.

    A tile is one row of chunks and as many chunk columns as fit in TILE_BYTES (all steps and
    channels), so memory stays a few tiles whatever the grid.
    """
    (n_y, n_x), n_steps, n_channels = plan["grid"], plan["n_steps"], len(stats["channels"])
    target = params["data"]["target"]
    target_key = (target["source"], target["channel"])
    input_channels = [(src, c) for src, c, _ in channel_list(params)]
    inputs_from, first = {}, 0  # source -> its channels' slice of the input tile
    for source in params["data"]["inputs"]:
        inputs_from[source] = slice(first, first + len(params["data"]["inputs"][source]))
        first = inputs_from[source].stop
    rain_max = np.zeros((n_steps, -(-n_y // RAIN_BLOCK), -(-n_x // RAIN_BLOCK)), dtype=np.float32)
    found = {"covered": 0}
    tile_x = tile_cols * max(1, TILE_BYTES // (4 * (n_channels + 1) * n_steps * tile_rows * tile_cols))
    for y0, x0 in [(y, x) for y in range(0, n_y, tile_rows) for x in range(0, n_x, tile_x)]:
        rows, cols = slice(y0, min(y0 + tile_rows, n_y)), slice(x0, min(x0 + tile_x, n_x))
        shape = (n_steps, rows.stop - rows.start, cols.stop - cols.start)  # T x rows x cols
        tile = np.full((n_channels,) + shape, np.nan, dtype=np.float32)
        for source, channels in inputs_from.items():
            read_tile(plan["sources"][source], rows, cols, tile[channels], found)
        if target_key in input_channels:
            target_physical = tile[input_channels.index(target_key)].copy()
        else:
            target_physical = read_tile(plan["sources"][target["source"]], rows, cols,
                                        np.full((1,) + shape, np.nan, dtype=np.float32), found)[0]
        covered = np.isfinite(target_physical)
        found["covered"] += int(covered.sum())
        arrays["coverage"][:, rows, cols] = covered
        rain_max[:, y0 // RAIN_BLOCK:-(-rows.stop // RAIN_BLOCK), x0 // RAIN_BLOCK:-(-cols.stop // RAIN_BLOCK)] = \
            block_max(target_physical)
        for c in range(n_channels):
            normalize_inplace(tile[c], stats["min"][c], stats["max"][c], stats["transform"][c])
        tile[np.isnan(tile)] = 0.0
        arrays["inputs"][:, :, rows, cols] = tile.transpose(1, 0, 2, 3)
        normalize_inplace(target_physical, stats["target"]["min"], stats["target"]["max"],
                          stats["target"]["transform"])
        target_physical[~covered] = 0.0
        arrays["target"][:, rows, cols] = target_physical
    return rain_max, found


# --------------------------------------------------------------------------- the run
def discover(params, skip_bad_cases):
    """Steps 1-2 for every case folder: ({case: plan}, {skipped case: reason})."""
    raw_dir = params["paths"]["raw_dataset"]
    if not os.path.isdir(raw_dir):
        raise UserError(f"{raw_dir}: raw dataset folder not found (paths.raw_dataset)")
    case_ids = [n for n in list_folder(raw_dir, "paths.raw_dataset")
                if os.path.isdir(os.path.join(raw_dir, n)) and not n.startswith(".")]
    if not case_ids:
        raise UserError(f"{raw_dir}: no case folders (expected <case>/<source>/<YYYYmmddHHMM>.npy)")
    plans, skipped = {}, {}
    for case in case_ids:
        try:
            plans[case] = scan_case(raw_dir, case, params)
        except UserError as exc:
            if not skip_bad_cases:
                raise UserError(f"{exc} (--skip_bad_cases skips such cases)") from None
            skipped[case] = str(exc)
            print(f"skipped: {exc}")
    return plans, skipped


def count_windows(plans, split, data):
    """{split: usable sample windows}; a warning line for every split that has cases but no window
    (the stores are still written: pretraining reads every valid frame, and data.lead_steps can change)."""
    samples = {name: sum(len(sample_starts(plans[c]["valid"], data)) for c in split[name]) for name in SPLITS}
    for name in SPLITS:
        if split[name] and not samples[name]:
            longest = max(plans[c]["n_steps"] for c in split[name])
            print(f"warning: no usable {name} window: a sample spans {window_steps(0, data)[1].stop} steps "
                  f"(data.input_steps {data['input_steps']} + data.lead_steps {data['lead_steps']} + "
                  f"data.output_steps {data['output_steps']} - 1) with valid inputs and targets; the longest "
                  f"{name} case has {longest} steps")
    return samples


def remove_stale(out_dir, split):
    """Remove stores (and .tmp leftovers) of cases no longer in their split; returns how many."""
    removed = 0
    for name in SPLITS:
        folder = os.path.join(out_dir, name)
        for entry in sorted(os.listdir(folder)):
            stem = entry[:-5] if entry.endswith(".zarr") else entry[:-9] if entry.endswith(".zarr.tmp") else None
            if stem is not None and (stem not in split[name] or entry.endswith(".tmp")):
                shutil.rmtree(os.path.join(folder, entry))
                removed += 1
    return removed


def preprocess(params, skip_bad_cases=False, progress=True, workers=1):
    """Run the seven steps (motion fields on `workers` processes); returns a summary dict (see the keys
    at the end)."""
    out_dir, data = params["paths"]["processed_data"], params["data"]
    for name in SPLITS:  # a file in the way or no permission: said before any work
        ensure_folder(os.path.join(out_dir, name), "paths.processed_data")
    plans, skipped = discover(params, skip_bad_cases)
    split = split_cases(list(plans), data["split"], skipped)
    if not split["train"]:
        raise UserError(f"{params['paths']['raw_dataset']}: no training case ({len(plans)} usable cases; "
                        "see data.split)")
    samples = count_windows(plans, split, data)
    stats = compute_stats(plans, split, params, progress)
    jobs = [(name, case) for name in SPLITS for case in split[name]]
    with motion_pool(workers if data["motion"] else 1) as pool:  # one pool for every case
        for name, case in tqdm(jobs, desc="write", unit="case", disable=not progress):
            try:
                _, found = write_case(plans[case], name, os.path.join(out_dir, name), stats, params, pool)
            except NoCoverage as exc:
                tqdm.write(f"skipped: {exc}")
                skipped[case] = str(exc)
                split[name].remove(case)
                samples[name] -= len(sample_starts(plans[case]["valid"], data))
                continue
            if found.get("negative"):
                tqdm.write(f"warning: case {case}: {found['negative']} negative rain-rate values (lowest "
                           f"{found['lowest']:g}) treated as no data")
    if not split["train"]:
        raise UserError("no training case has target data (every one has no radar coverage)")
    removed = remove_stale(out_dir, split)
    stats["split"] = split
    stats_path = os.path.join(out_dir, "stats.json")
    with atomic_path(stats_path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(stats, fh, indent=2)
    assigned = {c for name in SPLITS for c in split[name]}
    return {
        "split": split, "stats": stats_path, "skipped": skipped, "removed_stale": removed,
        "unassigned": sorted(set(plans) - assigned - set(skipped)), "samples": samples,
        "steps_filled": sum(sp["steps_filled"] for c in assigned for sp in plans[c]["sources"].values()),
        "steps_invalid": sum(int((~plans[c]["valid"]).sum()) for c in assigned),
        "steps": sum(plans[c]["n_steps"] for c in assigned),
    }


FLAGS = [("--raw_dataset", "paths.raw_dataset", {"metavar": "DIR"}),
         ("--processed_data", "paths.processed_data", {"metavar": "DIR"}),
         ("--time_step_minutes", "data.time_step_minutes", {"metavar": "MIN"}),
         ("--max_gap_steps", "data.max_gap_steps", {"metavar": "N"})]


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Raw nowcasting cases (<case>/<source>/<YYYYmmddHHMM>.npy) -> normalised per-case Zarr "
                    "stores in <processed_data>/{train,val,test}/ and <processed_data>/stats.json.")
    add_config_arg(parser)
    add_override_flags(parser, FLAGS)
    parser.add_argument("--skip_bad_cases", "--skip-bad-cases", action="store_true",
                        help="report a bad case and go on without it (default: stop with an error)")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes computing the motion fields (data.motion), the slow part: each step's "
                             "field is independent, the stores are the same for any N; 0 = one per available "
                             "core (default: 1)")
    args = parser.parse_args(argv)
    if args.workers < 0:
        raise UserError(f"--workers {args.workers}: expected 0 (one per core) or a positive number of processes")
    params = load_params(args.config, overrides_from(args))
    workers = args.workers or len(os.sched_getaffinity(0))
    summary = preprocess(params, skip_bad_cases=args.skip_bad_cases, workers=workers)
    split = summary["split"]
    out_dir = params["paths"]["processed_data"]
    extra = f", {len(summary['skipped'])} bad cases skipped" if summary["skipped"] else ""
    extra += f", {len(summary['unassigned'])} cases in no split list" if summary["unassigned"] else ""
    print(f"preproc: {sum(len(v) for v in split.values())} cases -> {out_dir}/ (train {len(split['train'])}, "
          f"val {len(split['val'])}, test {len(split['test'])}); {summary['steps_filled']} missing-file steps "
          f"filled, {summary['steps_invalid']} of {summary['steps']} steps invalid; samples train "
          f"{summary['samples']['train']}, val {summary['samples']['val']}, test {summary['samples']['test']}"
          f"{extra}; stats: {summary['stats']}")
    return 0


if __name__ == "__main__":
    run_main(main)
