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
import csv
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

import config
import metrics
from config import UserError
from model import build_model, count_parameters

LOG_COLUMNS = ("epoch", "train_loss", "val_loss", "lr", "seconds", "samples_per_s")


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


def task_loss(pred, y, mask, task, loss_cfg):
    """training.loss on one batch: weighted_mse weights come from the true target in physical units
    (mm/h); the sea-ice task (no rain-rate stats) uses plain mse for weighted_mse."""
    weights = None
    if loss_cfg["name"] == "weighted_mse" and task.stats is not None:
        weights = intensity_weights(task.to_physical(y), loss_cfg["thresholds"], loss_cfg["weights"])
    return masked_loss(pred, y, mask, "mae" if loss_cfg["name"] == "mae" else "mse", weights)


# --------------------------------------------------------------------------- tasks
class NowcastTask:
    """Batches from dataset.load_datasets; physical units mm/h."""

    def __init__(self, params):
        from dataset import SPLITS, ZarrPatchDataset, pad_collate
        from normalization import load_stats
        processed = params["paths"]["processed_data"]
        self.stats = load_stats(processed)
        self.datasets = [ZarrPatchDataset(os.path.join(processed, split), params, train=(split == "train"))
                         for split in SPLITS]
        self.collate = pad_collate
        self.in_channels = len(self.stats["channels"])
        self.step_minutes = params["data"]["time_step_minutes"]
        self.lead_minutes = [self.step_minutes * (params["data"]["lead_steps"] + k)
                             for k in range(params["data"]["output_steps"])]
        self.thresholds = params["evaluation"]["thresholds"]
        self.pixel_area_km2 = None

    def unpack(self, batch, device):
        """x (B, T_in, C, H, W), y (B, T_out, 1, H, W), mask bool like y."""
        return (batch["x"].to(device, non_blocking=True), batch["y"].to(device, non_blocking=True),
                batch["coverage"].to(device, non_blocking=True))

    def to_physical(self, y):
        from normalization import denormalize_target
        return denormalize_target(y, self.stats)

    def persistence(self, x):
        """Last input frame of the target channel in mm/h, repeated: (B, T_out, 1, H, W); None if not an input."""
        from normalization import target_input_frames
        last = target_input_frames(x[:, -1:], self.stats)  # (B, 1, H, W)
        return None if last is None else last[:, :, None].expand(-1, len(self.lead_minutes), -1, -1, -1)

    def set_epoch(self, epoch):
        self.datasets[0].set_epoch(epoch)


class SeaIceTask:
    """ConsolidatedSICDataset split in time; fraction units; land masked."""

    def __init__(self, params):
        from utils import ConsolidatedSICDataset, open_consolidated
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
        ranges = {"train": days[:n_train], "val": days[n_train:n_train + n_val], "test": days[n_train + n_val:]}
        mask = ice["land_mask_file"] or None
        common = dict(input_length=ice["input_length"], input_gap=ice["input_gap"], pred_gap=ice["pred_gap"],
                      pred_shift=ice["pred_shift"], pred_length=ice["pred_length"],
                      samples_gap=ice["samples_gap"], land_mask=mask, roi=ice["roi"])
        self.datasets = []
        for name, span in ranges.items():
            try:
                if not span:
                    raise UserError("no day")
                self.datasets.append(ConsolidatedSICDataset(path, span[0], span[-1], **common))
            except UserError as exc:
                raise UserError(f"sea_ice: the {name} part of the days ({len(span)} days) holds no sample "
                                f"({exc}); use a longer date range or shorter sequences") from None
        land = self.datasets[0].land_mask
        self.ocean = None if land is None else ~land
        x = self.datasets[0].x
        self.pixel_area_km2 = float(abs(x[1] - x[0]) / 1000.0) ** 2 if len(x) > 1 else None
        self.collate, self.stats, self.in_channels = None, None, 1
        self.lead_minutes = [1440 * (ice["pred_shift"] + ice["pred_gap"] * k) for k in range(ice["pred_length"])]
        self.thresholds = [metrics.ICE_EDGE_FRACTION]
        self.step_minutes = None

    def unpack(self, batch, device):
        x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        mask = torch.ones_like(y, dtype=torch.bool) if self.ocean is None else \
            self.ocean.to(device).expand_as(y)
        return x, y, mask

    def to_physical(self, y):
        return y

    def persistence(self, x):
        """Last input day (fraction), repeated: (B, T_out, 1, H, W)."""
        return x[:, -1:].expand(-1, len(self.lead_minutes), -1, -1, -1)

    def set_epoch(self, epoch):
        pass


def make_task(params):
    return SeaIceTask(params) if params["task"] == "sea_ice" else NowcastTask(params)


# --------------------------------------------------------------------------- helpers
def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def rng_states():
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def save_checkpoint(path, state):
    """torch.save to a temporary name, then rename: a crash never leaves a half-written checkpoint."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, device="cpu"):
    if not os.path.isfile(path):
        raise UserError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # a damaged or foreign file
        raise UserError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None


def pick_device(name, local_rank=0):
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("training.device: 'cuda' asked for, but no CUDA device is available")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def read_log(path, up_to_epoch):
    """Rows of an existing train_log.csv with epoch <= up_to_epoch (kept on --resume)."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as fh:
        return [row for row in csv.DictReader(fh) if int(row["epoch"]) <= up_to_epoch]


def write_log(path, rows):
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def cycle(loader, sampler, epoch):
    """Batches of `loader` without end; pass p of epoch e shuffles with sampler epoch e * 100003 + p."""
    for p in range(10 ** 9):
        sampler.set_epoch(epoch * 100003 + p)
        yield from loader


# --------------------------------------------------------------------------- train / validate / test
def train_epoch(model, task, loader, sampler, optimizer, params, epoch, step, device, rank):
    """One epoch of training.steps_per_epoch steps. Returns (mean loss, samples, new step)."""
    training = params["training"]
    amp = training["amp"] and device.type == "cuda"
    model.train()
    total, n_samples = 0.0, 0
    batches = cycle(loader, sampler, epoch)
    bar = tqdm(range(training["steps_per_epoch"]), desc=f"epoch {epoch + 1}/{training['epochs']}",
               unit="step", disable=rank != 0, leave=False)
    for _ in bar:
        x, y, mask = task.unpack(next(batches), device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            pred = model(x)
        loss = task_loss(pred.float(), y, mask, task, training["loss"])
        step += 1
        if not torch.isfinite(loss):
            raise Diverged(f"loss is {loss.item()} at epoch {epoch + 1}, step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item()
        n_samples += x.shape[0]
        bar.set_postfix(loss=f"{loss.item():.4g}")
    return total / training["steps_per_epoch"], n_samples, step


@torch.no_grad()
def validate(model, task, loader, params, device, world):
    """Mean loss over the first training.val_steps batches of every rank (summed over ranks)."""
    amp = params["training"]["amp"] and device.type == "cuda"
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=device)
    for i, batch in enumerate(loader):
        if i >= params["training"]["val_steps"]:
            break
        x, y, mask = task.unpack(batch, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            pred = model(x).float()
        sums += torch.stack([task_loss(pred, y, mask, task, params["training"]["loss"]).double(),
                             torch.ones((), dtype=torch.float64, device=device)])
    if world > 1:
        dist.all_reduce(sums)
    return (sums[0] / sums[1].clamp(min=1)).item()


@torch.no_grad()
def test(model, task, loader, params, device):
    """Scores of the model and of persistence (last input frame) on the whole test split, physical units.

    Returns {"lead_minutes", "thresholds", "methods": {"model": {...}, "persistence": {...}}} with
    per-lead lists: mse, mae, and csi/pod/far/hss per threshold (keys str(float(t))).
    """
    amp = params["training"]["amp"] and device.type == "cuda"
    model.eval()
    methods = ("model", "persistence")
    continuous = {m: metrics.ContinuousAccumulator(lead_axis=1) for m in methods}
    categorical = {m: metrics.ContingencyAccumulator(task.thresholds, lead_axis=1) for m in methods}
    for batch in tqdm(loader, desc="test", unit="batch", leave=False):
        x, y, mask = task.unpack(batch, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            pred = model(x).float()
        forecasts = {"model": task.to_physical(pred), "persistence": task.persistence(x)}  # physical units
        obs = task.to_physical(y)[:, :, 0].cpu().numpy()
        valid = mask[:, :, 0].cpu().numpy()
        for name in methods:
            if forecasts[name] is None:
                continue
            fc = forecasts[name].float()[:, :, 0].cpu().numpy()
            continuous[name].update(fc, obs, valid)
            categorical[name].update(fc, obs, valid)
    report = {"lead_minutes": task.lead_minutes, "thresholds": [float(t) for t in task.thresholds], "methods": {}}
    for name in methods:
        if continuous[name].sums is None:
            continue
        cont, cat = continuous[name].scores(), categorical[name].scores()
        scores = {"mse": np.atleast_1d(cont["mse"]).tolist(), "mae": np.atleast_1d(cont["mae"]).tolist()}
        for score in ("csi", "pod", "far", "hss", "accuracy"):
            scores[score] = {str(float(t)): np.asarray(cat[score][i]).tolist() for i, t in enumerate(task.thresholds)}
        if task.pixel_area_km2:  # sea ice: integrated ice-edge error per forecast, km^2
            n_frames = len(loader.dataset)
            wrong = (cat["misses"][0] + cat["false_alarms"][0]) * task.pixel_area_km2 / max(n_frames, 1)
            scores["iiee_km2"] = np.asarray(wrong, dtype=float).tolist()
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


# --------------------------------------------------------------------------- main
def parse_args(argv):
    parser = argparse.ArgumentParser(description="\n\n".join(__doc__.split("\n\n")[:3]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    config.add_config_arg(parser)
    parser.add_argument("--resume", action="store_true", help="continue from <paths.checkpoints>/last.pt")
    parser.add_argument("--epochs", type=int, help="total epochs (default: training.epochs in params.json)")
    parser.add_argument("--batch_size", type=int, help="samples per step and rank (default: training.batch_size in params.json)")
    parser.add_argument("--lr", type=float, help="AdamW learning rate (default: training.lr in params.json)")
    parser.add_argument("--steps_per_epoch", type=int, help="training steps per epoch (default: training.steps_per_epoch in params.json)")
    parser.add_argument("--val_steps", type=int, help="validation batches per epoch (default: training.val_steps in params.json)")
    parser.add_argument("--seed", type=int, help="random seed (default: training.seed in params.json)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="auto: CUDA when present (default: training.device in params.json)")
    parser.add_argument("--num_workers", type=int, help="DataLoader workers (default: training.num_workers in params.json)")
    parser.add_argument("--task", choices=("nowcast", "sea_ice"), help="what to train on (default: task in params.json)")
    parser.add_argument("--model", help="convlstm_unet or encoder_forecaster (default: model.name in params.json)")
    parser.add_argument("--compile", action="store_const", const=True, help="torch.compile the model (default: training.compile in params.json)")
    parser.add_argument("--skip_test", action="store_true", help="do not test the best model after training")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    params = config.load_params(args.config, {
        "training.epochs": args.epochs, "training.batch_size": args.batch_size, "training.lr": args.lr,
        "training.steps_per_epoch": args.steps_per_epoch, "training.val_steps": args.val_steps,
        "training.seed": args.seed, "training.device": args.device, "training.num_workers": args.num_workers,
        "task": args.task, "model.name": args.model, "training.compile": args.compile})
    training, paths = params["training"], params["paths"]

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(training["device"], local_rank)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)

    task = make_task(params)
    seed_everything(training["seed"])
    model = build_model(params, task.in_channels).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=training["lr"], weight_decay=training["weight_decay"])
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=training["lr_factor"],
                                                           patience=training["lr_patience"])
    ckpt_dir = paths["checkpoints"]
    last_path, best_path = os.path.join(ckpt_dir, "last.pt"), os.path.join(ckpt_dir, "best.pt")
    log_path = os.path.join(paths["outputs"], "train_log.csv")
    start_epoch, step, best_val = 0, 0, math.inf
    if args.resume:
        state = load_checkpoint(last_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, step, best_val = state["epoch"], state["step"], state["best_val"]
        if rank == 0:
            print(f"resumed from {last_path}: {start_epoch} epochs done, step {step}, best val loss {best_val:.4g}")
    log_rows = read_log(log_path, start_epoch) if args.resume else []

    net = model
    if training["compile"]:
        net = torch.compile(net)
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[local_rank] if device.type == "cuda" else None)

    samplers = [DistributedSampler(d, num_replicas=world, rank=rank, shuffle=(i < 2), seed=training["seed"],
                                   drop_last=(i == 0 and len(d) >= world * training["batch_size"]))
                for i, d in enumerate(task.datasets)]
    for i, d in enumerate(task.datasets):
        if len(d) == 0:
            raise UserError(f"the {('train', 'val', 'test')[i]} split has no sample")
    loaders = [DataLoader(d, batch_size=training["batch_size"], sampler=s, num_workers=training["num_workers"],
                          collate_fn=task.collate, pin_memory=device.type == "cuda",
                          persistent_workers=False)
               for d, s in zip(task.datasets, samplers)]
    samplers[1].set_epoch(0)  # one fixed mixed validation subset
    if rank == 0:
        print(f"{params['task']}: {type(model).__name__} ({count_parameters(model):,} parameters) on {device}"
              f"{f' x {world} ranks' if world > 1 else ''}; samples train/val/test "
              f"{', '.join(str(len(d)) for d in task.datasets)}")

    try:
        for epoch in range(start_epoch, training["epochs"]):
            seed_everything(training["seed"] * 1000003 + epoch)
            task.set_epoch(epoch)
            started = time.time()
            train_loss, n_samples, step = train_epoch(net, task, loaders[0], samplers[0], optimizer, params,
                                                      epoch, step, device, rank)
            val_loss = validate(net, task, loaders[1], params, device, world)
            if not math.isfinite(val_loss):
                raise Diverged(f"validation loss is {val_loss} at epoch {epoch + 1}, step {step}")
            scheduler.step(val_loss)
            seconds = time.time() - started
            improved = val_loss < best_val
            best_val = min(best_val, val_loss)
            if rank == 0:
                state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "step": step,
                         "rng": rng_states(), "params": params, "stats": task.stats, "best_val": best_val,
                         "val_loss": val_loss, "in_channels": task.in_channels}
                save_checkpoint(last_path, state)
                if improved:
                    save_checkpoint(best_path, state)
                log_rows.append({"epoch": epoch + 1, "train_loss": f"{train_loss:.6g}", "val_loss": f"{val_loss:.6g}",
                                 "lr": f"{optimizer.param_groups[0]['lr']:.6g}", "seconds": f"{seconds:.2f}",
                                 "samples_per_s": f"{n_samples * world / seconds:.2f}"})
                os.makedirs(paths["outputs"], exist_ok=True)
                write_log(log_path, log_rows)
                print(f"epoch {epoch + 1}/{training['epochs']}: train {train_loss:.4g}  val {val_loss:.4g}  "
                      f"lr {optimizer.param_groups[0]['lr']:.3g}  {seconds:.1f} s  "
                      f"{n_samples * world / seconds:.1f} samples/s{'  (best)' if improved else ''}")
    except Diverged as exc:
        kept = f"; the last good checkpoint is {last_path}" if os.path.exists(last_path) else \
            "; no checkpoint was written"
        print(f"error: training stopped: {exc}{kept} (lower training.lr?)", file=sys.stderr)
        return 1
    finally:
        if world > 1:
            dist.barrier()

    if rank == 0 and not args.skip_test:
        if not os.path.exists(best_path):
            raise UserError(f"{best_path}: no best checkpoint to test")
        model.load_state_dict(load_checkpoint(best_path, device)["model"])
        report = test(model, task, loaders[2], params, device)
        out = os.path.join(paths["outputs"], "test_metrics.json")
        with open(out + ".tmp", "w") as fh:
            json.dump(report, fh, indent=1)
        os.replace(out + ".tmp", out)
        print_test_report(report, "mm/h" if params["task"] == "nowcast" else "fraction")
        print(f"training: {training['epochs'] - start_epoch} epochs -> {best_path}, {last_path}, {log_path}, {out}")
    if world > 1:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    config.run_main(main)
