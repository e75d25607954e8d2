"""PyTorch dataset and loaders over the per-case Zarr stores of preproc.py (seed 000, `dataset.py`).

    params = config.load_params("params.json")
    loaders = load_datasets(params)  # {"train", "val", "test": DataLoader}
    for batch in loaders["train"]:   # training.py sets the sampler's and the dataset's epoch
        x, y, coverage = batch["x"], batch["y"], batch["coverage"]

A sample is a dict:
    x        (input_steps, C, P, P)   float32  normalised inputs, steps s .. t0, channels as stats.json
    y        (output_steps, 1, P, P)  float32  normalised target at t0 + lead_steps + k, k < output_steps
    coverage (output_steps, 1, P, P)  bool     the target has data (losses and scores ignore False)
    motion   (2, P, P)                float32  the target's motion at t0, pixels per step, [0] x, [1] y
                                               (only when the stores hold it: data.motion in preproc.py)
    time     (output_steps,)          int64    target times, minutes since 1970-01-01 00:00 UTC
    case     str                               case id
Batches (pad_collate) stack these along a new first axis B; `case` becomes a list of str.
`normalization.denormalize_target(y, stats)` turns y or a prediction into physical units (mm/h);
`normalization.load_stats(processed_dir)` reads stats.json.

`ZarrPatchDataset(split_dir, params, train=True, stats=None)`:
- At init it opens every <split_dir>/*.zarr, reads only `valid (T,)` and `time (T,)` and builds
  `sample_map (N, 2) int64` = (store index, first input step s) over every window whose input
  steps s .. t0 = s + input_steps - 1 and target steps t0 + lead_steps + k (k < output_steps) are
  all valid. Stores are (re)opened lazily in each worker process; num_workers > 0 works.
- __getitem__ reads only the patch (inputs, target, coverage, motion), never a whole frame.
- Training crops are random and depend only on (training.seed, epoch, index) through
  numpy.random.default_rng([seed, epoch, index]): the same for any num_workers; call
  `set_epoch(e)` before each pass over the data to draw new crops (training.py does it for every
  pass, so a sample drawn twice in one epoch gets two crops). A sample can also be asked for by
  the key (epoch, index): the loaders' `EpochKeys` sampler sends such keys, so the epoch reaches
  loader workers that persist between passes (and keep their chunk caches warm). With probability
  data.rain_patch_prob a crop is looked for among rainy ones: up to data.crop_tries random crops are
  checked against the store's `rain_max` (target max per 8 x 8 block, mm/h) and the first one that
  holds a block whose maximum exceeds data.rain_threshold (block entirely inside the crop, so the
  crop surely has rain) is kept; else the last one drawn. No target data is read for this check.
- Training samples (data.augment) are flipped and turned by a multiple of 90 degrees, drawn from
  (seed, epoch, index) too; the motion vectors turn with the frames (lagrangian.rotate_flip).
- val/test (train=False): the centre crop, or the full frame when data.eval_full_frame (or the
  `full_frame` argument) is true.
- A grid smaller than patch_size along an axis is read whole and zero-padded at the bottom/right
  to P; the padding has coverage False.
"""
import argparse
import asyncio
import glob
import itertools
import os
from collections import OrderedDict

import numpy as np
import torch
import zarr
from zarr.core.sync import sync as zarr_sync
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, SequentialSampler

import config
from config import UserError
from lagrangian import rotate_flip
from normalization import (channel_list, check_config, check_store, denormalize_target, frame_starts, load_stats,
                           rainy_fraction, rainy_starts, sample_starts, window_steps)

SPLITS = ("train", "val", "test")


STORE_ARRAYS = ("inputs", "target", "coverage", "valid", "time", "rain_max")  # what preproc.py writes


def open_store(path):
    """The preproc.py store at `path`, opened read-only (a zarr Group); UserError naming it when it is
    not one: empty, damaged, an array or attribute missing."""
    try:
        root = zarr.open_group(path, mode="r")
    except Exception as exc:  # noqa: BLE001 - whatever zarr says, the folder is no usable store
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise UserError(f"{path}: not a readable Zarr store ({type(exc).__name__}: {first_line}); "
                        "re-run preproc.py") from None
    missing = [name for name in STORE_ARRAYS if name not in root]
    missing += [f"attribute {name}" for name in ("case", "grid_shape", "rain_block", "channels")
                if name not in root.attrs]
    if missing:
        raise UserError(f"{path}: {', '.join(missing)} missing (an interrupted or foreign store); re-run preproc.py")
    return root


class ZarrPatchDataset(Dataset):
    """Patches of the per-case stores in one split folder (see the module docstring)."""

    def __init__(self, split_dir, params, train=True, full_frame=None, seed=None, stats=None):
        data = params["data"]
        self.split_dir, self.params, self.data, self.train = split_dir, params, data, train
        self.input_steps, self.lead_steps = data["input_steps"], data["lead_steps"]
        self.output_steps, self.patch_size = data["output_steps"], data["patch_size"]
        self.full_frame = (not train and data["eval_full_frame"]) if full_frame is None else bool(full_frame)
        self.rain_threshold, self.rain_patch_prob = data["rain_threshold"], data["rain_patch_prob"]
        self.crop_tries = data["crop_tries"]
        self.seed = params["training"]["seed"] if seed is None else seed
        self.epoch = 0
        self.paths = sorted(glob.glob(os.path.join(split_dir, "*.zarr")))
        if not self.paths:
            why = "preproc.py gave this split no case: see data.split" if os.path.isdir(split_dir) else \
                "run preproc.py; see paths.processed_data"
            raise UserError(f"{split_dir}: no .zarr stores ({why})")
        self.channels = [c for _, c, _ in channel_list(params)]
        self.augment = train and data["augment"]
        self.cases, self.grids, self.times, self.rain_blocks, rows = [], [], [], [], []
        self.has_motion = True
        for index, path in enumerate(self.paths):
            root = open_store(path)
            self.has_motion &= "motion" in root
            attrs = root.attrs.asdict()
            if attrs.get("channels") != self.channels:
                raise UserError(f"{path}: channels {attrs.get('channels')} differ from data.inputs "
                                f"{self.channels}; re-run preproc.py")
            if stats is not None:
                check_store(path, attrs, stats, "stats.json")
            self.cases.append(attrs["case"])
            self.grids.append(tuple(attrs["grid_shape"]))
            self.rain_blocks.append(attrs["rain_block"])
            self.times.append(root["time"][:])
            starts = self._window_starts(root, stats)
            rows.append(np.stack([np.full(len(starts), index, dtype=np.int64), starts], axis=1))
        self.sample_map = np.concatenate(rows)  # (N, 2): store index, first input step
        if not len(self.sample_map):
            raise UserError(f"{split_dir}: no valid window of {self._window_text()} in {len(self.paths)} stores")
        self._arrays, self._pid = {}, None
        self.cache = ChunkCache(data["cache_mb"])

    def _window_starts(self, root, stats=None):
        """First input step of every sample window of one opened store (see `window_starts`)."""
        if self.data["rain_filter_fraction"] and stats is None:
            stats = load_stats(os.path.dirname(os.path.abspath(self.split_dir)))
        return window_starts(root, self.data, stats)

    def _window_text(self):
        text = f"input_steps {self.input_steps} + lead_steps {self.lead_steps} + output_steps {self.output_steps}"
        fraction = self.data["rain_filter_fraction"]
        return text + (f" with >= {fraction:g} of the target above {self.data['rain_filter_threshold']:g} mm/h "
                       "(data.rain_filter_fraction)" if fraction else "")

    def _rain_steps(self, start):
        """Steps whose rain_max a rainy training crop is looked for in: the targets."""
        return window_steps(start, self.data)[1]

    def __len__(self):
        return len(self.sample_map)

    def set_epoch(self, epoch):
        """Training crops of epoch `epoch` for integer indices (call before iterating the loader)."""
        self.epoch = int(epoch)

    def _key(self, key):
        """(epoch, index) of a sample key: an index (this dataset's epoch) or an (epoch, index) pair."""
        return (int(key[0]), int(key[1])) if isinstance(key, tuple) else (self.epoch, int(key))

    def __getstate__(self):  # opened stores and cached chunks do not travel to worker processes
        state = self.__dict__.copy()
        state["_arrays"], state["_pid"], state["cache"] = {}, None, ChunkCache(self.data["cache_mb"])
        return state

    def read(self, store, reads):
        """{name: (array name, selection)} of store `store` -> {name: numpy array}, through the cache."""
        arrays = self._store(store)
        return self.cache.read({name: ((self.paths[store], array), arrays[array], selection)
                                for name, (array, selection) in reads.items()})

    def _store(self, index):
        """The store's arrays, opened once per process."""
        if self._pid != os.getpid():
            self._arrays, self._pid = {}, os.getpid()
        if index not in self._arrays:
            root = zarr.open_group(self.paths[index], mode="r")
            names = ("inputs", "target", "coverage", "rain_max") + (("motion",) if self.has_motion else ())
            self._arrays[index] = {name: root[name] for name in names}
        return self._arrays[index]

    def _has_rain(self, rain, block, grid, y0, x0, size_y, size_x):
        """Whether a block entirely inside the crop exceeds rain_threshold. rain: (K, by, bx) mm/h."""
        def inside(start, size, n):
            first = -(-start // block)
            last = (start + size) // block if start + size < n else -(-n // block)  # a partial edge block counts
            return first, last
        (b0, b1), (c0, c1) = inside(y0, size_y, grid[0]), inside(x0, size_x, grid[1])
        window = rain[:, b0:b1, c0:c1]
        return window.size > 0 and float(window.max()) > self.rain_threshold

    def crop(self, key):
        """(y0, x0, size_y, size_x) of sample `key`, an index or (epoch, index) (see the module docstring)."""
        epoch, index = self._key(key)
        store, start = self.sample_map[index]
        n_y, n_x = self.grids[store]
        if self.full_frame:
            return 0, 0, n_y, n_x
        size_y, size_x = min(self.patch_size, n_y), min(self.patch_size, n_x)
        if not self.train:
            return (n_y - size_y) // 2, (n_x - size_x) // 2, size_y, size_x
        rng = np.random.default_rng([self.seed, epoch, index])
        want_rain = rng.random() < self.rain_patch_prob
        if want_rain:
            rain = self.read(store, {"rain": ("rain_max", (self._rain_steps(start),))})["rain"]
        for _ in range(self.crop_tries if want_rain else 1):
            y0, x0 = int(rng.integers(0, n_y - size_y + 1)), int(rng.integers(0, n_x - size_x + 1))
            if want_rain and self._has_rain(rain, self.rain_blocks[store], (n_y, n_x), y0, x0, size_y, size_x):
                break
        return y0, x0, size_y, size_x

    def __getitem__(self, key):
        store, start = self.sample_map[self._key(key)[1]]
        y0, x0, size_y, size_x = self.crop(key)
        inputs, targets = window_steps(start, self.data)
        rows, cols = slice(y0, y0 + size_y), slice(x0, x0 + size_x)
        reads = {"x": ("inputs", (inputs, slice(None), rows, cols)), "y": ("target", (targets, rows, cols)),
                 "coverage": ("coverage", (targets, rows, cols))}
        if self.has_motion:
            reads["motion"] = ("motion", (inputs.stop - 1,))  # at t0: one chunk, the whole coarse frame
        got = self.read(store, reads)
        x, y, coverage = got["x"], got["y"][:, None], got["coverage"][:, None]
        motion = motion_crop(got["motion"], self._store(store)["motion"].attrs["stride"], rows, cols) \
            if self.has_motion else None
        if not self.full_frame and (size_y < self.patch_size or size_x < self.patch_size):
            pad = ((0, 0), (0, 0), (0, self.patch_size - size_y), (0, self.patch_size - size_x))
            x, y, coverage = np.pad(x, pad), np.pad(y, pad), np.pad(coverage, pad)
            motion = None if motion is None else np.pad(motion, pad[1:])
        if self.augment:
            x, y, coverage, motion = self.turn(key, x, y, coverage, motion)
        sample = {"x": torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                  "y": torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)),
                  "coverage": torch.from_numpy(np.ascontiguousarray(coverage, dtype=bool)),
                  "time": torch.from_numpy(self.times[store][targets].copy()),
                  "case": self.cases[store]}
        if motion is not None:
            sample["motion"] = torch.from_numpy(np.ascontiguousarray(motion, dtype=np.float32))
        return sample

    def turn_draw(self, key):
        """(quarter turns 0..3, flip) of sample `key` (index or (epoch, index)), apart from the crop's draws."""
        epoch, index = self._key(key)
        rng = np.random.default_rng([self.seed, epoch, index, 1])
        return int(rng.integers(0, 4)), bool(rng.integers(0, 2))

    def turn(self, key, x, y, coverage, motion):
        """Augmentation: one of the 8 flips/quarter turns, drawn from (seed, epoch, index), applied to the
        frames and, consistently, to the motion vectors (lagrangian.rotate_flip)."""
        turns, flip = self.turn_draw(key)
        x, _ = rotate_flip(x, None, turns, flip)
        y, _ = rotate_flip(y, None, turns, flip)
        coverage, motion = rotate_flip(coverage, motion, turns, flip)
        return x, y, coverage, motion


def window_starts(root, data, stats=None):
    """First input step of every sample window of one opened store (zarr group of preproc.py).

    Every window whose steps are valid (normalization.sample_starts); with data.rain_filter_fraction
    > 0 only those whose every target frame has at least that fraction of its covered pixels above
    data.rain_filter_threshold mm/h (NL-50's filter, normalization.rainy_starts). The filter reads
    the target frames one at a time (once) and needs stats (stats.json) to turn them into mm/h.
    """
    valid = root["valid"][:]
    starts = sample_starts(valid, data)
    if not data["rain_filter_fraction"] or not len(starts):
        return starts
    _, targets = window_steps(0, data)
    fractions = np.full(len(valid), np.nan)
    for t in np.unique(starts[:, None] + np.arange(targets.start, targets.stop)[None, :]):
        frame = denormalize_target(root["target"][t], stats)
        fractions[t] = rainy_fraction(frame, root["coverage"][t], data["rain_filter_threshold"])
    return rainy_starts(starts, fractions, data, data["rain_filter_fraction"])


class FrameWindowDataset(ZarrPatchDataset):
    """Windows of `frames` consecutive valid input steps, with no target: the data of
    self-supervised pretraining (pretrain.py), which can use every valid frame of every store.

    Crops as ZarrPatchDataset (train: random, rainy ones preferred by the rain_max of the window's
    steps, flipped and turned with data.augment; val/test: the centre patch_size crop; a smaller
    grid is zero-padded). A sample:
        x     (frames, C, P, P) float32  normalised inputs, steps s .. s + frames - 1
        time  (frames,)         int64    minutes since 1970-01-01 00:00 UTC
        case  str
    """

    def __init__(self, split_dir, params, frames, train=True, seed=None):
        self.frames = int(frames)
        super().__init__(split_dir, params, train=train, full_frame=False, seed=seed)

    def _window_starts(self, root, stats=None):
        return frame_starts(root["valid"][:], self.frames)

    def _window_text(self):
        return f"{self.frames} consecutive valid steps"

    def _rain_steps(self, start):
        return slice(start, start + self.frames)

    def __getitem__(self, key):
        store, start = self.sample_map[self._key(key)[1]]
        y0, x0, size_y, size_x = self.crop(key)
        x = self.read(store, {"x": ("inputs", (slice(start, start + self.frames), slice(None),
                                               slice(y0, y0 + size_y), slice(x0, x0 + size_x)))})["x"]
        if size_y < self.patch_size or size_x < self.patch_size:
            x = np.pad(x, ((0, 0), (0, 0), (0, self.patch_size - size_y), (0, self.patch_size - size_x)))
        if self.augment:
            x, _ = rotate_flip(x, None, *self.turn_draw(key))
        return {"x": torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                "time": torch.from_numpy(self.times[store][start:start + self.frames].copy()),
                "case": self.cases[store]}


class ChunkCache:
    """Decoded Zarr chunks kept in memory by one process, the least recently used dropped first once
    they take more than `megabytes` MB (data.cache_mb); 0 keeps none and reads straight from Zarr.

    Training crops of the same events overlap, and so do consecutive forecast windows: with the
    cache each chunk is decoded about once, not once per sample. zarr's per-chunk decoding, not
    the copying, is where loading spends its time (bench/bench_nowcast_data.py). Every process
    has its own cache (a DataLoader worker starts empty and keeps its cache while it persists,
    `EpochKeys`), so the memory is up to cache_mb per loading process. hits/misses count chunks.
    """

    def __init__(self, megabytes):
        self.limit = int(float(megabytes) * 2 ** 20)
        self.chunks, self.nbytes, self.hits, self.misses = OrderedDict(), 0, 0, 0

    def read(self, reads):
        """{name: (key, zarr.Array, selection)} -> {name: numpy array}, each equal to array[selection].

        key: any hashable naming the array among all that this cache holds (e.g. (store path, array
        name)). selection: a tuple of ints and slices of step 1 over the leading axes (the rest
        whole). The chunks missing from the cache are read in one box per array, all arrays together
        (`read_together`), and kept.
        """
        if not self.limit:
            return read_together({name: (array, selection) for name, (_, array, selection) in reads.items()})
        boxes = {name: _ChunkBox(key, array, selection) for name, (key, array, selection) in reads.items()}
        wanted = {}  # per array, one read: the box around the chunks not in the cache
        for name, box in boxes.items():
            missing = [index for key, index in zip(box.keys, box.indices) if key not in self.chunks]
            if missing:
                wanted[name] = (reads[name][1], box.around(missing))
        blocks = read_together(wanted) if wanted else {}
        out, new = {}, {}
        for name, box in boxes.items():
            data = np.empty(box.shape, box.dtype)
            corner = [s.start for s in wanted[name][1]] if name in wanted else None
            for key, source, inside, target in zip(box.keys, box.source, box.inside, box.target):
                chunk = self.chunks.get(key)
                if chunk is None:  # a copy: the chunk must not keep the whole block alive
                    chunk = new[key] = blocks[name][tuple(slice(s.start - c, s.stop - c)
                                                          for s, c in zip(source, corner))].copy()
                else:
                    self.hits += 1
                    self.chunks.move_to_end(key)
                data[target] = chunk[inside]
            out[name] = data.reshape(box.squeeze)
        self.misses += len(new)
        for key, chunk in new.items():  # only now: evicting earlier could drop a chunk still to be copied
            self._keep(key, chunk)
        return out

    def _keep(self, key, chunk):
        if key in self.chunks:
            self.nbytes -= self.chunks.pop(key).nbytes
        self.chunks[key] = chunk
        self.nbytes += chunk.nbytes
        while self.nbytes > self.limit and self.chunks:
            self.nbytes -= self.chunks.popitem(last=False)[1].nbytes


class _ChunkBox:
    """The chunks of a zarr array that a selection touches (ChunkCache): for each, its cache key,
    chunk index, `source` (its selection in the array, the whole chunk), and the part of it that
    the selection wants, `inside` the chunk and at `target` in the output of `shape`; `squeeze`:
    the output's shape once the axes selected by an int are dropped."""

    def __init__(self, key, array, selection):
        self.dtype = array.dtype
        axes, self.shape, self.squeeze = [], [], []  # axes: (start, stop, chunk size, length) of each
        for axis, (n, size) in enumerate(zip(array.shape, array.chunks)):
            item = selection[axis] if axis < len(selection) else slice(None)
            if isinstance(item, slice):
                start, stop, step = item.indices(n)
                if step != 1:
                    raise ValueError(f"ChunkCache: slices of step 1 only, got {item}")
                stop = max(stop, start)
                self.squeeze.append(stop - start)
            else:
                start = int(item) + (n if int(item) < 0 else 0)
                stop = start + 1
            axes.append((start, stop, size, n))
            self.shape.append(stop - start)
        self.axes = axes
        self.keys, self.indices, self.source, self.inside, self.target = [], [], [], [], []
        spans = [range(start // size, -(-stop // size)) for start, stop, size, _ in axes]
        for index in itertools.product(*spans):
            lows = [i * size for i, (_, _, size, _) in zip(index, axes)]
            highs = [min(low + size, n) for low, (_, _, size, n) in zip(lows, axes)]
            self.keys.append((key, index))
            self.indices.append(index)
            self.source.append(tuple(slice(low, high) for low, high in zip(lows, highs)))
            self.inside.append(tuple(slice(max(start, low) - low, min(stop, high) - low)
                                     for low, high, (start, stop, _, _) in zip(lows, highs, axes)))
            self.target.append(tuple(slice(max(start, low) - start, min(stop, high) - start)
                                     for low, high, (start, stop, _, _) in zip(lows, highs, axes)))

    def around(self, indices):
        """The selection of the smallest box of whole chunks that holds the chunks `indices`."""
        return tuple(slice(min(column) * size, min((max(column) + 1) * size, n))
                     for column, (_, _, size, n) in zip(zip(*indices), self.axes))


def read_together(reads):
    """{name: (zarr.Array, selection)} -> {name: numpy array}, all read at once: zarr's event loop
    overlaps the chunk reads and decoding of every array (zarr==3.1.6 `async_array`, `sync`)."""
    async def gather():
        return await asyncio.gather(*(array.async_array.getitem(selection) for array, selection in reads.values()))
    return dict(zip(reads, zarr_sync(gather())))


def motion_crop(coarse, stride, rows, cols):
    """The motion field (2, rows, cols) of a crop, pixels per step, interpolated bilinearly from the
    store's frame `coarse` (2, ceil(H/stride), ceil(W/stride)) of every stride-th pixel
    (preproc.write_motion), edges clamped (scipy's map_coordinates order=1, mode="nearest"); float32.
    Separable: along the rows, then along the columns."""
    def weights(pixels, n):
        position = np.clip(np.arange(pixels.start, pixels.stop) / stride, 0, n - 1)
        low = np.minimum(position.astype(np.int64), max(n - 2, 0))
        return low, np.minimum(low + 1, n - 1), (position - low)[:, None]
    top, bottom, wy = weights(rows, coarse.shape[1])
    left, right, wx = weights(cols, coarse.shape[2])
    along_y = coarse[:, top] * (1 - wy) + coarse[:, bottom] * wy  # (2, rows, coarse columns)
    along_x = along_y[:, :, left] * (1 - wx.T) + along_y[:, :, right] * wx.T
    return along_x.astype(np.float32)


def pad_collate(samples):
    """Stack samples into a batch; frames of different sizes are zero-padded at the bottom/right
    to the largest (coverage False there). x (B, T_in, C, H, W), y and coverage (B, T_out, 1, H, W),
    motion (B, 2, H, W) when the stores have it, time (B, T_out), case [B]."""
    n_y = max(s["x"].shape[-2] for s in samples)
    n_x = max(s["x"].shape[-1] for s in samples)
    batch = {}
    for key in ("x", "y", "coverage", "motion"):
        if key not in samples[0]:
            continue
        first = samples[0][key]
        out = first.new_zeros((len(samples),) + tuple(first.shape[:-2]) + (n_y, n_x))
        for i, s in enumerate(samples):
            out[i, ..., :s[key].shape[-2], :s[key].shape[-1]] = s[key]
        batch[key] = out
    batch["time"] = torch.stack([s["time"] for s in samples])
    batch["case"] = [s["case"] for s in samples]
    return batch


def make_datasets(params):
    """{"train", "val", "test": ZarrPatchDataset} over <paths.processed_data>/<split> (train: random crops).

    Every store must have been normalised with <paths.processed_data>/stats.json (UserError otherwise).
    """
    processed = params["paths"]["processed_data"]
    stats = load_stats(processed)
    check_config(params, stats, os.path.join(processed, "stats.json"))
    return {name: ZarrPatchDataset(os.path.join(processed, name), params, train=(name == "train"), stats=stats)
            for name in SPLITS}


class EpochKeys(Sampler):
    """Another sampler's indices as (epoch, index) keys of a ZarrPatchDataset, the epoch being the last
    `set_epoch` value: the crop and turn of that epoch are drawn in whichever process reads the sample, so
    loader workers can persist between passes and keep their chunk caches warm. set_epoch also reaches
    the wrapped sampler (its shuffle)."""

    def __init__(self, sampler):
        self.sampler, self.epoch = sampler, 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        epoch = self.epoch
        return ((epoch, int(index)) for index in self.sampler)

    def __len__(self):
        return len(self.sampler)


def load_datasets(params, world=1, rank=0, datasets=None, collate=pad_collate, pin_memory=None):
    """DataLoaders {"train", "val", "test"} (seed 000), for one process or one of `world` DDP ranks.

    datasets: {split: Dataset}; None: `make_datasets(params)` (the nowcasting stores). batch_size,
    num_workers and seed come from params["training"]. train: each rank draws its share of a
    shuffled order (DistributedSampler seeded by training.seed; the loop sets its epoch, and
    train datasets with `set_epoch` draw new crops each epoch). val: one fixed shuffled order, the
    rank's share (training.val_steps batches of it make a mixed validation subset). test: every
    sample once, in store/time order, on every rank (scores are computed by one process over the
    whole split). Loader workers (training.num_workers > 0) persist between passes; the epoch reaches
    them through the sampler (`EpochKeys`) for the train and val splits of a ZarrPatchDataset.
    UserError when a split has no sample.
    """
    training = params["training"]
    datasets = make_datasets(params) if datasets is None else datasets
    pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
    loaders = {}
    for name, data in datasets.items():
        if len(data) == 0:
            raise UserError(f"the {name} split has no sample")
        if name == "test":
            sampler = SequentialSampler(data)
        else:
            drop_last = name == "train" and len(data) >= world * training["batch_size"]
            sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=training["seed"],
                                         drop_last=drop_last)
            if isinstance(data, ZarrPatchDataset):
                sampler = EpochKeys(sampler)
        loaders[name] = DataLoader(data, batch_size=training["batch_size"], sampler=sampler,
                                   num_workers=training["num_workers"], collate_fn=collate, pin_memory=pin_memory,
                                   persistent_workers=training["num_workers"] > 0 and name != "test")
    loaders["val"].sampler.set_epoch(0)  # one fixed mixed validation order
    return loaders


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Check the datasets over preproc.py's stores: samples per split, grids, and the shapes "
                    "and value ranges of one training batch (what training.py will read).")
    config.add_config_arg(parser)
    config.add_override_flags(parser, [("--processed_data", "paths.processed_data", {"metavar": "DIR"}),
                                       ("--batch_size", "training.batch_size"), ("--patch_size", "data.patch_size")])
    args = parser.parse_args(argv)
    params = config.load_params(args.config, config.overrides_from(args))
    params["training"]["num_workers"] = 0
    loaders = load_datasets(params)
    for name, loader in loaders.items():
        data = loader.dataset
        grids = ", ".join(sorted({f"{h}x{w}" for h, w in data.grids}))
        print(f"{name:<5} {len(data):6d} samples from {len(data.paths)} stores (grids {grids})")
    batch = next(iter(loaders["train"]))
    stats = load_stats(params["paths"]["processed_data"])
    rain = denormalize_target(batch["y"], stats)[batch["coverage"]]
    print(f"a training batch: x {tuple(batch['x'].shape)} (B, T_in, C, H, W) in [{float(batch['x'].min()):.3g}, "
          f"{float(batch['x'].max()):.3g}], y {tuple(batch['y'].shape)}, coverage {float(batch['coverage'].float().mean()):.1%}"
          f", target up to {float(rain.max()) if rain.numel() else 0:.3g} mm/h")
    return 0


if __name__ == "__main__":
    config.run_main(main)
