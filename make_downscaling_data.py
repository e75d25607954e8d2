"""High-resolution fields -> low/high-resolution (LR-HR) training pairs for downscaling (seed 003).

    python make_downscaling_data.py --source radar --factor 4             # -> data/downscaling/rr4.zarr
    python make_downscaling_data.py --source radar --factor 4 --frames 3  # temporal set T1 -> rr4t3.zarr
    python make_downscaling_data.py --source sea_ice --factor 4           # -> sic4.zarr (fraction)

HR samples are crop_size x crop_size crops (128 by default) of real fields; LR samples are their
means over factor x factor blocks (the aggregation the constraint layers conserve), like the
seed's TCW2/4/8 sets from ERA5, which cannot be reached here. Sources (downscaling.source):
  radar      <radar_dir>/<event>.npz, rain_rate (T, H, W) mm/h, NaN outside coverage (the four
             pysteps example events in ../shared/data/radar: KNMI, BoM, FMI x 2). When radar_dir
             does not exist (a clone without ../shared), generated rain cases are used instead.
  raw        raw nowcasting cases <paths.raw_dataset>/<case>/radar/<YYYYmmddHHMM>.npy.
  generated  four rain cases of generate_data.py (24 steps; 320 x 320 pixels for 128-pixel crops),
             written to a temporary folder and read as raw cases.
  sea_ice    sea_ice.consolidated_file (consolidate_data.py output), sea_ice_conc fraction;
             land (sea_ice.land_mask_file, when given) counts as no data.
Rain rates below 0 (the BoM event holds some, down to -0.6 mm/h) are set to 0.

Crops: a grid of non-overlapping crop_size squares, centred in the frame, at every time step
(with --frames F: F consecutive steps at one place). A crop is a candidate when every pixel of
every frame has data and its wet fraction (pixels >= wet_threshold mm/h; sea ice: >= 0.15 ice)
averaged over the frames is at least min_wet_fraction; up to max_crops.<split> candidates are
taken, evenly spaced in the order (event, time, row, column). Splits are by event: test_events
(held out, for the tables only), val_events (model selection), the rest train. Sea ice is split
in time instead: the first data.split.train of the days train, then val, then test.

Output: one Zarr 3 store <data_dir>/<name>.zarr (written as .tmp, renamed when complete). Zarr,
not the seed's .pt files: a sample is read on its own (the whole set is never loaded), and the
store carries its units, provenance and normalisation as attributes.
    <split>/hr      (N, F, 1, S, S)          float32, physical units (mm/h or fraction)
    <split>/lr      (N, F, 1, S/f, S/f)      float32, block means of hr
    <split>/origin  (N, 4)                   int32: event index, first time index, row, column
    attributes: source, variable, units, factor, frames, crop_size, events {split: [names]},
                normalisation {min, max} = min/max of the training HR crops (the seed scales LR and
                HR to [0, 1] with them), per split hr_min/hr_max, n, and the settings used.
Default names: rr<f> (rain), sic<f> (sea ice), with t<F> appended for F > 1 frames (rr4t3).
"""
import argparse
import datetime
import glob
import os
import tempfile

import numpy as np
import zarr
from tqdm import tqdm
from zarr.codecs import ZstdCodec

import config
from atomic import atomic_path
from config import UserError

SPLITS = ("train", "val", "test")
ICE_THRESHOLD = 0.15  # metrics.ICE_EDGE_FRACTION: a sea-ice pixel "counts" like a wet one
COMPRESSOR = ZstdCodec(level=1)
SHARD = 64  # samples per shard file; one sample is one chunk (read on its own)


# --------------------------------------------------------------------------- sources
class Event:
    """One event of HR frames: name, n_frames, read(t) -> float32 (H, W) with NaN where no data."""

    def __init__(self, name, n_frames, read):
        self.name, self.n_frames, self.read = name, n_frames, read


def radar_events(folder):
    """Events of <folder>/<event>.npz (rain_rate (T, H, W) mm/h). An event's array is loaded when
    first read and kept until another event is read: one event in memory at a time (< 200 MB)."""
    paths = sorted(glob.glob(os.path.join(folder, "*.npz")))
    if not paths:
        raise UserError(f"{folder}: no <event>.npz radar files")
    cache = {}  # shared by the events: {path: array}

    def reader(path):
        def read(t):
            if path not in cache:
                cache.clear()
                with np.load(path) as z:
                    cache[path] = z["rain_rate"]
            return cache[path][t].astype(np.float32)
        return read

    events = []
    for path in paths:
        with np.load(path) as z:
            if "rain_rate" not in z.files or len(z["rain_rate"].shape) != 3:
                raise UserError(f"{path}: expected an array 'rain_rate' (T, H, W) (arrays: {', '.join(z.files)})")
            n_frames = z["rain_rate"].shape[0]
        events.append(Event(os.path.basename(path)[:-4], n_frames, reader(path)))
    return events


def raw_events(folder):
    """Events of raw cases <folder>/<case>/radar/<YYYYmmddHHMM>.npy (one file per step, read on demand)."""
    cases = sorted(d for d in glob.glob(os.path.join(folder, "*")) if os.path.isdir(os.path.join(d, "radar")))
    if not cases:
        raise UserError(f"{folder}: no raw cases <case>/radar/*.npy")
    events = []
    for case in cases:
        files = sorted(glob.glob(os.path.join(case, "radar", "*.npy")))
        events.append(Event(os.path.basename(case), len(files),
                            lambda t, files=files: np.load(files[t]).astype(np.float32).squeeze()))
    return events


def sea_ice_events(params):
    """The days of sea_ice.consolidated_file cut in time into three events (train, val, test)."""
    from utils import open_consolidated
    ice = params["sea_ice"]
    reader = open_consolidated(ice["consolidated_file"])
    land = None
    if ice["land_mask_file"]:
        mask_reader = open_consolidated(ice["land_mask_file"])
        land = np.asarray(mask_reader.read("land_mask")) != 0
        mask_reader.close()
    n_days = reader.variables["sea_ice_conc"].shape[0]
    split = params["data"]["split"]
    if isinstance(split["train"], list):
        raise UserError("data.split: sea-ice downscaling splits days by ratios, not by lists of case ids")
    n_train, n_val = int(round(split["train"] * n_days)), int(round(split["val"] * n_days))
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, n_days)}

    def reader_for(first):
        def read(t):
            frame = np.asarray(reader.read("sea_ice_conc", (first + t,)), dtype=np.float32)
            if land is not None:
                frame = np.where(land, np.nan, frame)
            return frame
        return read
    return [Event(f"sea_ice-{name}", stop - start, reader_for(start)) for name, (start, stop) in bounds.items()]


def generated_events(folder, crop_size):
    """Write generate_data.py's four rain cases (24 steps, 2.5 crop sizes square: 320 x 320 for 128-pixel
    crops, 4 crops inside the radar circle) into folder; return them as events."""
    import generate_data
    side = -(-5 * crop_size // 16) * 8
    generate_data.write_raw_cases(folder, n_cases=4, shape=(side, side), n_steps=24, seed=11, missing=False)
    return raw_events(folder)


def open_source(params, source, tmp_dir):
    """(events, source actually used, variable, units); radar falls back to generated cases."""
    down = params["downscaling"]
    if source == "radar" and not os.path.isdir(down["radar_dir"]):
        print(f"note: {down['radar_dir']} not found (the real radar events ship with ../shared only); "
              f"using generated rain cases instead")
        source = "generated"
    if source == "radar":
        return radar_events(down["radar_dir"]), source, "rain_rate", "mm/h"
    if source == "raw":
        return raw_events(params["paths"]["raw_dataset"]), source, "rain_rate", "mm/h"
    if source == "generated":
        return generated_events(tmp_dir, down["crop_size"]), source, "rain_rate", "mm/h"
    return sea_ice_events(params), source, "sea_ice_conc", "fraction"


def split_events(names, val_events, test_events):
    """{split: [event names]}: test_events, val_events, the rest train. When none of the listed val/test
    events exists (generated or user data), the last event is test and the one before it val."""
    listed = set(val_events) | set(test_events)
    if not listed & set(names):
        if len(names) < 3:
            raise UserError(f"need at least 3 events (train, val, test), found {len(names)}: {', '.join(names)}")
        return {"train": names[:-2], "val": [names[-2]], "test": [names[-1]]}
    split = {"train": [n for n in names if n not in listed], "val": [n for n in names if n in val_events],
             "test": [n for n in names if n in test_events]}
    for name, members in split.items():
        if not members:
            raise UserError(f"no {name} event: the events are {', '.join(names)}; set downscaling.val_events / "
                            f"downscaling.test_events")
    return split


# --------------------------------------------------------------------------- crops
def crop_grid(shape, size):
    """Top-left corners of non-overlapping size x size squares, the grid centred in the frame."""
    n_y, n_x = shape
    off_y, off_x = (n_y % size) // 2, (n_x % size) // 2
    return [(y, x) for y in range(off_y, n_y - size + 1, size) for x in range(off_x, n_x - size + 1, size)]


def candidates(event, size, frames, threshold, min_wet):
    """(t, y, x) of every crop whose `frames` steps from t have data everywhere and are wet enough."""
    found, valid, wet = [], {}, {}
    for t in range(event.n_frames):
        frame = event.read(t)
        for y, x in crop_grid(frame.shape, size):
            block = frame[y:y + size, x:x + size]
            valid[t, y, x] = bool(np.isfinite(block).all())
            wet[t, y, x] = float(np.mean(block >= threshold))
        if t + 1 >= frames:
            start = t + 1 - frames
            for y, x in crop_grid(frame.shape, size):
                steps = range(start, t + 1)
                if all(valid[s, y, x] for s in steps) and np.mean([wet[s, y, x] for s in steps]) >= min_wet:
                    found.append((start, y, x))
    return found


def evenly(items, n):
    """At most n items, evenly spaced over the list (all of them when there are fewer)."""
    if len(items) <= n:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def block_mean(hr, factor):
    """Means over factor x factor blocks of the last two axes, computed in float64, stored float32."""
    *lead, n_y, n_x = hr.shape
    blocks = hr.astype(np.float64).reshape(*lead, n_y // factor, factor, n_x // factor, factor)
    return blocks.mean(axis=(-3, -1)).astype(np.float32)


# --------------------------------------------------------------------------- the store
def write_split(root, split, events, chosen, size, frames, factor, clip_negative):
    """Write <split>/hr, lr, origin for the chosen (event index, t, y, x); returns (n, hr min, hr max, negatives)."""
    group = root.create_group(split)
    n = len(chosen)
    shapes = {"hr": (n, frames, 1, size, size), "lr": (n, frames, 1, size // factor, size // factor)}
    arrays = {name: group.create_array(name, shape=shape, dtype="float32", chunks=(1,) + shape[1:],
                                       shards=(min(SHARD, max(n, 1)),) + shape[1:], compressors=COMPRESSOR,
                                       fill_value=0.0, dimension_names=("sample", "time", "channel", "y", "x"))
              for name, shape in shapes.items()}
    group.create_array("origin", data=np.asarray(chosen, dtype=np.int32).reshape(n, 4),
                       dimension_names=("sample", "field"),
                       attributes={"fields": ["event index", "first time index", "row", "column"]})
    lo, hi, negatives = np.inf, -np.inf, 0
    batch = SHARD
    for first in range(0, n, batch):
        part = chosen[first:first + batch]
        hr = np.empty((len(part), frames, 1, size, size), np.float32)
        for i, (e, t, y, x) in enumerate(part):
            for k in range(frames):
                hr[i, k, 0] = events[e].read(t + k)[y:y + size, x:x + size]
        if clip_negative:
            negatives += int(np.count_nonzero(hr < 0))
            np.maximum(hr, 0, out=hr)
        arrays["hr"][first:first + len(part)] = hr
        arrays["lr"][first:first + len(part)] = block_mean(hr, factor)
        lo, hi = min(lo, float(hr.min())), max(hi, float(hr.max()))
    group.attrs.update({"n": n, "hr_min": lo if n else None, "hr_max": hi if n else None})
    return n, lo, hi, negatives


def make_dataset(params, source=None, factor=None, frames=None, name=None, progress=True):
    """Build <data_dir>/<name>.zarr; returns (path, summary dict). Arguments default to params["downscaling"]."""
    down = params["downscaling"]
    source, factor, frames = source or down["source"], factor or down["factor"], frames or down["frames"]
    size = down["crop_size"]
    if size % factor:
        raise UserError(f"--factor {factor}: downscaling.crop_size {size} is not a multiple of it")
    with tempfile.TemporaryDirectory() as tmp_dir:
        events, used, variable, units = open_source(params, source, tmp_dir)
        threshold = ICE_THRESHOLD if variable == "sea_ice_conc" else down["wet_threshold"]
        names = [e.name for e in events]
        split = {s: [e.name] for s, e in zip(SPLITS, events)} if used == "sea_ice" else \
            split_events(names, down["val_events"], down["test_events"])
        name = name or f"{'sic' if used == 'sea_ice' else 'rr'}{factor}" + (f"t{frames}" if frames > 1 else "")
        chosen, found = {}, {}
        for s in SPLITS:
            members = [names.index(n) for n in split[s]]
            cands = [(e, *c) for e in tqdm(members, desc=f"{s} crops", unit="event", disable=not progress)
                     for c in candidates(events[e], size, frames, threshold, down["min_wet_fraction"])]
            found[s], chosen[s] = len(cands), evenly(cands, down["max_crops"][s])
            if not chosen[s]:
                raise UserError(f"{s} events {', '.join(split[s])}: no {size} x {size} crop with data everywhere "
                                f"and a wet fraction >= {down['min_wet_fraction']} (lower "
                                f"downscaling.min_wet_fraction or crop_size)")
        path = os.path.join(down["data_dir"], f"{name}.zarr")
        with atomic_path(path) as tmp:
            root = zarr.open_group(tmp, mode="w", zarr_format=3)
            stats, negatives = {}, 0
            for s in SPLITS:
                n, lo, hi, neg = write_split(root, s, events, chosen[s], size, frames, factor, variable == "rain_rate")
                stats[s], negatives = (n, lo, hi), negatives + neg
            root.attrs.update({
                "source": used, "variable": variable, "units": units, "factor": factor, "frames": frames,
                "crop_size": size, "events": split, "event_names": names,
                "normalisation": {"min": stats["train"][1], "max": stats["train"][2]},
                "wet_threshold": threshold, "min_wet_fraction": down["min_wet_fraction"],
                "candidates": found, "negative_values_set_to_zero": negatives,
                "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")})
    return path, {"source": used, "split": split, "n": {s: stats[s][0] for s in SPLITS}, "candidates": found,
                  "normalisation": (stats["train"][1], stats["train"][2]), "negatives": negatives, "units": units}


def main(argv=None):
    parser = argparse.ArgumentParser(description="HR fields -> LR-HR pairs (block means) for downscaling.py, "
                                                 "one Zarr store <data_dir>/<name>.zarr.")
    config.add_config_arg(parser)
    config.add_override_flags(parser, [
        ("--source", "downscaling.source"), ("--factor", "downscaling.factor"),
        ("--frames", "downscaling.frames"), ("--crop_size", "downscaling.crop_size"),
        ("--radar_dir", "downscaling.radar_dir", {"metavar": "DIR"}),
        ("--data_dir", "downscaling.data_dir", {"metavar": "DIR"}),
        ("--raw_dataset", "paths.raw_dataset", {"metavar": "DIR"}),
        ("--consolidated_file", "sea_ice.consolidated_file", {"metavar": "PATH"}),
        ("--min_wet_fraction", "downscaling.min_wet_fraction"),
    ])
    parser.add_argument("--name", help="store name (default: rr<factor> for rain, sic<factor> for sea ice, "
                                       "t<frames> appended for frames > 1)")
    args = parser.parse_args(argv)
    params = config.load_params(args.config, config.overrides_from(args))
    path, summary = make_dataset(params, name=args.name)
    lo, hi = summary["normalisation"]
    print(f"make_downscaling_data: {summary['source']} events train {', '.join(summary['split']['train'])} | "
          f"val {', '.join(summary['split']['val'])} | test {', '.join(summary['split']['test'])}; crops "
          f"train/val/test {summary['n']['train']}/{summary['n']['val']}/{summary['n']['test']} (of "
          f"{summary['candidates']['train']}/{summary['candidates']['val']}/{summary['candidates']['test']} "
          f"candidates); train range {lo:.3g}..{hi:.3g} {summary['units']}; "
          f"{summary['negatives']} negative values set to 0 -> {path}")
    return 0


if __name__ == "__main__":
    config.run_main(main)
