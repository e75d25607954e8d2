"""Normalisation and sample windows: the one place that preproc.py, dataset.py, training.py and
evaluate.py take them from.

Transforms (data.transform, per channel): "none", or "log1p" = log1p(max(x, 0)), whose inverse is
expm1(max(v, 0)) (negative rain rates count as 0; a prediction below 0 comes back as 0 mm/h).
Normalisation: x_norm = (transform(x) - min) / (max - min) with the per-channel min/max after the
transform from the training cases (stats.json, written by preproc.py); max == min divides by 1.

A sample window of a case starts at input step s: inputs s .. t0 = s + input_steps - 1, targets
t0 + lead_steps + k for k < output_steps (`window_steps`); `sample_starts` lists the windows whose
steps are all valid.
"""
import json
import os

import numpy as np

from config import UserError


# --------------------------------------------------------------------------- transforms and scaling
def transform(x, name):
    """Apply a channel transform to physical values x (numpy, any shape)."""
    return np.log1p(np.maximum(x, 0)) if name == "log1p" else x


def inverse_transform(v, name):
    """Inverse of `transform` for numpy arrays and torch tensors (device and autograd kept)."""
    if name != "log1p":
        return v
    if hasattr(v, "clamp"):  # a torch tensor
        return v.clamp(min=0).expm1()
    return np.expm1(np.maximum(v, 0))


def _scale(lo, hi):
    return hi - lo if hi > lo else 1.0


def normalize_inplace(a, lo, hi, name):
    """float array a (physical) -> (transform(a) - lo) / (hi - lo), in place; NaN stays NaN.

    lo, hi: the channel's min/max after the transform (stats.json); hi == lo divides by 1.
    """
    if name == "log1p":
        np.maximum(a, 0, out=a)  # NaN stays NaN
        np.log1p(a, out=a)
    a -= lo
    a /= _scale(lo, hi)
    return a


def normalize(x, lo, hi, name):
    """Physical x (array-like) -> a new normalised float array (see normalize_inplace)."""
    x = np.asarray(x)
    return normalize_inplace(x.astype(np.result_type(x.dtype, np.float32)), lo, hi, name)


def normalize_tensor(x, lo, hi, name):
    """Physical x (torch tensor, mm/h for rain) -> normalised, differentiable; as `normalize`."""
    if name == "log1p":
        x = x.clamp(min=0).log1p()
    return (x - lo) / _scale(lo, hi)


def denormalize(y, lo, hi, name):
    """Normalised y (numpy array or torch tensor) -> physical units; inverse of `normalize`."""
    return inverse_transform(y * _scale(lo, hi) + lo, name)


def denormalize_target(y, stats):
    """Normalised target (any shape, numpy or torch) -> physical units (mm/h for rain rate).

    stats: the dict of stats.json (see `load_stats`). log1p targets come back >= 0.
    """
    target = stats["target"]
    return denormalize(y, target["min"], target["max"], target["transform"])


def normalize_target(x, stats):
    """Physical target values (mm/h) -> normalised, as stored in <case>.zarr/target (NaN stays NaN)."""
    target = stats["target"]
    return normalize(x, target["min"], target["max"], target["transform"])


def target_input_frames(x, stats):
    """The target's channel among the inputs, in physical units (mm/h), or None when the target is no input.

    x: normalised inputs (..., T, C, H, W), numpy or torch. Returns (..., T, H, W): what persistence
    and extrapolation forecast from.
    """
    c = target_channel(stats)
    if c is None:
        return None
    return denormalize(x[..., c, :, :], stats["min"][c], stats["max"][c], stats["transform"][c])


def target_channel(stats):
    """Index of the target among the input channels of stats.json, or None when it is no input."""
    pairs = list(zip(stats["sources"], stats["channels"]))
    key = (stats["target"]["source"], stats["target"]["channel"])
    return pairs.index(key) if key in pairs else None


# --------------------------------------------------------------------------- sample windows
def window_steps(start, data):
    """Steps of the sample window whose first input step is `start`.

    data: params["data"] (input_steps, lead_steps, output_steps). The inputs are steps
    start .. t0 = start + input_steps - 1; the targets are t0 + lead_steps + k, k < output_steps.
    Returns (inputs, targets): two slices of the case's time axis.
    """
    t0 = start + data["input_steps"] - 1
    first_target = t0 + data["lead_steps"]
    return slice(start, t0 + 1), slice(first_target, first_target + data["output_steps"])


def sample_starts(valid, data):
    """First input step s of every usable window of a case: all its input and target steps are valid.

    valid: bool (T,); data: params["data"] (see `window_steps`). Returns int64 (N,) ascending.
    """
    valid = np.asarray(valid, dtype=bool)
    inputs, targets = window_steps(0, data)
    n = len(valid) - targets.stop + 1  # number of candidate starts s = 0 .. n - 1
    if n <= 0:
        return np.zeros(0, np.int64)
    ok = np.ones(n, dtype=bool)
    for offset in [*range(inputs.start, inputs.stop), *range(targets.start, targets.stop)]:
        ok &= valid[offset:offset + n]
    return np.flatnonzero(ok).astype(np.int64)


def frame_starts(valid, frames):
    """First step s of every run of `frames` consecutive valid steps s .. s + frames - 1.

    The windows of self-supervised pretraining (pretrain.py): inputs only, no target, so every
    valid step of a case is in some window when its run of valid steps is at least `frames` long.
    valid: bool (T,); frames >= 1. Returns int64 (N,) ascending.
    """
    valid = np.asarray(valid, dtype=bool)
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if len(valid) < frames:
        return np.zeros(0, np.int64)
    return np.flatnonzero(np.lib.stride_tricks.sliding_window_view(valid, frames).all(axis=1)).astype(np.int64)


def rainy_fraction(frames, coverage=None, threshold=0.0):
    """Fraction of covered pixels whose value exceeds `threshold` (strictly), per frame.

    The count behind NL-50 (Trebing et al. 2021, SmaAt-UNet's create_datasets.py: a sample is kept
    when at least 50 % of its target pixels have rain, `value > 0`).
    frames: (..., H, W) physical values (mm/h); NaN counts as not covered.
    coverage: bool broadcastable to frames (True = covered), or None (every finite pixel).
    Returns float64 (...,): rainy covered pixels / covered pixels; NaN where no pixel is covered.
    """
    frames = np.asarray(frames, dtype=np.float64)
    covered = np.isfinite(frames)
    if coverage is not None:
        covered &= np.broadcast_to(np.asarray(coverage, dtype=bool), frames.shape)
    rainy = np.count_nonzero(covered & (np.where(covered, frames, 0.0) > threshold), axis=(-2, -1))
    n = np.count_nonzero(covered, axis=(-2, -1))
    out = np.full(np.shape(n), np.nan)
    np.divide(rainy, n, out=out, where=n > 0)
    return out


def rainy_starts(starts, fractions, data, min_fraction):
    """The sample starts whose every target frame has a rainy fraction >= min_fraction.

    starts: int (N,) first input steps (from `sample_starts`); fractions: (T,) the case's rainy
    fraction per step (`rainy_fraction`; NaN never passes); data: params["data"] (the windows, see
    `window_steps`); min_fraction: 0.5 for NL-50, 0 keeps every start. Returns int64 (M,).
    """
    starts = np.asarray(starts, dtype=np.int64)
    fractions = np.asarray(fractions, dtype=np.float64)
    if min_fraction <= 0:
        return starts
    _, targets = window_steps(0, data)
    offsets = np.arange(targets.start, targets.stop)
    with np.errstate(invalid="ignore"):
        ok = (fractions[starts[:, None] + offsets[None, :]] >= min_fraction).all(axis=1)
    return starts[ok]


# --------------------------------------------------------------------------- channels and stats
def channel_list(params):
    """[(source, channel, transform)] of the inputs, in stored order."""
    transforms = params["data"]["transform"]
    return [(source, channel, transforms.get(channel, "none"))
            for source, channels in params["data"]["inputs"].items() for channel in channels]


STATS_KEYS = ("channels", "sources", "transform", "min", "max", "target")  # what the readers use


def load_stats(processed_dir):
    """Read <processed_dir>/stats.json (written by preproc.py)."""
    path = os.path.join(processed_dir, "stats.json")
    if not os.path.isfile(path):
        raise UserError(f"{path}: not found (run preproc.py first)")
    try:
        with open(path, encoding="utf-8") as fh:
            stats = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot read it as JSON ({type(exc).__name__}: {exc}); re-run preproc.py") from None
    missing = [k for k in STATS_KEYS if not isinstance(stats, dict) or k not in stats]
    if missing:
        raise UserError(f"{path}: no {', '.join(missing)} (not a preproc.py stats.json); re-run preproc.py")
    return stats


def check_store(path, attrs, stats, source):
    """UserError unless the Zarr store at `path` was normalised with `stats`.

    attrs: the store's group attributes (preproc.py writes channels, transform and normalisation);
    stats: the stats.json dict to compare with; source: where stats came from, for the message
    ("stats.json", "checkpoint best.pt"). Catches a store left by another preproc.py run (another
    split, channels or transform), whose values would be denormalised to wrong physical units.
    """
    if attrs.get("channels") != stats["channels"]:
        raise UserError(f"{path}: channels {attrs.get('channels')} differ from {stats['channels']} of {source}; "
                        "re-run preproc.py")
    transforms = [attrs.get("transform", {}).get(c) for c in stats["channels"]]
    if transforms != stats["transform"]:
        raise UserError(f"{path}: transforms {transforms} differ from {stats['transform']} of {source}; "
                        "re-run preproc.py")
    for key in ("time_step_minutes", "max_gap_steps"):
        if key in stats and attrs.get(key) != stats[key]:
            raise UserError(f"{path}: made with data.{key} {attrs.get(key)}, but {source} has {stats[key]}: "
                            "they come from different preproc.py runs; re-run preproc.py")
    norm = attrs.get("normalisation", {})
    stored = [norm.get("target_min"), norm.get("target_max")]
    wanted = [stats["target"]["min"], stats["target"]["max"]]
    if stored != wanted or norm.get("min") != stats["min"] or norm.get("max") != stats["max"]:
        raise UserError(f"{path}: normalised with target range [{_text(stored[0])}, {_text(stored[1])}], but "
                        f"{source} has [{wanted[0]:.6g}, {wanted[1]:.6g}] (after the {stats['target']['transform']} "
                        "transform): they come from different preproc.py runs; re-run preproc.py or use the "
                        "matching stats/checkpoint")


def check_config(params, stats, source):
    """UserError unless params["data"] describes the data that `stats` (from preproc.py) normalised:
    the same channels and transforms, time step and gap filling. source: where stats came from, for the
    message ("stats.json", "checkpoint best.pt"). Catches a params.json edited after preproc.py ran,
    whose lead times in minutes or units would silently be wrong."""
    data, hint = params["data"], "re-run preproc.py, or set it back"
    channels = channel_list(params)
    if [c for _, c, _ in channels] != stats["channels"]:
        raise UserError(f"data.inputs: channels {[c for _, c, _ in channels]}, but {source} has {stats['channels']}; "
                        f"{hint}")
    target = stats["target"]
    if (data["target"]["source"], data["target"]["channel"]) != (target["source"], target["channel"]):
        raise UserError(f"data.target: {data['target']['source']}/{data['target']['channel']}, but {source} has "
                        f"{target['source']}/{target['channel']}; {hint}")
    names = stats["channels"] + [target["channel"]]
    for channel, stored in zip(names, stats["transform"] + [target["transform"]]):
        name = data["transform"].get(channel, "none")
        if name != stored:
            raise UserError(f"data.transform.{channel}: {name!r}, but {source} has {stored!r}; {hint}")
    for key in ("time_step_minutes", "max_gap_steps"):
        if key in stats and data[key] != stats[key]:
            raise UserError(f"data.{key}: {data[key]}, but {source} has {stats[key]}; {hint}")


def _text(value):
    return "?" if value is None else f"{value:.6g}"
