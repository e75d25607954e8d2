"""Train and evaluate a super-resolution network with or without a conservation constraint (seed 003).

    python downscaling.py --dataset rr4 --model cnn --model_id rr4_cnn_softmax --constraints softmax
    python downscaling.py --dataset rr4 --model gan --model_id rr4_gan_soft --constraints soft \\
        --loss mass_constraints --alpha 0.99
    python downscaling.py --training_evalonly evalonly --dataset rr4 --model cnn --model_id rr4_cnn_softmax \\
        --constraints softmax
    python downscaling.py --experiments all      # the seed's table 4 (E1-E12) + the temporal pair T1

Flags are the seed code's (Harder et al. 2023, RolnickLab/constrained-downscaling, main.py); the
defaults are the `downscaling` section of params.json. Data: <data_dir>/<dataset>.zarr from
make_downscaling_data.py (LR = block means of HR crops). LR and HR are scaled to [0, 1] with the
min/max of the training HR crops, as the seed does (the same affine map for both, so a block
mean conserved in [0, 1] units is conserved in mm/h).

Training (training.py's machinery: AdamW, ReduceLROnPlateau on the validation loss, best.pt /
last.pt written atomically, --resume, NaN stop, CUDA/bf16 when present, tqdm, train_log.csv) goes
to <outputs>/<model_id>/. Loss: MSE in [0, 1] units; with --loss mass_constraints (implied by
--constraints soft) alpha * MSE(agg(y), x) + (1 - alpha) * MSE(y, hr), the seed's soft constraint,
where x = agg(hr) exactly because the LR data are block means of the HR data. The GAN adds a
discriminator (BCE) and weighs its adversarial loss by adv_factor beside the MSE content loss.
--cpu_budget S stops before an epoch that would pass S CPU seconds (process time, at the mean cost of
the epochs so far; the first epoch always runs).

Evaluation (also after training, with best.pt): the scores of metrics.DownscalingAccumulator in
physical units over the whole eval split (downscaling.eval_split, default test = the held-out
event), the GAN's from an ensemble of ensemble_members draws (its mean for the deterministic
scores, CRPS from the members), and the same for the baselines bicubic and nearest (each also
with the add correction) -> <outputs>/<model_id>/scores_<split>.json and .csv, and a panel figure
LR | HR | bicubic | model | difference for the rainiest crops.

--experiments all|E1,E4,...: makes the missing datasets (rr2, rr4, rr8, rr4t3), trains each
experiment for experiment_budget CPU seconds, evaluates it, and writes the seed's tables 6 and 7
(with the baselines) to <outputs>/experiments.csv and .md, plus none-vs-constrained panels.
"""
import argparse
import copy
import csv
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
import zarr
from torch.utils.data import DataLoader, Dataset

import config
import downscaling_models as dm
import metrics
import plotting
import training
from atomic import atomic_path
from config import UserError
from normalization import denormalize, normalize

SPLITS = ("train", "val", "test")
BASELINES = ("bicubic", "bicubic+add", "nearest", "nearest+add")
EXPERIMENTS = {  # id: (dataset, model, constraints) -- the seed's table 4 and its temporal pair
    "E1": ("rr2", "cnn", "none"), "E2": ("rr2", "cnn", "softmax"),
    "E3": ("rr4", "cnn", "none"), "E4": ("rr4", "cnn", "softmax"),
    "E5": ("rr4", "convgru", "none"), "E6": ("rr4", "convgru", "softmax"), "E7": ("rr4", "convgru", "soft"),
    "E8": ("rr4", "gan", "none"), "E9": ("rr4", "gan", "soft"), "E10": ("rr4", "gan", "softmax"),
    "E11": ("rr8", "gan", "none"), "E12": ("rr8", "gan", "softmax"),
    "T1a": ("rr4t3", "flowconvgru", "none"), "T1b": ("rr4t3", "flowconvgru", "softmax"),
}
PANEL_PAIRS = (("E1", "E2"), ("E3", "E4"), ("E5", "E6"), ("E8", "E10"), ("E11", "E12"), ("T1a", "T1b"))
EXPERIMENT_STEPS = 32  # --experiments: steps per epoch when downscaling.steps_per_epoch is 0 (budget granularity)
DATASETS = {"rr2": (2, 1), "rr4": (4, 1), "rr8": (8, 1), "rr4t3": (4, 3)}  # name: (factor, frames)
SCORE_COLUMNS = ("mse", "rmse", "psnr", "mae", "ssim", "ms_ssim", "corr", "bias", "mean_abs_bias",
                 "mass_violation", "max_rel_mass_violation", "neg_mean", "neg_num", "crps")


# --------------------------------------------------------------------------- data
def store_path(params, dataset):
    return os.path.join(params["downscaling"]["data_dir"], f"{dataset}.zarr")


def open_store(path):
    """The root group of a make_downscaling_data.py store; UserError naming the command when missing."""
    if not os.path.isdir(path):
        name = os.path.basename(path)[:-len(".zarr")]
        factor, frames = DATASETS.get(name, (4, 1))
        raise UserError(f"{path}: dataset not found (make it with: python make_downscaling_data.py --factor {factor}"
                        f"{f' --frames {frames}' if frames > 1 else ''}{f' --name {name}' if name not in DATASETS else ''})")
    try:
        root = zarr.open_group(path, mode="r")
        _ = root.attrs["factor"], root["train/hr"], root["train/lr"]
    except Exception as exc:
        raise UserError(f"{path}: not a make_downscaling_data.py store ({type(exc).__name__}: {exc})") from None
    return root


class DownscalingDataset(Dataset):
    """Samples of one split of a store: (lr, hr) float32 tensors (T, 1, h, w), (T, 1, H, W), scaled
    to [0, 1] by the training min/max (normalization.normalize, no transform). Reads one sample
    per item; the store is opened in each process on first use."""

    def __init__(self, path, split):
        self.path, self.split = path, split
        root = open_store(path)
        self.lo, self.hi = root.attrs["normalisation"]["min"], root.attrs["normalisation"]["max"]
        self.n = root[split]["hr"].shape[0]
        self._arrays = None

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if self._arrays is None:
            group = zarr.open_group(self.path, mode="r")[self.split]
            self._arrays = group["lr"], group["hr"]
        lr, hr = (normalize(a[i], self.lo, self.hi, "none") for a in self._arrays)
        return torch.from_numpy(lr), torch.from_numpy(hr)

    def __getstate__(self):
        return {**self.__dict__, "_arrays": None}


# --------------------------------------------------------------------------- the task for training.py
class DownscalingTask:
    """What training.py's loop needs to train a downscaling model (see training.fit).

    datasets: {"train", "val", "test"} DownscalingDataset; unpack -> (x (B, T, 1, h, w), y (B, T, 1,
    H, W), mask all True); loss: MSE [+ alpha mass term]; to_physical: [0, 1] -> mm/h (or fraction);
    train_step: the GAN's discriminator and generator updates (None for the other models).
    """
    name = "downscaling"  # training.fit's log prefix

    def __init__(self, params, path):
        down = params["downscaling"]
        root = open_store(path)
        self.factor, self.frames = int(root.attrs["factor"]), int(root.attrs["frames"])
        self.units = root.attrs["units"]
        self.datasets = {s: DownscalingDataset(path, s) for s in SPLITS}
        self.lo, self.hi = self.datasets["train"].lo, self.datasets["train"].hi
        self.collate, self.in_channels = None, 1
        self.alpha = down["alpha"] if (down["loss"] == "mass_constraints" or down["constraints"] == "soft") else 0.0
        self.stats = {"dataset": down["dataset"], "factor": self.factor, "frames": self.frames, "min": self.lo,
                      "max": self.hi, "units": self.units}
        self.discriminator = self.d_optimizer = None
        self.budget, self._epochs_run = None, 0
        if down["model"] == "gan":
            self.adv_factor = down["adv_factor"]
            self.discriminator = dm.Discriminator(number_channels=down["number_channels"])
            self.d_optimizer = torch.optim.AdamW(self.discriminator.parameters(), lr=down["lr"],
                                                 weight_decay=down["weight_decay"])
        else:
            self.train_step = None

    def unpack(self, batch, device):
        x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        return x, y, torch.ones_like(y, dtype=torch.bool)

    def loss(self, pred, y, mask=None):
        """(1 - alpha) MSE(pred, y) + alpha MSE(agg(pred), agg(y)); alpha = 0 without the soft constraint."""
        pred = pred.float()
        content = F.mse_loss(pred, y)
        if not self.alpha:
            return content
        return (1 - self.alpha) * content + self.alpha * dm.mass_penalty(pred, dm.aggregate(y, self.factor),
                                                                         self.factor)

    def to_physical(self, y):
        return denormalize(y, self.lo, self.hi, "none")

    def set_epoch(self, epoch):
        """Called by training.fit before each epoch: raises BudgetSpent when another epoch, at the mean CPU
        time of the epochs so far, would pass the budget (self.budget = (process time at the start,
        seconds) or None). The first epoch always runs."""
        if self.budget is not None:
            started, limit = self.budget
            spent = time.process_time() - started
            if self._epochs_run and spent * (self._epochs_run + 1) / self._epochs_run > limit:
                raise BudgetSpent(f"{spent:.0f} CPU s spent after {epoch} epochs; one more would pass the "
                                  f"budget of {limit:g} s")
            self._epochs_run += 1

    def train_step(self, model, batch, optimizer, device, amp):
        """GAN step (seed: gan_optimizer_step): discriminator on real vs generated HR (BCE), then the
        generator on content loss + adv_factor * BCE(D(G(x)), real). Returns (generator loss, samples)."""
        x, y, mask = self.unpack(batch, device)
        disc = self.discriminator.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            fake = model(x)
            real_logits, fake_logits = disc(y), disc(fake.detach())
        d_loss = F.binary_cross_entropy_with_logits(real_logits.float(), torch.ones_like(real_logits.float())) + \
            F.binary_cross_entropy_with_logits(fake_logits.float(), torch.zeros_like(fake_logits.float()))
        self.d_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        self.d_optimizer.step()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            adversarial = disc(fake).float()
        loss = self.loss(fake, y, mask) + self.adv_factor * F.binary_cross_entropy_with_logits(
            adversarial, torch.ones_like(adversarial))
        if not torch.isfinite(loss):
            raise training.Diverged(f"GAN generator loss is {loss.item()}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item(), x.shape[0]

    def extra_state(self):
        if self.discriminator is None:
            return {}
        return {"discriminator": self.discriminator.state_dict(), "d_optimizer": self.d_optimizer.state_dict()}

    def load_extra_state(self, state):
        if self.discriminator is not None and "discriminator" in state:
            self.discriminator.load_state_dict(state["discriminator"])
            self.d_optimizer.load_state_dict(state["d_optimizer"])


# --------------------------------------------------------------------------- models and runs
def model_id(down):
    return down["model_id"] or f"{down['dataset']}_{down['model']}_{down['constraints']}"


def build_model(down, stats):
    """The network of params["downscaling"] for a dataset described by `stats` (DownscalingTask.stats:
    factor, min, max, units)."""
    factor = stats["factor"]
    if down["upsampling_factor"] not in (None, factor):
        raise UserError(f"--upsampling_factor {down['upsampling_factor']}: dataset {down['dataset']} has factor {factor}")
    kind = down["input_transform"]
    if kind == "auto":
        kind = "log1p" if stats["units"] == "mm/h" else "none"
    return dm.get_model(down["model"], upsampling_factor=factor, constraints=down["constraints"],
                        number_channels=down["number_channels"],
                        number_residual_blocks=down["number_residual_blocks"],
                        input_transform=(kind, stats["min"], stats["max"]))


def run_params(params, task):
    """params for training.py: its `training` section filled from `downscaling`, paths -> the run folder."""
    down = params["downscaling"]
    run = copy.deepcopy(params)
    folder = os.path.join(down["outputs"], model_id(down))
    n_train, n_val = len(task.datasets["train"]), len(task.datasets["val"])
    run["training"].update(epochs=down["epochs"], batch_size=down["batch_size"], lr=down["lr"],
                           weight_decay=down["weight_decay"], seed=down["seed"], num_workers=0,
                           steps_per_epoch=down["steps_per_epoch"] or max(1, n_train // down["batch_size"]),
                           val_steps=math.ceil(n_val / down["batch_size"]))
    run["paths"].update(checkpoints=folder, outputs=folder)
    return config.validate(run)


class BudgetSpent(Exception):
    """The CPU budget is spent (raised by DownscalingTask.set_epoch before an epoch, never the first)."""


def train(params, task, model, run, resume=False):
    """Train with training.fit (checkpoints and train_log.csv in <outputs>/<model_id>/). With
    downscaling.cpu_budget > 0, stop before an epoch that would pass that much CPU time at the mean
    cost of the epochs so far (process time of this process; data loading runs in it, num_workers 0).
    Returns (best checkpoint path, epochs done, CPU seconds of this call)."""
    down, fit_params = params["downscaling"], run_params(params, task)
    start = time.process_time()
    task.budget, task._epochs_run = ((start, down["cpu_budget"]) if down["cpu_budget"] else None), 0
    try:
        training.fit(fit_params, task, model, run, resume_run=resume)
    except BudgetSpent as exc:
        print(f"stopped: {exc}")
    folder = fit_params["paths"]["checkpoints"]
    epochs = training.load_checkpoint(os.path.join(folder, "last.pt"))["epoch"]
    return os.path.join(folder, "best.pt"), epochs, time.process_time() - start


def load_run(params, device):
    """(model with best.pt's weights, checkpoint) of <outputs>/<model_id>; UserError when the checkpoint
    was trained with another model, constraint or dataset than asked."""
    down = params["downscaling"]
    path = os.path.join(down["outputs"], model_id(down), "best.pt")
    state = training.load_checkpoint(path, device)
    saved = state["params"]["downscaling"]
    for key in ("dataset", "model", "constraints", "number_channels", "number_residual_blocks", "input_transform"):
        if saved[key] != down[key]:
            raise UserError(f"{path}: trained with --{key} {saved[key]}, asked for --{key} {down[key]}")
    model = build_model(saved, state["stats"]).to(device)
    training.load_model_state(model, state["model"], path)
    return model, state


# --------------------------------------------------------------------------- evaluation
def _loader(task, split, batch_size):
    return DataLoader(task.datasets[split], batch_size=batch_size, shuffle=False, num_workers=0)


def data_range(path, split):
    """max - min of the HR fields of a split (physical units): L of PSNR/SSIM, as in the seed."""
    attrs = open_store(path)[split].attrs
    return float(attrs["hr_max"] - attrs["hr_min"])


@torch.no_grad()
def predict(model, x, members=1, seed=0):
    """(mean prediction, members or None): (B, T, 1, H, W); a GAN draws `members` noise fields from a
    generator seeded with `seed` (the same draws in every run)."""
    if not getattr(model, "noise", False):
        return model(x), None
    generator = torch.Generator(device=x.device).manual_seed(seed)
    draws = []
    for _ in range(members):
        noise = torch.randn((x.shape[0] * x.shape[1], 1, *x.shape[-2:]), generator=generator, device=x.device)
        draws.append(model(x, noise))
    draws = torch.stack(draws)
    return draws.mean(dim=0), draws


@torch.no_grad()
def evaluate(model, task, params, device, split=None, path=None):
    """Scores (metrics.DownscalingAccumulator) of `model` on a split, physical units. The LR that the
    scores compare against is the true LR of every frame (FlowConvGRU sees only the first and last)."""
    down = params["downscaling"]
    split = split or down["eval_split"]
    model.eval()
    accumulator = metrics.DownscalingAccumulator(task.factor, data_range(path or store_path(params, down["dataset"]), split))
    for b, batch in enumerate(_loader(task, split, down["batch_size"])):
        x, y, _ = task.unpack(batch, device)
        pred, draws = predict(model, x, down["ensemble_members"], down["seed"] * 100003 + b)
        ensemble = None if draws is None else task.to_physical(draws.float()).cpu().numpy()
        accumulator.update(task.to_physical(pred.float()).cpu().numpy(), task.to_physical(y).cpu().numpy(),
                           task.to_physical(x).cpu().numpy(), ensemble)
    return accumulator.scores()


def baseline(name, lr, factor):
    """bicubic (torch, a = -0.75, align_corners False) or nearest repeat of LR (..., h, w) -> (..., H, W);
    '+add' applies the add constraint layer (block means equal to LR)."""
    method = name.split("+")[0]
    flat = lr.reshape(-1, 1, *lr.shape[-2:]).float()
    out = F.interpolate(flat, scale_factor=factor, mode="bicubic", align_corners=False) if method == "bicubic" \
        else dm.repeat_blocks(flat, factor)
    if name.endswith("+add"):
        out = dm.apply_constraint("add", out, flat, factor)
    return out.reshape(*lr.shape[:-2], *out.shape[-2:])


def evaluate_baselines(task, params, split=None, path=None):
    """{name: scores} of the BASELINES on a split, from the LR in physical units."""
    down = params["downscaling"]
    split = split or down["eval_split"]
    width = data_range(path or store_path(params, down["dataset"]), split)
    accumulators = {name: metrics.DownscalingAccumulator(task.factor, width) for name in BASELINES}
    for batch in _loader(task, split, down["batch_size"]):
        lr, hr = task.to_physical(batch[0]), task.to_physical(batch[1]).numpy()
        for name, accumulator in accumulators.items():
            accumulator.update(baseline(name, lr, task.factor).numpy(), hr, lr.numpy())
    return {name: accumulator.scores() for name, accumulator in accumulators.items()}


def panel_crops(task, split, count):
    """`count` crop indices spread over the split: the rainiest (largest mean HR) of each of `count`
    consecutive groups of crops (the split is stored in event and time order)."""
    dataset = task.datasets[split]
    means = np.array([float(dataset[i][1].mean()) for i in range(len(dataset))])
    groups = np.array_split(np.arange(len(dataset)), min(count, len(dataset)))
    return [int(g[np.argmax(means[g])]) for g in groups if len(g)]


@torch.no_grad()
def panel_fields(models, task, indices, device, split, seed=0):
    """(lr (N, h, w), hr (N, H, W), {label: (N, H, W)}) in physical units for crops `indices` of a split;
    models: {label: network or baseline name}; a GAN shows one draw. Of 3-frame samples the middle
    frame is shown (the one FlowConvGRU interpolates)."""
    dataset = task.datasets[split]
    lr, hr = (torch.stack([dataset[i][k] for i in indices]) for k in (0, 1))
    frame = 1 if lr.shape[1] == 3 else -1
    out = {}
    for label, model in models.items():
        if isinstance(model, str):
            out[label] = baseline(model, task.to_physical(lr), task.factor)[:, frame, 0].numpy()
            continue
        model.eval()
        generator = torch.Generator().manual_seed(seed)
        x = lr.to(device)
        pred = model(x, torch.randn((x.shape[0] * x.shape[1], 1, *x.shape[-2:]), generator=generator).to(device)) \
            if getattr(model, "noise", False) else model(x)
        out[label] = task.to_physical(pred.float()).cpu()[:, frame, 0].numpy()
    return task.to_physical(lr)[:, frame, 0].numpy(), task.to_physical(hr)[:, frame, 0].numpy(), out


# --------------------------------------------------------------------------- outputs
def write_scores(folder, split, scores, params, extra):
    """<folder>/scores_<split>.json (everything) and .csv (key,value rows: settings then scores, as the seed)."""
    report = {"split": split, "settings": params["downscaling"], **extra, "scores": scores}
    path = os.path.join(folder, f"scores_{split}.json")
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        json.dump(report, fh, indent=1, default=float)
    with atomic_path(path[:-5] + ".csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        for key, value in [*params["downscaling"].items(), *extra.items(), *scores.items()]:
            writer.writerow([key, value])
    return path


def fmt(value, digits=4):
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(value)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}g}"


def markdown_table(rows, columns):
    """Markdown table of dict rows; columns: [(key, header)]."""
    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(k)) if not isinstance(row.get(k), str) else row[k]
                                for k, _ in columns) + " |" for row in rows]
    return "\n".join(lines)


TABLE_COLUMNS = [("id", "ID"), ("run", "run"), ("mse", "MSE"), ("rmse", "RMSE"), ("psnr", "PSNR"), ("mae", "MAE"),
                 ("ssim", "SSIM"), ("ms_ssim", "MS-SSIM"), ("corr", "r"), ("mass_violation", "mass viol."),
                 ("neg_num", "neg num"), ("crps", "CRPS"), ("epochs", "epochs"), ("cpu_s", "train CPU s"),
                 ("samples_per_s", "train samples/s")]


def write_tables(rows, out_dir, units, split):
    """<out_dir>/experiments.csv (every column) and experiments.md (table 6: spatial, table 7: temporal)."""
    keys = ["id", "run", "dataset", "model", "constraints", "loss", "epochs", "cpu_s", "samples_per_s", *SCORE_COLUMNS]
    with atomic_path(os.path.join(out_dir, "experiments.csv")) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    spatial = [r for r in rows if not r["dataset"].endswith("t3")]
    temporal = [r for r in rows if r["dataset"].endswith("t3")]
    text = (f"Scores on the {split} split in {units} (MSE in ({units})^2, PSNR in dB); baselines in the same table. "
            f"'mass viol.' = mean |block mean of the output - LR|; train CPU s = process time of training.\n\n"
            f"Table 6 (single frames)\n\n{markdown_table(spatial, TABLE_COLUMNS)}\n")
    if temporal:
        text += (f"\nTable 7 (3 frames, T1; flowconvgru sees the first and last LR frames only and constrains the "
                 f"middle frame to the LR it interpolates, so its mass violation there is against an LR it never "
                 f"saw; the baselines use all three LR frames)\n\n{markdown_table(temporal, TABLE_COLUMNS)}\n")
    with atomic_path(os.path.join(out_dir, "experiments.md")) as tmp, open(tmp, "w") as fh:
        fh.write(text)
    return os.path.join(out_dir, "experiments.md")


def samples_per_second(folder):
    """Mean training samples/s over the epochs of <folder>/train_log.csv (NaN without a log)."""
    path = os.path.join(folder, "train_log.csv")
    if not os.path.isfile(path):
        return float("nan")
    with open(path, newline="") as fh:
        values = [float(r["samples_per_s"]) for r in csv.DictReader(fh) if r.get("samples_per_s")]
    return float(np.mean(values)) if values else float("nan")


# --------------------------------------------------------------------------- one run
def run_one(params, run, evalonly=False, resume=False):
    """Train (unless evalonly) and evaluate the run of params["downscaling"]; returns a table row."""
    down = params["downscaling"]
    path = store_path(params, down["dataset"])
    task = DownscalingTask(params, path)
    folder = os.path.join(down["outputs"], model_id(down))
    summary_path = os.path.join(folder, "train_summary.json")
    if not evalonly:
        training.seed_everything(down["seed"])
        model = build_model(down, task.stats).to(run.device)
        _, epochs, cpu = train(params, task, model, run, resume)
        summary = {"epochs": epochs, "cpu_s": cpu + (_previous_cpu(summary_path) if resume else 0.0),
                   "samples_per_s": samples_per_second(folder)}
        with atomic_path(summary_path) as tmp, open(tmp, "w") as fh:
            json.dump(summary, fh)
    model, state = load_run(params, run.device)
    summary = json.load(open(summary_path)) if os.path.isfile(summary_path) else {"epochs": state["epoch"]}
    split = down["eval_split"]
    scores = evaluate(model, task, params, run.device, split, path)
    write_scores(folder, split, scores, params, {**summary, "best_epoch": state["epoch"], "dataset_source":
                                                 open_store(path).attrs["source"]})
    if down["panels"]:
        lr, hr, fields = panel_fields({"bicubic": "bicubic", model_id(down): model}, task,
                                      panel_crops(task, split, down["panels"]), run.device, split, down["seed"])
        plotting.plot_downscaling_panels(lr, hr, fields, os.path.join(folder, f"panels_{split}.png"), task.units,
                                         f"{model_id(down)} on {down['dataset']} ({split})")
    return {"id": "", "run": model_id(down), "dataset": down["dataset"], "model": down["model"],
            "constraints": down["constraints"], "loss": "mass_constraints" if task.alpha else "mse",
            **{k: summary.get(k) for k in ("epochs", "cpu_s", "samples_per_s")}, **scores}


def _previous_cpu(path):
    return json.load(open(path)).get("cpu_s", 0.0) if os.path.isfile(path) else 0.0


def baseline_rows(params, dataset):
    """Table rows of the BASELINES on a dataset's eval split."""
    path = store_path(params, dataset)
    task = DownscalingTask({**params, "downscaling": {**params["downscaling"], "dataset": dataset}}, path)
    scores = evaluate_baselines(task, params, params["downscaling"]["eval_split"], path)
    return [{"id": "", "run": f"{dataset} {name}", "dataset": dataset, "model": name, "constraints": "-",
             "loss": "-", **s} for name, s in scores.items()]


def print_row(row, units):
    print(f"{row['run']}: RMSE {fmt(row['rmse'])} {units}, PSNR {fmt(row['psnr'])} dB, SSIM {fmt(row['ssim'])}, "
          f"MS-SSIM {fmt(row['ms_ssim'])}, MAE {fmt(row['mae'])}, mass violation {fmt(row['mass_violation'])} "
          f"(max relative {fmt(row['max_rel_mass_violation'])}), neg num {row['neg_num']}, CRPS {fmt(row['crps'])}")


# --------------------------------------------------------------------------- --experiments
def experiment_ids(text):
    """The experiment ids of `all` or a comma list (E1..E12, T1a, T1b); UserError for an unknown id."""
    ids = list(EXPERIMENTS) if text == "all" else [t.strip() for t in text.split(",") if t.strip()]
    unknown = [i for i in ids if i not in EXPERIMENTS]
    if unknown or not ids:
        raise UserError(f"--experiments {text}: expected all or a comma list of {', '.join(EXPERIMENTS)}")
    return ids


def experiment_params(params, exp_id):
    down = params["downscaling"]
    dataset, model, constraints = EXPERIMENTS[exp_id]
    out = copy.deepcopy(params)
    out["downscaling"].update(dataset=dataset, model=model, constraints=constraints,
                              model_id=f"{exp_id}_{dataset}_{model}_{constraints}",
                              loss="mass_constraints" if constraints == "soft" else "mse",
                              cpu_budget=down["experiment_budget"], upsampling_factor=None,
                              steps_per_epoch=down["steps_per_epoch"] or EXPERIMENT_STEPS)
    return out


def make_missing_datasets(params, ids):
    """Build the stores the experiments need (rr2, rr4, rr8, rr4t3) when they are absent."""
    import make_downscaling_data
    for name in dict.fromkeys(EXPERIMENTS[i][0] for i in ids):
        if not os.path.isdir(store_path(params, name)):
            factor, frames = DATASETS[name]
            print(f"$ python make_downscaling_data.py --factor {factor} --frames {frames} --name {name}")
            path, _ = make_downscaling_data.make_dataset(params, factor=factor, frames=frames, name=name)
            print(f"  -> {path}")


def run_experiments(params, run, ids, evalonly=False):
    """Train/evaluate the experiments `ids`, baselines first for each dataset; tables and panels."""
    make_missing_datasets(params, ids)
    rows, seen, started = [], set(), time.time()
    for exp_id in ids:
        dataset = EXPERIMENTS[exp_id][0]
        if dataset not in seen:
            seen.add(dataset)
            rows += baseline_rows(params, dataset)
        print(f"\n== {exp_id}: {' '.join(EXPERIMENTS[exp_id])} "
              f"({params['downscaling']['experiment_budget']:g} CPU s budget)", flush=True)
        try:
            row = run_one(experiment_params(params, exp_id), run, evalonly)
        except training.Diverged as exc:
            print(f"{exp_id}: training stopped ({exc}); left out of the table")
            continue
        rows.append({**row, "id": exp_id})
        print_row(row, open_store(store_path(params, dataset)).attrs["units"])
    out_dir = params["downscaling"]["outputs"]
    units = open_store(store_path(params, EXPERIMENTS[ids[0]][0])).attrs["units"]
    table = write_tables(rows, out_dir, units, params["downscaling"]["eval_split"])
    panels = experiment_panels(params, run, ids)
    print(open(table).read())
    print(f"downscaling: {len(ids)} experiments in {(time.time() - started) / 60:.1f} min -> {table}, "
          f"{os.path.join(out_dir, 'experiments.csv')}{', ' + ', '.join(panels) if panels else ''}")


def experiment_panels(params, run, ids):
    """LR | HR | SR none | SR constrained | difference for each pair of PANEL_PAIRS that was run."""
    written = []
    split, count = params["downscaling"]["eval_split"], params["downscaling"]["panels"]
    for first, second in PANEL_PAIRS:
        if first not in ids or second not in ids or not count:
            continue
        pair = [experiment_params(params, i) for i in (first, second)]
        dataset = pair[0]["downscaling"]["dataset"]
        task = DownscalingTask(pair[0], store_path(params, dataset))
        models = {f"{i} {EXPERIMENTS[i][1]} {EXPERIMENTS[i][2]}": load_run(p, run.device)[0]
                  for i, p in zip((first, second), pair)}
        lr, hr, fields = panel_fields(models, task, panel_crops(task, split, count), run.device, split,
                                      params["downscaling"]["seed"])
        path = os.path.join(params["downscaling"]["outputs"], f"panels_{first}_{second}.png")
        plotting.plot_downscaling_panels(lr, hr, fields, path, task.units, f"{dataset}: {first} vs {second} ({split})")
        written.append(path)
    return written


# --------------------------------------------------------------------------- main
FLAGS = [("--dataset", "downscaling.dataset"), ("--model", "downscaling.model"),
         ("--model_id", "downscaling.model_id"), ("--constraints", "downscaling.constraints"),
         ("--loss", "downscaling.loss"), ("--alpha", "downscaling.alpha"), ("--adv_factor", "downscaling.adv_factor"),
         ("--epochs", "downscaling.epochs"), ("--steps_per_epoch", "downscaling.steps_per_epoch"), ("--lr", "downscaling.lr"), ("--weight_decay", "downscaling.weight_decay"),
         ("--batch_size", "downscaling.batch_size"), ("--number_residual_blocks", "downscaling.number_residual_blocks"),
         ("--number_channels", "downscaling.number_channels"),
         ("--upsampling_factor", "downscaling.upsampling_factor"), ("--cpu_budget", "downscaling.cpu_budget"),
         ("--ensemble_members", "downscaling.ensemble_members"), ("--test_val_train", "downscaling.eval_split"),
         ("--seed", "downscaling.seed"), ("--data_dir", "downscaling.data_dir", {"metavar": "DIR"}),
         ("--outputs", "downscaling.outputs", {"metavar": "DIR"}), ("--panels", "downscaling.panels"),
         ("--experiment_budget", "downscaling.experiment_budget"), ("--device", "training.device")]


def parse_args(argv):
    parser = argparse.ArgumentParser(description="\n\n".join(__doc__.split("\n\n")[:2]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    config.add_config_arg(parser)
    config.add_override_flags(parser, FLAGS)
    parser.add_argument("--training_evalonly", choices=("training", "evalonly"), default="training",
                        help="training: train, then evaluate best.pt; evalonly: evaluate <outputs>/<model_id>/best.pt "
                             "(default: training)")
    parser.add_argument("--resume", action="store_true", help="continue training from <outputs>/<model_id>/last.pt")
    parser.add_argument("--experiments", metavar="IDS",
                        help="all, or a comma list of E1..E12, T1a, T1b: run the seed's experiments and write the "
                             "tables (each trains for downscaling.experiment_budget CPU seconds)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    params = config.load_params(args.config, config.overrides_from(args))
    run = training.Run(params["training"]["device"])
    evalonly = args.training_evalonly == "evalonly"
    if args.experiments:
        run_experiments(params, run, experiment_ids(args.experiments), evalonly)
        return 0
    down = params["downscaling"]
    try:
        row = run_one(params, run, evalonly, args.resume)
    except training.Diverged as exc:
        print(f"error: training stopped: {exc} (lower --lr?)", file=sys.stderr)
        return 1
    units = open_store(store_path(params, down["dataset"])).attrs["units"]
    baselines = baseline_rows(params, down["dataset"])
    for r in [row, *baselines[:1]]:
        print_row(r, units)
    folder = os.path.join(down["outputs"], model_id(down))
    print(f"downscaling: {'evaluated' if evalonly else 'trained and evaluated'} {model_id(down)} on "
          f"{down['dataset']} ({down['eval_split']} split) -> {folder}/scores_{down['eval_split']}.json, .csv"
          f"{', panels_' + down['eval_split'] + '.png' if down['panels'] else ''}")
    return 0


if __name__ == "__main__":
    config.run_main(main)
