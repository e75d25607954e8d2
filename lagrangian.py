"""Differentiable semi-Lagrangian advection in torch, and motion-consistent augmentation.

The scheme is the one of `baselines.advect` (backward semi-Lagrangian, midpoint rule, one time
step at a time along curved trajectories of a stationary motion field, bilinear interpolation;
pysteps.extrapolation.semilagrangian with n_iter=1, interp_order=1), written with
`torch.nn.functional.grid_sample` so that gradients flow through it (LUPIN, Pavlik et al. 2024,
arXiv 2402.10747) and a batch of fields moves at once. It serves the Lagrangian ConvLSTM U-Net
(model.py; L-CNN, Ritvanen et al. 2023, IEEE JSTARS 16): the input frames are moved to the last
input time, the network predicts growth and decay there, and the result is advected to each lead.

    steps = trajectories(motion, n_steps)          # departure points after 1 .. n_steps steps
    moved = sample(field, steps[k - 1])            # field advected by k steps (fill 0 outside)
    inside = steps[k - 1].inside                   # False where the trajectory left the domain
    smoothed = smooth(fields, gaussian_kernels(variance, radius))   # one Gaussian width per channel

Shapes: motion (B, 2, H, W) in pixels per step, [:, 0] along x (columns), [:, 1] along y (rows),
the content at x moves to x + v in one step (baselines.motion_field's layout); fields (B, C, H, W).
"""
import math
from collections import namedtuple

import numpy as np
import torch
import torch.nn.functional as F

Departure = namedtuple("Departure", "grid inside")  # grid (B, H, W, 2) for grid_sample; inside (B, 1, H, W) bool


def _grid(x, y):
    """Pixel coordinates x, y (B, H, W) -> grid_sample's normalised grid (B, H, W, 2), align_corners=True."""
    height, width = x.shape[-2:]
    return torch.stack([2.0 * x / max(width - 1, 1) - 1.0, 2.0 * y / max(height - 1, 1) - 1.0], dim=-1)


def _sample_clamped(image, x, y):
    """Bilinear samples of image (B, C, H, W) at pixel coordinates (B, H, W), edges clamped
    (scipy's map_coordinates mode="nearest", as baselines._sample)."""
    return F.grid_sample(image, _grid(x, y), mode="bilinear", padding_mode="border", align_corners=True)


def trajectories(motion, n_steps):
    """Departure points of every pixel after 1 .. n_steps backward steps along a stationary motion.

    motion: (B, 2, H, W) pixels per step. Returns a list of n_steps Departure(grid, inside): entry
    k - 1 holds where the content that reaches each pixel after k steps came from, as a grid for
    `sample`, and whether that point lies inside the domain. Each step uses the midpoint rule:
    the velocity half a step back along the trajectory (baselines.advect, the same arithmetic).
    """
    batch, _, height, width = motion.shape
    yy, xx = torch.meshgrid(torch.arange(height, dtype=motion.dtype, device=motion.device),
                            torch.arange(width, dtype=motion.dtype, device=motion.device), indexing="ij")
    xx, yy = xx.expand(batch, -1, -1), yy.expand(batch, -1, -1)
    displacement = torch.zeros_like(motion)
    increment = motion
    out = []
    for _ in range(n_steps):
        increment = _sample_clamped(motion, xx + displacement[:, 0] - increment[:, 0] / 2.0,
                                    yy + displacement[:, 1] - increment[:, 1] / 2.0)
        displacement = displacement - increment
        x, y = xx + displacement[:, 0], yy + displacement[:, 1]
        increment = _sample_clamped(motion, x, y)
        inside = (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)
        out.append(Departure(_grid(x, y), inside[:, None]))
    return out


def sample(field, departure, fill_value=0.0):
    """The field (B, C, H, W) advected to the departure points: bilinear, `fill_value` outside."""
    moved = F.grid_sample(field, departure.grid, mode="bilinear", padding_mode="border", align_corners=True)
    return torch.where(departure.inside, moved, torch.as_tensor(fill_value, dtype=moved.dtype, device=moved.device))


def advect(field, motion, leads, fill_value=0.0):
    """Semi-Lagrangian forecast of field (B, C, H, W) at each lead (steps): (B, len(leads), C, H, W).

    The torch twin of baselines.advect for fields without NaN (fill_value where the trajectory
    leaves the domain).
    """
    steps = trajectories(motion, max(leads))
    return torch.stack([sample(field, steps[lead - 1], fill_value) for lead in leads], dim=1)


# --------------------------------------------------------------------------- augmentation
def rotate_flip(fields, motion, quarter_turns, flip):
    """Turn fields and their motion vectors together (numpy): an optional left-right flip, then
    `quarter_turns` x 90 degrees as numpy.rot90 on the last two axes.

    fields: (..., H, W); motion: (2, H, W) pixels per step ([0] = x, [1] = y) or None.
    Returns new (fields, motion). A field advected by a motion and then turned equals the turned
    field advected by the turned motion (tests/test_lagrangian.py).
    """
    if flip:  # x -> W - 1 - x: the x component changes sign
        fields = fields[..., ::-1]
        motion = None if motion is None else np.stack([-motion[0, :, ::-1], motion[1, :, ::-1]])
    fields = np.rot90(fields, quarter_turns, axes=(-2, -1))
    if motion is not None:
        for _ in range(quarter_turns % 4):  # one turn: (row, col) -> (W - 1 - col, row): (vx, vy) -> (vy, -vx)
            motion = np.rot90(np.stack([motion[1], -motion[0]]), 1, axes=(-2, -1))
        motion = np.ascontiguousarray(motion)
    return np.ascontiguousarray(fields), motion


# --------------------------------------------------------------------------- smoothing
def gaussian_kernels(variance, radius):
    """Discrete Gaussian kernels (T, 2 * radius + 1) for variances (T,) in pixels^2, differentiable.

    The discrete analogue of the Gaussian, T(n, v) = exp(-v) I_n(v) (Lindeberg 1990, IEEE PAMI 12,
    "Scale-space for discrete signals", eq. 19): the solution of the discrete diffusion equation after
    time v. It sums to 1, has variance v, is the identity at v = 0, and its derivative in v is
    nonzero there (a sampled Gaussian has none of the last three), so a learned width can start at
    "no smoothing". Computed from its Fourier transform exp(-v (1 - cos w)) on 8 x radius points,
    cut at +-radius and renormalised (its variance within 1e-3 of v for sqrt(v) <= radius / 4).
    """
    n = torch.arange(-radius, radius + 1, dtype=variance.dtype, device=variance.device)
    size = 8 * max(radius, 1)
    omega = 2.0 * math.pi * torch.arange(size, dtype=variance.dtype, device=variance.device) / size
    spectrum = torch.exp(-variance[:, None] * (1.0 - torch.cos(omega)))          # (T, size)
    kernels = spectrum @ torch.cos(omega[:, None] * n[None]) / size               # (T, 2 radius + 1)
    return kernels / kernels.sum(dim=1, keepdim=True)


def smooth(field, kernels):
    """Each channel of field (B, T, H, W) convolved with its kernel (T, K) along y and x (separable),
    edges extended with their nearest values (scipy.ndimage's mode="nearest"). Away from the edges
    the sum of the field (the rain mass) is kept."""
    radius, channels = kernels.shape[1] // 2, field.shape[1]
    kernels = kernels.to(field.dtype)
    padded = F.pad(field, (radius, radius, radius, radius), mode="replicate")
    along_y = F.conv2d(padded, kernels[:, None, :, None], groups=channels)
    return F.conv2d(along_y, kernels[:, None, None, :], groups=channels)
