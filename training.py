"""Train, validate, checkpoint and test a forecast model (seed 000's `training.py`).

    python training.py [--config params.json] [--resume] [--epochs N] [--device cpu|cuda] ...
    torchrun --nproc_per_node 2 training.py [...]      # DistributedDataParallel (gloo on CPU, nccl on GPU)

The loop, as in the seed: load params, build the loaders, the model (model.build_model), a
loss, AdamW and ReduceLROnPlateau on the validation loss; each epoch trains
`training.steps_per_epoch` steps and validates `training.val_steps` batches; the best
model by validation loss goes to <paths.checkpoints>/best.pt, every epoch to last.pt;
after training the best model is tested (MSE/MAE in physical units, categorical scores
at `evaluation.thresholds`, the same for persistence) -> <paths.outputs>/test_metrics.json.

Tasks (`task` in params.json):
  nowcast  ZarrPatchDataset patches of preproc.py's stores: x (B, T_in, C, P, P) normalised,
           y (B, T_out, 1, P, P) normalised target; pixels outside radar coverage carry no
           weight. Physical units: mm/h (dataset.denormalize_target).
  sea_ice  ConsolidatedSICDataset over sea_ice.consolidated_file: x (B, input_length, 1, H, W),
           y (B, pred_length, 1, H, W) in fraction; land (sea_ice.land_mask_file) carries no
           weight. The date range sea_ice.start_date..end_date is cut in time into train/val/test
           by the data.split ratios (train first), so no test day is seen in training.

Loss (`training.loss`): "weighted_mse" = sum(w * m * (pred - y)^2) / sum(m), m = 1 on covered
pixels, w = weights[0] below thresholds[0] (mm/h, on the true target) and weights[i+1] at or
above thresholds[i]; "mse" (w = 1) and "mae" (|pred - y|). Sea ice uses mse/mae (rain-rate
weights do not apply; weighted_mse falls back to mse there).

Checkpoints hold model, optimizer, scheduler, epoch (completed), step, RNG states, params,
stats, best_val; they are written to a temporary name and renamed. Every epoch reseeds the
random number generators from (training.seed, epoch) and the data order and crops depend only
on those, so `--resume` from last.pt gives the same weights as an uninterrupted run (bit for
bit on the CPU). A NaN or infinite loss stops the run with one line naming the epoch and step;
last.pt/best.pt still hold the last good epoch.
"""
import argparse
import collections
import contextlib
import csv
import ctypes
import json
import math
import os
import random
import resource
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import config
import metrics
from atomic import atomic_path
from config import UserError
from dataset import load_datasets, make_datasets, pad_collate
from lagrangian import trajectories
from model import build_model, count_parameters
from normalization import denormalize_target, load_stats, target_input_frames
from utils import ConsolidatedSICDataset, open_consolidated

LOG_COLUMNS = ("epoch", "train_loss", "val_loss", "val_csi", "lr", "seconds", "samples_per_s")


class Diverged(Exception):
    """The loss became NaN or infinite."""


# --------------------------------------------------------------------------- loss
def intensity_weights(target, thresholds, weights):
    """Per-pixel weights: weights[0] below thresholds[0], weights[i + 1] at or above thresholds[i].

    target: tensor of physical values (mm/h); thresholds ascending. Same shape as target.
    """
    w = torch.full_like(target, float(weights[0]))
    for threshold, weight in zip(thresholds, weights[1:]):
        w = torch.where(target >= threshold, torch.as_tensor(float(weight), dtype=w.dtype, device=w.device), w)
    return w


def masked_loss(pred, target, mask, name, weights=None):
    """Mean over covered pixels of w * (pred - target)^2 ("mse", "weighted_mse") or |pred - target| ("mae").

    pred, target: (B, T, 1, H, W); mask: bool of the same shape (True = counts); weights: same
    shape or None. Pixels outside the mask contribute nothing, even if NaN.
    """
    err = torch.where(mask, pred - target, torch.zeros_like(pred))
    per_pixel = err.abs() if name == "mae" else err * err
    if weights is not None:
        per_pixel = per_pixel * weights
    return per_pixel.sum() / mask.sum().clamp(min=1)


def soft_csi_loss(pred, obs, mask, threshold, sharpness=0.1):
    """1 - CSI of soft forecast events against the observed events, over the covered pixels of the
    whole batch: a differentiable CSI (Lagerquist and Ebert-Uphoff 2022, AIES 1, "Can we integrate
    spatial verification methods into neural network loss functions for atmospheric science?").

    pred, obs: physical units (mm/h), same shape; mask: bool, True = counts. A forecast event is
    sigmoid((pred - threshold) / (sharpness * threshold)) in [0, 1], an observed one obs >= threshold;
    hits = sum f * o, and CSI = hits / (sum f + sum o - hits); the loss is 0 when no pixel counts.
    As sharpness -> 0 it is metrics.csi's CSI (tests/test_training.py).
    """
    f = torch.sigmoid((pred - threshold) / (sharpness * threshold))[mask]
    o = (obs >= threshold)[mask].to(f.dtype)
    hits = (f * o).sum()
    union = f.sum() + o.sum() - hits
    return torch.where(union > 0, 1.0 - hits / union.clamp(min=1e-12), union * 0.0)  # no sync with the device


def task_loss(pred, y, mask, task, loss_cfg):
    """training.loss on one batch: the weights of weighted_mse and weighted_mse_mae come from the true
    target in physical units (mm/h); the sea-ice task (no rain-rate stats) uses no weights.
    weighted_mse_mae = weighted MSE + weighted MAE (B-MSE + B-MAE, Shi et al. 2017, NeurIPS, eq. 5).
    csi_weight > 0 adds csi_weight * soft_csi_loss at csi_threshold (nowcasting only)."""
    name, weights = loss_cfg["name"], None
    if name.startswith("weighted") and task.stats is not None:
        weights = intensity_weights(task.to_physical(y), loss_cfg["thresholds"], loss_cfg["weights"])
    if name.endswith("mse_mae"):
        loss = masked_loss(pred, y, mask, "mse", weights) + masked_loss(pred, y, mask, "mae", weights)
    else:
        loss = masked_loss(pred, y, mask, "mae" if name == "mae" else "mse", weights)
    if loss_cfg.get("csi_weight", 0) > 0 and task.stats is not None:
        loss = loss + loss_cfg["csi_weight"] * soft_csi_loss(task.to_physical(pred), task.to_physical(y), mask,
                                                             loss_cfg["csi_threshold"])
    return loss


# --------------------------------------------------------------------------- tasks
# A task tells the loop what a batch is and how it is scored. It has:
#   datasets {"train", "val", "test": Dataset}, collate (or None), in_channels, stats (saved in
#   checkpoints; None for sea ice), unpack(batch, device) -> (x, y, mask) where x is the model's
#   input (a tensor, or a tuple of the model's arguments), loss(pred, y, mask),
#   to_physical(y), set_epoch(epoch); for the final test also persistence(x), lead_minutes,
#   thresholds, pixel_area_km2. Optional: train_step(model, batch, optimizer, device, amp) -> (loss,
#   samples) replaces `supervised_step` (a GAN), extra_state() / load_extra_state(state) carry
#   more than the model and its optimiser in checkpoints.
class NowcastTask:
    """Patches of preproc.py's stores (dataset.ZarrPatchDataset); physical units mm/h."""

    def __init__(self, params):
        processed = params["paths"]["processed_data"]
        self.stats = load_stats(processed)
        self.datasets = make_datasets(params)
        self.collate = pad_collate
        self.in_channels = len(self.stats["channels"])
        self.step_minutes = params["data"]["time_step_minutes"]
        self.lead_minutes = [self.step_minutes * (params["data"]["lead_steps"] + k)
                             for k in range(params["data"]["output_steps"])]
        self.thresholds = params["evaluation"]["thresholds"]
        self.loss_cfg = params["training"]["loss"]
        self.pixel_area_km2 = None
        self.leads = [params["data"]["lead_steps"] + k for k in range(params["data"]["output_steps"])]
        self.lagrangian = bool(params["model"].get(params["model"]["name"], {}).get("lagrangian"))
        if self.lagrangian and not all(d.has_motion for d in self.datasets.values()):
            raise UserError(f"model.{params['model']['name']}.lagrangian needs the motion field in the stores of "
                            f"{processed}: re-run preproc.py with data.motion true")

    def unpack(self, batch, device):
        """x (B, T_in, C, H, W) (Lagrangian models: the tuple (x, motion (B, 2, H, W))), y (B, T_out, 1, H, W),
        mask bool like y: covered, and for Lagrangian models also reached by a trajectory from inside the frame."""
        x, y = batch["x"].to(device, non_blocking=True), batch["y"].to(device, non_blocking=True)
        mask = batch["coverage"].to(device, non_blocking=True)
        if not self.lagrangian:
            return x, y, mask
        motion = batch["motion"].to(device, non_blocking=True)
        with torch.no_grad():
            steps = trajectories(motion, max(self.leads))
            inside = torch.stack([steps[lead - 1].inside for lead in self.leads], dim=1)  # (B, T_out, 1, H, W)
        return (x, motion), y, mask & inside

    def loss(self, pred, y, mask):
        return task_loss(pred, y, mask, self, self.loss_cfg)

    def to_physical(self, y):
        return denormalize_target(y, self.stats)

    def persistence(self, x):
        """Last input frame of the target channel in mm/h, repeated: (B, T_out, 1, H, W); None if not an input."""
        x = x[0] if isinstance(x, tuple) else x
        last = target_input_frames(x[:, -1:], self.stats)  # (B, 1, H, W)
        return None if last is None else last[:, :, None].expand(-1, len(self.lead_minutes), -1, -1, -1)

    def set_epoch(self, epoch):
        pass  # cycle() sets the training crops' epoch for every pass over the data


class SeaIceTask:
    """ConsolidatedSICDataset split in time; fraction units; land and the pole hole masked."""

    def __init__(self, params):
        ice = params["sea_ice"]
        ranges = self.split_days(params)
        mask = ice["land_mask_file"] or None
        common = dict(input_length=ice["input_length"], input_gap=ice["input_gap"], pred_gap=ice["pred_gap"],
                      pred_shift=ice["pred_shift"], pred_length=ice["pred_length"],
                      samples_gap=ice["samples_gap"], land_mask=mask, roi=ice["roi"],
                      max_missing_fraction=ice["max_missing_fraction"])
        self.datasets = {}
        for name, span in ranges.items():
            try:
                if not span:
                    raise UserError("no day")
                self.datasets[name] = ConsolidatedSICDataset(ice["consolidated_file"], span[0], span[-1], **common)
            except UserError as exc:
                raise UserError(f"sea_ice: the {name} part of the days ({len(span)} days) holds no sample "
                                f"({exc}); use a longer date range or shorter sequences") from None
        land, pole = self.datasets["train"].land_mask, self.datasets["train"].pole_hole
        self.ocean = None if land is None else ~land
        if self.ocean is not None and pole is not None:
            self.ocean &= ~pole  # the pole hole's values are filled, not observed: no loss there
        x = self.datasets["train"].x
        self.pixel_area_km2 = float(abs(x[1] - x[0]) / 1000.0) ** 2 if len(x) > 1 else None
        self.collate, self.stats, self.in_channels = None, None, 1
        self.lead_minutes = [1440 * (ice["pred_shift"] + ice["pred_gap"] * k) for k in range(ice["pred_length"])]
        self.thresholds = [metrics.ICE_EDGE_FRACTION]
        self.loss_cfg = params["training"]["loss"]
        self.step_minutes = None

    @staticmethod
    def split_days(params):
        """{split: [YYYYMMDD]}: the days of sea_ice.start_date..end_date cut in time by data.split ratios."""
        ice = params["sea_ice"]
        path = ice["consolidated_file"]
        if not os.path.exists(path):
            raise UserError(f"sea_ice.consolidated_file: {path} not found (run consolidate_data.py first)")
        reader = open_consolidated(path)
        try:
            times = np.asarray(reader.read("time")).astype(int)
        finally:
            reader.close()
        days = [int(t) for t in times if ice["start_date"] <= t <= ice["end_date"]]
        if not days:
            raise UserError(f"{path}: no day between sea_ice.start_date {ice['start_date']} and "
                            f"sea_ice.end_date {ice['end_date']}")
        split = params["data"]["split"]
        if isinstance(split["train"], list):
            raise UserError("data.split: the sea_ice task splits days by ratios, not by lists of case ids")
        n_train = int(round(split["train"] * len(days)))
        n_val = int(round(split["val"] * len(days)))
        return {"train": days[:n_train], "val": days[n_train:n_train + n_val], "test": days[n_train + n_val:]}

    def unpack(self, batch, device):
        x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        mask = torch.ones_like(y, dtype=torch.bool) if self.ocean is None else \
            self.ocean.to(device).expand_as(y)
        return x, y, mask

    def loss(self, pred, y, mask):
        return task_loss(pred, y, mask, self, self.loss_cfg)

    def to_physical(self, y):
        return y

    def persistence(self, x):
        """Last input day (fraction), repeated: (B, T_out, 1, H, W)."""
        return x[:, -1:].expand(-1, len(self.lead_minutes), -1, -1, -1)

    def set_epoch(self, epoch):
        pass


def make_task(params):
    return SeaIceTask(params) if params["task"] == "sea_ice" else NowcastTask(params)


# --------------------------------------------------------------------------- run, checkpoints, log
class Run:
    """Where this process trains: device, and its rank among `world` DistributedDataParallel ranks."""

    def __init__(self, device_name):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        self.device = pick_device(device_name, local_rank)
        self.local_rank = local_rank
        if self.world > 1:
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)

    @property
    def main(self):
        return self.rank == 0

    def close(self):
        if self.world > 1:
            dist.destroy_process_group()


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def rng_states():
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def save_checkpoint(path, state):
    """torch.save to a temporary name, then rename: a crash never leaves a half-written checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path, device="cpu"):
    """A training.py checkpoint (a dict with at least `model`); UserError for anything else."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # a damaged or foreign file
        raise UserError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"{path}: not a training.py checkpoint (expected a dict with 'model', "
                        f"got {type(state).__name__})")
    return state


def load_model_state(model, saved, path):
    """model.load_state_dict(saved) (the "model" of checkpoint `path`); UserError naming the checkpoint
    when its tensors do not fit the model (missing, unexpected, or of another shape)."""
    own = model.state_dict()
    if not isinstance(saved, dict):
        raise UserError(f"{path}: its 'model' is a {type(saved).__name__}, expected the model's tensors")
    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    resized = [k for k in own if k in saved and tuple(getattr(saved[k], "shape", ())) != tuple(own[k].shape)]
    if missing or unexpected or resized:
        first = (resized or missing or unexpected)[0]
        raise UserError(f"{path}: its weights do not fit the {type(model).__name__} of the config ({len(missing)} "
                        f"missing, {len(unexpected)} unexpected, {len(resized)} of another shape; first: {first})")
    model.load_state_dict(saved)


def pick_device(name, local_rank=0):
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("training.device: 'cuda' asked for, but no CUDA device is available")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


@contextlib.contextmanager
def reuse_cpu_memory():
    """Within the block, glibc's malloc serves large blocks from its heap, where freed ones are reused,
    instead of giving each block above 32 MB a fresh mmap whose pages the kernel faults in and zeroes
    again (M_MMAP_MAX 0); afterwards the default comes back and the free heap is returned to the system
    (malloc_trim). For a network's forward on whole frames: a 16-channel feature map of a 1226 x 760 FMI
    frame is 60 MB, and the ConvLSTM U-Net's forward on such a frame ran 1.6x faster with this, with
    the same arithmetic (bench/RESULTS.md, "CPU memory"). Does nothing where the C library has no mallopt."""
    try:
        libc = ctypes.CDLL(None)
        mallopt, trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        yield
        return
    m_mmap_max = -4  # glibc's <malloc.h>; its default value is 65536
    mallopt(m_mmap_max, 0)
    try:
        yield
    finally:
        mallopt(m_mmap_max, 65536)
        trim(0)


def read_log(path, up_to_epoch):
    """Rows of an existing train_log.csv with epoch <= up_to_epoch (kept on --resume)."""
    if not os.path.isfile(path):
        return []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return [row for row in csv.DictReader(fh) if int(row["epoch"]) <= up_to_epoch]
    except (OSError, UnicodeDecodeError, csv.Error, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: cannot read the training log ({type(exc).__name__}: {exc}); move it away to "
                        "start a new one") from None


def write_log(path, rows, columns=LOG_COLUMNS):
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


class Progress:
    """Where a training run stands: epochs done, optimiser steps, best validation score (selection_score), log rows."""

    def __init__(self, paths):
        self.last = os.path.join(paths["checkpoints"], "last.pt")
        self.best = os.path.join(paths["checkpoints"], "best.pt")
        self.log = os.path.join(paths["outputs"], "train_log.csv")
        self.epoch, self.step, self.best_val, self.log_rows = 0, 0, math.inf, []
        self.bad_epochs = 0  # epochs since the validation loss last improved


def resume(progress, model, optimizer, scheduler, task, params, run):
    """Load <checkpoints>/last.pt into the model, optimiser, scheduler and `progress` (--resume)."""
    state = load_checkpoint(progress.last)
    for key in ("model", "optimizer", "scheduler", "epoch", "step", "best_val", "params"):
        if key not in state:
            raise UserError(f"{progress.last}: not a training.py checkpoint (no {key!r})")
    check_same_run(progress.last, state["params"], params)
    load_model_state(model, state["model"], progress.last)
    try:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{progress.last}: its optimizer state does not fit the model ({type(exc).__name__}: "
                        f"{exc}); start without --resume") from None
    if hasattr(task, "load_extra_state"):
        task.load_extra_state(state.get("extra"))
    progress.epoch, progress.step, progress.best_val = state["epoch"], state["step"], state["best_val"]
    progress.bad_epochs = state.get("bad_epochs", 0)
    if progress.epoch >= params["training"]["epochs"]:
        raise UserError(f"training.epochs {params['training']['epochs']}: {progress.last} already holds "
                        f"{progress.epoch} epochs; ask for more epochs (--epochs N) to continue")
    progress.log_rows = read_log(progress.log, progress.epoch)
    if run.main:
        print(f"resumed from {progress.last}: {progress.epoch} epochs done, step {progress.step}, "
              f"best validation score {progress.best_val:.4g} (training.select_on)")


# the optimiser and its schedule continue from last.pt, so training.lr, weight_decay, lr_factor and lr_patience
# given now would be ignored: they must be the checkpoint's
RUN_KEYS = ("task", "model", "training.lr", "training.weight_decay", "training.lr_factor", "training.lr_patience",
            "data.inputs", "data.target", "data.transform", "data.input_steps",
            "data.lead_steps", "data.output_steps", "training.select_on", "training.select_threshold")


def check_same_run(path, saved, params, keys=RUN_KEYS):
    """UserError when a checkpoint was made with other settings than `params` in any of `keys`."""
    for dotted in keys:
        try:
            saved_value = config.get_dotted(saved, dotted)
        except (KeyError, TypeError):  # an older or damaged checkpoint
            saved_value = None
        key, before, now = first_difference(dotted, saved_value, config.get_dotted(params, dotted))
        if key is not None:
            raise UserError(f"{path}: made with {key} = {json.dumps(before)}, but the config has "
                            f"{json.dumps(now)}; use the same settings or start without --resume")


def first_difference(dotted, a, b):
    """(dotted key, a value, b value) of the first leaf where two nested dicts differ, or (None, a, b)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for name in sorted(set(a) | set(b), key=lambda k: (k != "name", k)):
            found = first_difference(f"{dotted}.{name}", a.get(name), b.get(name))
            if found[0] is not None:
                return found
        return None, a, b
    return (dotted, a, b) if a != b else (None, a, b)


# --------------------------------------------------------------------------- train / validate / test
def supervised_step(model, task, batch, optimizer, device, amp):
    """One optimiser step on task.loss; returns (loss, samples). Raises Diverged before updating."""
    x, y, mask = task.unpack(batch, device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        pred = forward(model, x)
    loss = task.loss(pred.float(), y, mask)
    if not torch.isfinite(loss):
        raise Diverged(f"loss is {loss.item()}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item(), y.shape[0]


def forward(model, x):
    """The model's forecast from unpacked inputs: x a tensor, or a tuple of arguments (x, motion)."""
    return model(*x) if isinstance(x, tuple) else model(x)


def cycle(loader, epoch):
    """Batches of `loader` without end. Pass p of epoch e shuffles with sampler epoch e * 100003 + p
    and sets the dataset's epoch to the same number, so a sample drawn again gets a new random crop."""
    for p in range(10 ** 9):
        loader.sampler.set_epoch(epoch * 100003 + p)
        if hasattr(loader.dataset, "set_epoch"):
            loader.dataset.set_epoch(epoch * 100003 + p)
        yield from loader


def train_epoch(model, task, loader, optimizer, params, epoch, progress, run):
    """One epoch of training.steps_per_epoch steps. Returns (mean loss, samples); advances progress.step."""
    training = params["training"]
    amp = training["amp"] and run.device.type == "cuda"
    step_fn = getattr(task, "train_step", None) or (lambda *a: supervised_step(a[0], task, *a[1:]))
    model.train()
    total, n_samples = 0.0, 0
    batches = cycle(loader, epoch)
    bar = tqdm(range(training["steps_per_epoch"]), desc=f"epoch {epoch + 1}/{training['epochs']}",
               unit="step", disable=not run.main, leave=False)
    for _ in bar:
        progress.step += 1
        try:
            loss, samples = step_fn(model, next(batches), optimizer, run.device, amp)
        except Diverged as exc:
            raise Diverged(f"{exc} at epoch {epoch + 1}, step {progress.step}") from None
        total += loss
        n_samples += samples
        bar.set_postfix(loss=f"{loss:.4g}")
    return total / training["steps_per_epoch"], n_samples


@torch.no_grad()
def validate(model, task, loader, params, run):
    """(mean loss, CSI) over the first training.val_steps batches of every rank (summed over ranks).

    CSI = hits / (hits + misses + false alarms) of the events >= training.select_threshold in
    physical units (task.to_physical), counted over every valid pixel of those batches; NaN when
    neither forecasts nor observations have an event, and not computed (NaN) unless
    training.select_on is csi.
    """
    training = params["training"]
    amp = training["amp"] and run.device.type == "cuda"
    model.eval()
    sums = torch.zeros(5, dtype=torch.float64, device=run.device)  # loss, batches, hits, misses, false alarms
    for i, batch in enumerate(loader):
        if i >= training["val_steps"]:
            break
        x, y, mask = task.unpack(batch, run.device)
        with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=amp):
            pred = forward(model, x).float()
        sums[:2] += torch.stack([task.loss(pred, y, mask).double(), torch.ones((), dtype=torch.float64,
                                                                              device=run.device)])
        if training["select_on"] == "csi":
            sums[2:] += event_counts(task.to_physical(pred), task.to_physical(y), mask, training["select_threshold"])
    if run.world > 1:
        dist.all_reduce(sums)
    hits, misses, false_alarms = sums[2:].tolist()
    events = hits + misses + false_alarms
    return (sums[0] / sums[1].clamp(min=1)).item(), hits / events if events else math.nan


def event_counts(pred, obs, mask, threshold):
    """(hits, misses, false alarms) of events >= threshold on the pixels where mask is True: float64 (3,).
    metrics.contingency_table counted on the device, so that DDP ranks can sum it (tested equal to it)."""
    forecast, observed = (pred >= threshold) & mask, (obs >= threshold) & mask
    return torch.stack([(forecast & observed).sum(), (~forecast & observed).sum(),
                        (forecast & ~observed).sum()]).double()


def selection_score(val_loss, val_csi, training):
    """The number that best.pt, the learning-rate schedule and early stopping minimise: the validation
    loss, or -CSI (0 when CSI is undefined: no event forecast or observed)."""
    if training["select_on"] == "loss":
        return val_loss
    return -val_csi if math.isfinite(val_csi) else 0.0


def end_epoch(progress, model, optimizer, scheduler, task, params, run, epoch, train_loss, val, samples, seconds):
    """Adjust the learning rate, write last.pt (and best.pt when better), log and print one line.
    val: (validation loss, validation CSI) of `validate`."""
    val_loss, val_csi = val
    if not math.isfinite(val_loss):
        raise Diverged(f"validation loss is {val_loss} at epoch {epoch + 1}, step {progress.step}")
    score = selection_score(val_loss, val_csi, params["training"])
    scheduler.step(score)
    improved = score < progress.best_val
    progress.epoch, progress.best_val = epoch + 1, min(progress.best_val, score)
    progress.bad_epochs = 0 if improved else progress.bad_epochs + 1
    if not run.main:
        return
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "epoch": epoch + 1, "step": progress.step, "rng": rng_states(), "params": params, "stats": task.stats,
             "best_val": progress.best_val, "val_loss": val_loss, "val_csi": val_csi, "in_channels": task.in_channels,
             "bad_epochs": progress.bad_epochs}
    if hasattr(task, "extra_state"):
        state["extra"] = task.extra_state()
    save_checkpoint(progress.last, state)
    if improved:
        save_checkpoint(progress.best, state)
    lr, speed = optimizer.param_groups[0]["lr"], samples * run.world / seconds
    progress.log_rows.append({"epoch": epoch + 1, "train_loss": f"{train_loss:.6g}", "val_loss": f"{val_loss:.6g}",
                              "val_csi": f"{val_csi:.4f}", "lr": f"{lr:.6g}", "seconds": f"{seconds:.2f}",
                              "samples_per_s": f"{speed:.2f}"})
    write_log(progress.log, progress.log_rows)
    csi = f"  val CSI {val_csi:.3f}" if params["training"]["select_on"] == "csi" else ""
    print(f"epoch {epoch + 1}/{params['training']['epochs']}: train {train_loss:.4g}  val {val_loss:.4g}{csi}  "
          f"lr {lr:.3g}  {seconds:.1f} s  {speed:.1f} samples/s{'  (best)' if improved else ''}")


def fit(params, task, model, run, resume_run=False):
    """Train `model` on `task`: AdamW, ReduceLROnPlateau on the validation loss, training.epochs epochs
    of training.steps_per_epoch steps; last.pt every epoch and best.pt at the best validation score
    (training.select_on: the validation loss, or CSI).

    model: on run.device. resume_run: continue from <paths.checkpoints>/last.pt. Every epoch reseeds
    the random number generators from (training.seed, epoch), so a resumed run gives the same
    weights as an uninterrupted one. Returns the Progress (progress.best: the best checkpoint).
    Raises Diverged on a NaN or infinite loss (last.pt/best.pt hold the last good epoch).
    """
    training = params["training"]
    loaders = load_datasets(params, run.world, run.rank, task.datasets, task.collate, run.device.type == "cuda")
    optimizer = torch.optim.AdamW(model.parameters(), lr=training["lr"], weight_decay=training["weight_decay"])
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=training["lr_factor"],
                                                           patience=training["lr_patience"])
    progress = Progress(params["paths"])
    if resume_run:
        resume(progress, model, optimizer, scheduler, task, params, run)
    net = torch.compile(model) if training["compile"] else model
    if run.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[run.local_rank] if run.device.type == "cuda" else None)
    if run.main:
        name = getattr(task, "name", params["task"])
        print(f"{name}: {type(model).__name__} ({count_parameters(model):,} parameters) on {run.device}"
              f"{f' x {run.world} ranks' if run.world > 1 else ''}; samples train/val/test "
              f"{', '.join(str(len(d)) for d in task.datasets.values())}")
    cpu_start = cpu_seconds()
    for epoch in range(progress.epoch, training["epochs"]):
        seed_everything(training["seed"] * 1000003 + epoch)
        task.set_epoch(epoch)
        started = time.time()
        train_loss, samples = train_epoch(net, task, loaders["train"], optimizer, params, epoch, progress, run)
        val = validate(net, task, loaders["val"], params, run)
        end_epoch(progress, model, optimizer, scheduler, task, params, run, epoch, train_loss, val, samples,
                  time.time() - started)
        reason = stop_reason(progress, training, cpu_seconds() - cpu_start, run)
        if reason:
            if run.main:
                print(f"stopped after epoch {epoch + 1}: {reason}")
            break
    progress.test_loader = loaders["test"]
    return progress


def cpu_seconds():
    """CPU time of this process (every thread) and of its finished children (loader workers), s."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def stop_reason(progress, training, cpu_used, run):
    """Why training stops before training.epochs (early stopping, CPU budget), or None; rank 0 decides."""
    reason = None
    if training["early_stop_patience"] and progress.bad_epochs >= training["early_stop_patience"]:
        reason = (f"no better validation {training['select_on']} for {progress.bad_epochs} epochs "
                  "(training.early_stop_patience)")
    elif training["cpu_minutes"] and cpu_used >= 60 * training["cpu_minutes"]:
        reason = f"{cpu_used / 60:.1f} CPU minutes used (training.cpu_minutes {training['cpu_minutes']:g})"
    if run.world > 1:
        flag = torch.tensor([reason is not None], dtype=torch.int32, device=run.device)
        dist.broadcast(flag, src=0)  # every rank takes rank 0's decision
        reason = (reason or "rank 0 stopped") if flag.item() else None
    return reason


@torch.no_grad()
def test(model, task, loader, params, device):
    """Scores of the model and of persistence (last input frame) on the whole test split, physical units.

    Returns {"lead_minutes", "thresholds", "methods": {"model": {...}, "persistence": {...}}} with
    per-lead lists: mse, mae, and csi/pod/far/hss/accuracy per threshold (keys str(float(t))); for
    sea ice also iiee_km2 (metrics.iiee, the mean over the test forecasts).
    """
    amp = params["training"]["amp"] and device.type == "cuda"
    model.eval()
    methods = ("model", "persistence")
    continuous = {m: metrics.ContinuousAccumulator(lead_axis=1) for m in methods}
    categorical = {m: metrics.ContingencyAccumulator(task.thresholds, lead_axis=1) for m in methods}
    ice_edge = {m: [0.0, 0] for m in methods}  # sum of IIEE per lead (km^2), forecasts
    for batch in tqdm(loader, desc="test", unit="batch", leave=False):
        x, y, mask = task.unpack(batch, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            pred = forward(model, x).float()
        forecasts = {"model": task.to_physical(pred), "persistence": task.persistence(x)}  # physical units
        obs = task.to_physical(y)[:, :, 0].cpu().numpy()
        valid = mask[:, :, 0].cpu().numpy()
        for name in methods:
            if forecasts[name] is None:
                continue
            fc = forecasts[name].float()[:, :, 0].cpu().numpy()
            continuous[name].update(fc, obs, valid)
            categorical[name].update(fc, obs, valid)
            if task.pixel_area_km2:
                per_frame = metrics.iiee(fc, obs, task.pixel_area_km2, land_mask=~valid)["iiee_km2"]  # (B, T)
                ice_edge[name][0] += per_frame.sum(axis=0)
                ice_edge[name][1] += per_frame.shape[0]
    report = {"lead_minutes": task.lead_minutes, "thresholds": [float(t) for t in task.thresholds], "methods": {}}
    for name in methods:
        if continuous[name].sums is None:
            continue
        cont, cat = continuous[name].scores(), categorical[name].scores()
        scores = {"mse": np.atleast_1d(cont["mse"]).tolist(), "mae": np.atleast_1d(cont["mae"]).tolist()}
        for score in ("csi", "pod", "far", "hss", "accuracy"):
            scores[score] = {str(float(t)): np.asarray(cat[score][i]).tolist() for i, t in enumerate(task.thresholds)}
        if task.pixel_area_km2:
            total, n_forecasts = ice_edge[name]
            scores["iiee_km2"] = (np.asarray(total, dtype=float) / max(n_forecasts, 1)).tolist()
        report["methods"][name] = scores
    return report


def print_test_report(report, unit):
    leads = report["lead_minutes"]
    print(f"test scores per lead ({unit}); leads in minutes: {leads}")
    for name, scores in report["methods"].items():
        thr = str(float(report["thresholds"][min(1, len(report["thresholds"]) - 1)]))
        csi = ", ".join(f"{v:.3f}" for v in scores["csi"][thr])
        mse = ", ".join(f"{v:.4g}" for v in scores["mse"])
        print(f"  {name:<12} MSE [{mse}]  CSI@{thr} [{csi}]")


def final_test(params, task, model, progress, run):
    """Load best.pt and score it with persistence on the whole test split -> <outputs>/test_metrics.json."""
    if not os.path.exists(progress.best):
        raise UserError(f"{progress.best}: no best checkpoint to test")
    load_model_state(model, load_checkpoint(progress.best, run.device)["model"], progress.best)
    report = test(model, task, progress.test_loader, params, run.device)
    out = os.path.join(params["paths"]["outputs"], "test_metrics.json")
    with atomic_path(out) as tmp, open(tmp, "w") as fh:
        json.dump(report, fh, indent=1)
    print_test_report(report, "mm/h" if params["task"] == "nowcast" else "fraction")
    return out


# --------------------------------------------------------------------------- fine-tuning
def load_matching_weights(model, path):
    """Copy into `model` the tensors of checkpoint `path` (its "model") whose name and shape match.

    Returns {"loaded", "missing", "unexpected", "mismatched"}: lists of tensor names. missing: the
    model's tensors not loaded (they keep their initialisation); unexpected: the checkpoint's
    tensors not used; mismatched: the names in both with different shapes (in missing and
    unexpected too). UserError when nothing matches.
    """
    saved, own = load_checkpoint(path)["model"], model.state_dict()
    loaded = [k for k in saved if k in own and saved[k].shape == own[k].shape]
    if not loaded:
        raise UserError(f"training.init_weight: no tensor of {path} matches the model by name and shape")
    model.load_state_dict({k: saved[k] for k in loaded}, strict=False)
    return {"loaded": loaded, "missing": [k for k in own if k not in loaded],
            "unexpected": [k for k in saved if k not in loaded],
            "mismatched": [k for k in saved if k in own and saved[k].shape != own[k].shape]}


def _by_module(names):
    counts = collections.Counter(name.split(".")[0] for name in names)
    return ", ".join(f"{module} {n}" for module, n in counts.items()) or "none"


def start_from_pretrained(model, params, run, load_weights=True):
    """training.init_weight: copy the matching weights (reported by module); training.freeze."""
    training = params["training"]
    if training["init_weight"] and load_weights:
        report = load_matching_weights(model, training["init_weight"])
        if run.main:
            print(f"init_weight {training['init_weight']}: loaded {len(report['loaded'])} tensors "
                  f"({_by_module(report['loaded'])}); missing {len(report['missing'])} ({_by_module(report['missing'])}); "
                  f"unexpected {len(report['unexpected'])} ({_by_module(report['unexpected'])}); shape differs: "
                  f"{', '.join(report['mismatched']) or 'none'}")
    if training["freeze"] == "encoder":
        if not hasattr(model, "freeze_encoder"):
            raise UserError(f"training.freeze: 'encoder' needs a model with an encoder (spark_unet), "
                            f"not model.name {params['model']['name']!r}")
        model.freeze_encoder()


# --------------------------------------------------------------------------- main
FLAGS = [("--epochs", "training.epochs"), ("--batch_size", "training.batch_size"), ("--lr", "training.lr"),
         ("--steps_per_epoch", "training.steps_per_epoch"), ("--val_steps", "training.val_steps"),
         ("--seed", "training.seed"), ("--device", "training.device"), ("--num_workers", "training.num_workers"),
         ("--task", "task"), ("--model", "model.name"), ("--compile", "training.compile"),
         ("--init_weight", "training.init_weight", {"metavar": "PRETRAINED.pt"}), ("--freeze", "training.freeze"),
         ("--densify_norm", "model.spark_unet.densify_norm"), ("--transition", "model.spark_unet.transition"),
         ("--cpu_minutes", "training.cpu_minutes"), ("--rain_filter_fraction", "data.rain_filter_fraction")]


def parse_args(argv):
    parser = argparse.ArgumentParser(description="\n\n".join(__doc__.split("\n\n")[:3]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    config.add_config_arg(parser)
    parser.add_argument("--resume", action="store_true", help="continue from <paths.checkpoints>/last.pt")
    config.add_override_flags(parser, FLAGS)
    config.add_protocol_arg(parser)
    parser.add_argument("--skip_test", action="store_true", help="do not test the best model after training")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    # 1. parameters: params.json, overridden by the command line
    params = config.load_params(args.config, config.overrides_from(args))
    for key in ("checkpoints", "outputs"):  # a file in the way or no permission: said before any work
        config.ensure_folder(params["paths"][key], f"paths.{key}")
    run = Run(params["training"]["device"])
    # 2. the data: train/val/test datasets (dataset.load_datasets makes the loaders inside fit)
    task = make_task(params)
    # 3. the model (the loss is task.loss; AdamW and ReduceLROnPlateau are made by fit)
    seed_everything(params["training"]["seed"])
    model = build_model(params, task.in_channels, task.stats).to(run.device)
    start_from_pretrained(model, params, run, load_weights=not args.resume)
    # 4. the epochs: train, validate, adjust the learning rate, keep the best checkpoint
    try:
        progress = fit(params, task, model, run, resume_run=args.resume)
    except Diverged as exc:
        last = os.path.join(params["paths"]["checkpoints"], "last.pt")
        kept = f"; the last good checkpoint is {last}" if os.path.exists(last) else "; no checkpoint was written"
        print(f"error: training stopped: {exc}{kept} (lower training.lr?)", file=sys.stderr)
        return 1
    finally:
        if run.world > 1:
            dist.barrier()
    # 5. test the best model on the whole test split
    if run.main and not args.skip_test:
        out = final_test(params, task, model, progress, run)
        print(f"training: {params['training']['epochs']} epochs -> {progress.best}, {progress.last}, "
              f"{progress.log}, {out}")
    run.close()
    return 0


if __name__ == "__main__":
    config.run_main(main)
