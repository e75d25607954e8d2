"""Self-supervised masked pretraining of the spark_unet encoder-decoder (seed 004, SpaT-SparK).

    python pretrain.py [--config params.json] [--model resnet18] [--in_channels 12] [--bs 16] [--mask 0.3]
                       [--mask_mode spatial|spatiotemporal] [--ep 10] [--wp_ep 1] [--base_lr 2e-4]
                       [--weight_decay 0.05] [--norm_eps 4e-4] [--exp_name NAME] [--resume]
    python training.py --init_weight <paths.checkpoints>/NAME/best.pt --freeze no      # then fine-tune

Masked image modelling in the manner of SparK (Tian et al., ICLR 2023), on windows of consecutive
radar frames stacked as channels (Li, Siebes and Mehrkanoon 2024, arXiv:2412.15917):
- Data: every valid frame of the training cases (<paths.processed_data>/train/*.zarr, inputs only,
  no target needed): windows of in_channels / C consecutive valid steps (C = channels of
  data.inputs), data.patch_size crops (a multiple of 32), rainy crops preferred as in dataset.py.
  The val split's stores are the held-out frames scored every epoch (centre crops, fixed masks).
- Masking: the crop is cut into 32 x 32-pixel patches (the encoder's coarsest stride); in every
  sample exactly round(n_patches x (1 - mask)) patches stay visible (at least one), the others are
  masked. --mask_mode spatial masks the same patches in every frame; spatiotemporal draws them
  independently per frame (and counts `mask` per frame).
- Encoder: sees only the visible patches: masked pixels are 0, and every feature map is re-masked
  after every convolution and pooling with batch-norm statistics from visible positions only (an
  emulation of sparse convolution, model.ResNetEncoder). A position visible in any frame is
  encoded (spatiotemporal masking leaves the other frames' pixels there at 0).
- Decoder: masked positions of every scale are filled with a learned mask token (densify), and the
  light U-Net decoder reconstructs all frames (model.SparKUNet.reconstruct).
- Loss (`masked_patch_loss`): on masked (frame, patch) pairs only, mean squared error against the
  target normalised per patch: (x - mean) / sqrt(var + norm_eps), mean and variance over the 32 x 32
  values of each channel of that frame's patch (per channel, unlike SparK's joint RGB patches:
  radar and NWP fields have unrelated scales). norm_eps (pretraining.norm_eps, default 4e-4 =
  0.02^2 in normalised units) is larger than SparK's 1e-6: with 1e-6 a patch with a few pixels of
  trace rain (0.1 mm/h is 0.02 after log1p and a 90 mm/h maximum) becomes a unit-variance target
  of pure noise; on the real radar events such patches made 59 % of the held-out loss (RESULTS.md).
  Predicting any constant per patch and channel scores the "constant level" = the mean over masked
  patch-channels of var / (var + norm_eps) (0 for a dry patch, near 1 for a rainy one): the log
  reports it beside the held-out loss, as the level to beat (predicting the visible mean, or any
  other constant, can only score worse), and the level of `temporal_interpolation` (the mean of the
  nearest visible frames before and after; the constant level with the spatial mask), a harder
  reference that learns nothing.
- Optimiser: AdamW, lr = base_lr x bs / 256, linear warm-up over wp_ep epochs then cosine decay to
  0 (per step), weight decay `weight_decay`.
Outputs: <paths.checkpoints>/<exp_name>/last.pt (every epoch; --resume continues from it, bit for
bit on the CPU: each epoch reseeds from (training.seed, epoch)) and best.pt (lowest held-out
loss), both loadable by training.py --init_weight; <paths.outputs>/<exp_name>/pretrain_log.csv
and reconstruction.png (input, masked input, reconstruction of held-out windows).
"""
import argparse
import math
import os
import sys
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

import config
from config import UserError
from dataset import EpochKeys, FrameWindowDataset
from model import SparKUNet, count_parameters
from normalization import load_stats, target_input_frames
from training import (Diverged, check_same_run, load_checkpoint, load_model_state, pick_device, read_log, rng_states,
                      save_checkpoint, seed_everything, write_log)

STRIDE = SparKUNet.stride
VAL_MASK_SEED = 7919  # held-out masks: torch.Generator seeded by training.seed + this, the same every epoch
RUN_KEYS = ("model.spark_unet", "data.inputs", "data.transform", "data.patch_size", "pretraining.in_channels",
            "pretraining.bs", "pretraining.mask", "pretraining.mask_mode", "pretraining.ep", "pretraining.wp_ep",
            "pretraining.base_lr", "pretraining.weight_decay", "pretraining.norm_eps",
            "pretraining.steps_per_epoch")  # --resume checks these
LOG_COLUMNS = ("epoch", "train_loss", "val_loss", "val_constant_level", "val_interpolation_level", "lr", "seconds",
               "cpu_seconds", "samples_per_s")
FLAGS = (
    ("--model", "model.spark_unet.arch", {"type": lambda v: v.split("_chan")[0],
                                          "help": "encoder layout; the seed's resnet18_chan12 means resnet18"}),
    ("--in_channels", "pretraining.in_channels"), ("--bs", "pretraining.bs"), ("--mask", "pretraining.mask"),
    ("--mask_mode", "pretraining.mask_mode"), ("--ep", "pretraining.ep"), ("--wp_ep", "pretraining.wp_ep"),
    ("--base_lr", "pretraining.base_lr"), ("--weight_decay", "pretraining.weight_decay"),
    ("--exp_name", "pretraining.exp_name"), ("--steps_per_epoch", "pretraining.steps_per_epoch"),
    ("--val_steps", "pretraining.val_steps"), ("--norm_eps", "pretraining.norm_eps"),
    ("--densify_norm", "model.spark_unet.densify_norm"),
    ("--seed", "training.seed"), ("--device", "training.device"), ("--num_workers", "training.num_workers"),
)


# --------------------------------------------------------------------------- masking and loss
def random_visible(batch, frames, grid, ratio, mode="spatial", generator=None):
    """Random patch masks: (batch, frames, h, w) bool, True = visible.

    grid: (h, w) patches; ratio: fraction masked, 0 <= ratio < 1. In every sample (every frame of
    every sample for mode "spatiotemporal") exactly keep = max(1, round(h * w * (1 - ratio)))
    patches are visible, drawn uniformly without replacement (torch.rand + argsort, as SparK);
    "spatial" repeats one draw per sample through the frames. generator: a torch.Generator or None
    (the global RNG). ValueError for a bad ratio or mode.
    """
    if not 0 <= ratio < 1 or mode not in ("spatial", "spatiotemporal"):
        raise ValueError(f"random_visible: expected 0 <= ratio < 1 and mode spatial|spatiotemporal, "
                         f"got {ratio}, {mode!r}")
    h, w = grid
    keep = max(1, round(h * w * (1 - ratio)))
    draws = batch if mode == "spatial" else batch * frames
    order = torch.rand(draws, h * w, generator=generator).argsort(dim=1)[:, :keep]
    visible = torch.zeros(draws, h * w, dtype=torch.bool).scatter_(1, order, True)
    visible = visible.view(batch, -1, h, w)
    return visible.expand(batch, frames, h, w).contiguous()


def patchify(x, patch):
    """(B, T, C, H, W) -> (B, T, H / patch, W / patch, C * patch * patch): each frame's patches."""
    B, T, C, H, W = x.shape
    x = x.reshape(B, T, C, H // patch, patch, W // patch, patch).permute(0, 1, 3, 5, 2, 4, 6)
    return x.reshape(B, T, H // patch, W // patch, C * patch * patch)


def normalised_patches(x, patch, eps):
    """SparK's per-patch normalised targets, per channel: patchify(x), then (x - mean) / sqrt(var +
    eps) with the mean and (population) variance over the patch * patch values of each channel.
    x: (B, T, C, H, W). Returns (normalised (B, T, h, w, C * patch * patch), mean and std, both
    broadcastable to it)."""
    patches = patchify(x, patch)
    per_channel = patches.reshape(*patches.shape[:-1], x.shape[2], patch * patch)
    mean = per_channel.mean(-1, keepdim=True)
    std = torch.sqrt(per_channel.var(-1, keepdim=True, unbiased=False) + eps)
    expand = lambda v: v.expand_as(per_channel).reshape(patches.shape)  # noqa: E731
    return (patches - expand(mean)) / expand(std), expand(mean), expand(std)


def masked_patch_loss(reconstruction, target, visible, eps, patch=STRIDE):
    """Mean over masked (frame, patch) pairs of the mean squared error between the reconstruction
    and the target normalised per patch and channel with variance offset eps (SparK, Tian et al.
    2023, Sect. 3.4, with normalised patches as in MAE).

    reconstruction, target: (B, T, C, H, W); visible: (B, T, H / patch, W / patch) bool. Visible
    patches carry no weight whatever their values. 0 when nothing is masked.
    """
    normalised, _, _ = normalised_patches(target, patch, eps)
    per_patch = ((patchify(reconstruction, patch) - normalised) ** 2).mean(-1)   # (B, T, h, w)
    masked = (~visible).to(per_patch.dtype)
    return (per_patch * masked).sum() / masked.sum().clamp(min=1)


def temporal_interpolation(x, visible, patch=STRIDE):
    """A reference that learns nothing: every masked (frame, patch) gets the mean of the nearest
    visible frames before and after it at the same pixels (the one of them that exists at the ends
    of the window), 0 where the patch is masked in every frame (always with the spatial mask).

    x: (B, T, C, H, W); visible: (B, T, H / patch, W / patch) bool. Returns (B, T, C, H, W), equal
    to x at visible patches. Its loss (`reference_loss`) is the level that a network which only
    interpolates in time reaches with the spatio-temporal mask."""
    pixels, T = patch_pixels(visible, patch), x.shape[1]

    def last_seen(order):  # per frame: the value of the last frame visible before it in `order`, and whether any
        value, seen, found = torch.zeros_like(x[:, 0]), torch.zeros_like(pixels[:, 0]), [None] * T
        for t in order:
            found[t] = value, seen
            value, seen = torch.where(pixels[:, t], x[:, t], value), seen | pixels[:, t]
        return torch.stack([v for v, _ in found], 1), torch.stack([s for _, s in found], 1)

    (before, has_before), (after, has_after) = last_seen(range(T)), last_seen(reversed(range(T)))
    nearest = (before * has_before + after * has_after) / (has_before.to(x.dtype) + has_after).clamp(min=1)
    return torch.where(pixels, x, nearest)


def patch_pixels(visible, patch):
    """(B, T, h, w) patch flags -> (B, T, 1, h * patch, w * patch) pixel flags."""
    return visible.repeat_interleave(patch, -2).repeat_interleave(patch, -1)[:, :, None]


def reference_loss(reference, target, visible, eps, patch=STRIDE):
    """masked_patch_loss of a reference reconstruction in data units (e.g. `temporal_interpolation`),
    normalised per patch as the targets are (a network's output is already normalised)."""
    normalised = unpatchify(normalised_patches(reference, patch, eps)[0], reference.shape, patch)
    return masked_patch_loss(normalised, target, visible, eps, patch)


def unpatchify(patches, shape, patch):
    """Inverse of patchify: (B, T, h, w, C * patch * patch) -> shape (B, T, C, H, W)."""
    B, T, C, H, W = shape
    x = patches.reshape(B, T, H // patch, W // patch, C, patch, patch).permute(0, 1, 4, 2, 5, 3, 6)
    return x.reshape(shape)


def lr_at(step, total_steps, warmup_steps, peak):
    """Learning rate of step `step` (0-based): linear warm-up peak * (step + 1) / warmup_steps over
    the first warmup_steps steps, then cosine decay peak * (1 + cos(pi * progress)) / 2 reaching 0
    at total_steps."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


# --------------------------------------------------------------------------- setup
def parse_args(argv):
    parser = argparse.ArgumentParser(description="\n\n".join(__doc__.split("\n\n")[:2]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    config.add_config_arg(parser)
    config.add_override_flags(parser, FLAGS)
    config.add_protocol_arg(parser)
    parser.add_argument("--resume", action="store_true", help="continue from <paths.checkpoints>/<exp_name>/last.pt")
    return parser.parse_args(argv)


def frames_per_window(params, stats):
    """Frames T stacked per sample: pretraining.in_channels / C (C = channels of data.inputs)."""
    channels = len(stats["channels"])
    wanted = params["pretraining"]["in_channels"] or params["data"]["input_steps"] * channels
    if wanted % channels:
        raise UserError(f"pretraining.in_channels: {wanted} is not a multiple of the {channels} input channels "
                        f"{stats['channels']}")
    if params["data"]["patch_size"] % STRIDE:
        raise UserError(f"data.patch_size: pretraining needs a multiple of {STRIDE} (the encoder's stride), "
                        f"got {params['data']['patch_size']}")
    return wanted // channels


def build(params, stats, frames):
    """The pretraining network: model.spark_unet's options, reconstructing all frames, no translation."""
    cfg = dict(params["model"]["spark_unet"], transition="none")
    channels = len(stats["channels"])
    return SparKUNet(channels, frames * channels, frames, **cfg)


def make_loaders(params, frames):
    """Loaders of the training windows (`batches` sets their shuffle and crops per pass) and of the
    held-out windows (the val split's stores, centre crops, one fixed order). Loader workers persist
    between passes, so their chunk caches stay warm."""
    pre, processed = params["pretraining"], params["paths"]["processed_data"]
    workers = params["training"]["num_workers"]
    train = FrameWindowDataset(os.path.join(processed, "train"), params, frames, train=True)
    val = FrameWindowDataset(os.path.join(processed, "val"), params, frames, train=False)
    common = dict(batch_size=pre["bs"], num_workers=workers, persistent_workers=workers > 0)
    shuffle = EpochKeys(DistributedSampler(train, num_replicas=1, rank=0, shuffle=True, seed=0))
    val_order = np.random.default_rng(params["training"]["seed"]).permutation(len(val)).tolist()
    return (DataLoader(train, sampler=shuffle, drop_last=len(train) >= pre["bs"], **common),
            DataLoader(val, sampler=val_order, **common))


def batches(loader, params, epoch):
    """Training batches without end: pass p of epoch e is shuffled, and its crops and turns drawn, with
    the key seed * 1000003 + e * 100003 + p (a window drawn twice in an epoch gets two crops)."""
    for p in range(10 ** 9):
        loader.sampler.set_epoch(params["training"]["seed"] * 1000003 + epoch * 100003 + p)
        for batch in loader:
            yield batch["x"]


# --------------------------------------------------------------------------- train / validate
def train_epoch(model, loader, optimizer, params, epoch, step, device):
    """One epoch of pretraining.steps_per_epoch steps. Returns (mean loss, samples, new step)."""
    pre = params["pretraining"]
    amp = params["training"]["amp"] and device.type == "cuda"
    total_steps = pre["ep"] * pre["steps_per_epoch"]
    peak = pre["base_lr"] * pre["bs"] / 256
    model.train()
    total, n_samples, source = 0.0, 0, batches(loader, params, epoch)
    bar = tqdm(range(pre["steps_per_epoch"]), desc=f"pretrain epoch {epoch + 1}/{pre['ep']}", unit="step", leave=False)
    for _ in bar:
        x = next(source).to(device)
        B, T, _, H, W = x.shape
        visible = random_visible(B, T, (H // STRIDE, W // STRIDE), pre["mask"], pre["mask_mode"]).to(device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total_steps, pre["wp_ep"] * pre["steps_per_epoch"], peak)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            reconstruction = model.reconstruct(x, visible)
        loss = masked_patch_loss(reconstruction.float(), x, visible, pre["norm_eps"])
        step += 1
        if not torch.isfinite(loss):
            raise Diverged(f"loss is {loss.item()} at epoch {epoch + 1}, step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item()
        n_samples += B
        bar.set_postfix(loss=f"{loss.item():.4g}")
    return total / pre["steps_per_epoch"], n_samples, step


@torch.no_grad()
def validate(model, loader, params, device):
    """(held-out loss, constant level, temporal interpolation level) over the first
    pretraining.val_steps batches, fixed masks."""
    model.eval()
    generator = torch.Generator().manual_seed(params["training"]["seed"] + VAL_MASK_SEED)
    eps, sums = params["pretraining"]["norm_eps"], np.zeros(4)
    for i, batch in enumerate(loader):
        if i >= params["pretraining"]["val_steps"]:
            break
        x = batch["x"].to(device)
        B, T, _, H, W = x.shape
        visible = random_visible(B, T, (H // STRIDE, W // STRIDE), params["pretraining"]["mask"],
                                 params["pretraining"]["mask_mode"], generator).to(device)
        n = float((~visible).sum())
        sums += [masked_patch_loss(model.reconstruct(x, visible).float(), x, visible, eps).item() * n,
                 masked_patch_loss(torch.zeros_like(x), x, visible, eps).item() * n,
                 reference_loss(temporal_interpolation(x, visible), x, visible, eps).item() * n, n]
    return tuple(sums[:3] / max(sums[3], 1))


# --------------------------------------------------------------------------- panels, log, main
@torch.no_grad()
def reconstruction_panels(model, loader, params, stats, device, out_path, n_samples=3):
    """PNG of the rainiest held-out windows (most input among the first val_steps batches): last input
    frame, the same with its masked patches, reconstruction.

    The reconstruction shows the input at visible patches and, at masked ones, the model's output
    un-normalised with the true patch mean and std (SparK's visualisation: the loss ignores a
    patch's mean and scale, so only the structure inside a masked patch is the model's)."""
    import plotting
    model.eval()
    windows = [b["x"] for _, b in zip(range(params["pretraining"]["val_steps"]), loader)]
    windows = torch.cat(windows)
    x = windows[windows[:, -1].mean(dim=(1, 2, 3)).argsort(descending=True)[:n_samples]].to(device)
    B, T, C, H, W = x.shape
    generator = torch.Generator().manual_seed(params["training"]["seed"] + VAL_MASK_SEED)
    visible = random_visible(B, T, (H // STRIDE, W // STRIDE), params["pretraining"]["mask"],
                             params["pretraining"]["mask_mode"], generator).to(device)
    rec = model.reconstruct(x, visible).float()
    _, mean, std = normalised_patches(x, STRIDE, params["pretraining"]["norm_eps"])
    filled = unpatchify(patchify(rec, STRIDE) * std + mean, x.shape, STRIDE)
    pixels = patch_pixels(visible, STRIDE)
    shown = torch.where(pixels, x, filled)
    inputs, recon = target_input_frames(x[:, -1:], stats), target_input_frames(shown[:, -1:], stats)
    units = "mm/h"
    if inputs is None:  # the target is no input: show channel 0, normalised
        inputs, recon, units = x[:, -1:, 0], shown[:, -1:, 0], "normalised"
    mode = params["pretraining"]["mask_mode"]
    return plotting.plot_reconstruction(
        inputs[:, 0].cpu().numpy(), pixels[:, -1, 0].cpu().numpy(), recon[:, 0].cpu().numpy(), out_path, units=units,
        title=f"Masked pretraining: last of {T} frames, {params['pretraining']['mask']:g} of the patches masked ({mode})")


def run_epochs(model, optimizer, train_loader, val_loader, params, stats, device, files, start):
    """The epoch loop; checkpoints and log rows written after every epoch. Returns the last epoch run."""
    pre, seed = params["pretraining"], params["training"]["seed"]
    last_path, best_path, log_path = files
    epoch, step, best_val, rows = start
    for epoch in range(epoch, pre["ep"]):
        seed_everything(seed * 1000003 + epoch)
        wall, cpu = time.time(), time.process_time()
        train_loss, n_samples, step = train_epoch(model, train_loader, optimizer, params, epoch, step, device)
        val_loss, level, interpolation = validate(model, val_loader, params, device)
        seconds, cpu_seconds = time.time() - wall, time.process_time() - cpu
        improved = val_loss < best_val
        best_val = min(best_val, val_loss)
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                 "step": step, "rng": rng_states(), "params": params, "stats": stats, "best_val": best_val,
                 "val_loss": val_loss, "in_channels": len(stats["channels"]), "input_steps": model.input_steps,
                 "kind": "spark_pretraining"}
        save_checkpoint(last_path, state)
        if improved:
            save_checkpoint(best_path, state)
        rows.append({"epoch": epoch + 1, "train_loss": f"{train_loss:.6g}", "val_loss": f"{val_loss:.6g}",
                     "val_constant_level": f"{level:.6g}", "val_interpolation_level": f"{interpolation:.6g}",
                     "lr": f"{optimizer.param_groups[0]['lr']:.6g}",
                     "seconds": f"{seconds:.2f}", "cpu_seconds": f"{cpu_seconds:.2f}",
                     "samples_per_s": f"{n_samples / seconds:.2f}"})
        write_log(log_path, rows, LOG_COLUMNS)
        print(f"epoch {epoch + 1}/{pre['ep']}: train {train_loss:.4g}  held-out {val_loss:.4g} (constant level "
              f"{level:.4g}, temporal interpolation {interpolation:.4g})  lr {optimizer.param_groups[0]['lr']:.3g}  "
              f"{seconds:.1f} s, {cpu_seconds:.1f} CPU s  {n_samples / seconds:.1f} samples/s{'  (best)' if improved else ''}")
    return epoch


def main(argv=None):
    args = parse_args(argv)
    params = config.load_params(args.config, config.overrides_from(args))
    pre, paths = params["pretraining"], params["paths"]
    stats = load_stats(paths["processed_data"])
    frames = frames_per_window(params, stats)
    device = pick_device(params["training"]["device"])
    seed_everything(params["training"]["seed"])
    model = build(params, stats, frames).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0, weight_decay=pre["weight_decay"])
    ckpt_dir, out_dir = (config.ensure_folder(os.path.join(paths[k], pre["exp_name"]), f"paths.{k}")
                         for k in ("checkpoints", "outputs"))
    last_path, best_path = os.path.join(ckpt_dir, "last.pt"), os.path.join(ckpt_dir, "best.pt")
    log_path = os.path.join(out_dir, "pretrain_log.csv")
    start = (0, 0, math.inf, [])
    if args.resume:
        state = load_checkpoint(last_path)
        if state.get("kind") != "spark_pretraining":
            raise UserError(f"{last_path}: not a pretrain.py checkpoint")
        check_same_run(last_path, state["params"], params, RUN_KEYS)
        load_model_state(model, state["model"], last_path)
        optimizer.load_state_dict(state["optimizer"])
        start = (state["epoch"], state["step"], state["best_val"], read_log(log_path, state["epoch"]))
        print(f"resumed from {last_path}: {state['epoch']} epochs done, step {state['step']}")
    train_loader, val_loader = make_loaders(params, frames)
    print(f"pretrain: SparKUNet {pre_summary(params, frames, stats)} ({count_parameters(model):,} parameters) on "
          f"{device}; windows train/held-out {len(train_loader.dataset)}/{len(val_loader.dataset)}")
    try:
        run_epochs(model, optimizer, train_loader, val_loader, params, stats, device,
                   (last_path, best_path, log_path), start)
    except Diverged as exc:
        print(f"error: pretraining stopped: {exc} (lower --base_lr?)", file=sys.stderr)
        return 1
    load_model_state(model, load_checkpoint(best_path, device)["model"], best_path)
    png = reconstruction_panels(model, val_loader, params, stats, device, os.path.join(out_dir, "reconstruction.png"))
    print(f"pretrain: {pre['ep'] - start[0]} epochs -> {best_path}, {last_path}, {log_path}, {png}")
    return 0


def pre_summary(params, frames, stats):
    pre = params["pretraining"]
    return (f"{params['model']['spark_unet']['arch']}, {frames} frames x {len(stats['channels'])} channels, "
            f"mask {pre['mask']:g} {pre['mask_mode']}, bs {pre['bs']}, lr {pre['base_lr'] * pre['bs'] / 256:.3g}")


if __name__ == "__main__":
    config.run_main(main)
