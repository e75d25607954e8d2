"""Super-resolution networks and conservation constraint layers for downscaling (seed 003).
No I/O in this file.

Harder et al. (2023), "Hard-Constrained Deep Learning for Climate Downscaling", JMLR 24,
arXiv 2208.05424 (code: RolnickLab/constrained-downscaling). Every model maps low-resolution
(LR) frames to high-resolution (HR) frames, f = upsampling factor (2, 4 or 8):

    x: (B, T, C, h, w) float32   normalised LR input (T = 1 for single frames)
    y: (B, T, C, f h, f w)       normalised HR prediction

    model = get_model("cnn", upsampling_factor=4, constraints="softmax")
    y = model(x)

Aggregation. The LR data are block means of the HR fields (make_downscaling_data.py), so the
constraint layers use the same operator: agg(y) = mean of every f x f block (the seed's
AvgPool2d; its report writes the block sum, which is the same constraint times n = f^2).
Normalisation is affine and shared by LR and HR ((v - min) / (max - min), train statistics), so
a block mean conserved in normalised units is conserved in physical units too (mm/h, fraction).

Constraint layers (Harder et al. 2023, sec. 3; applied to the network's last output y~,
for each LR pixel x and its n = f^2 HR pixels; always in float32, outside autocast):
    none      y = y~
    soft      y = y~ (no layer); the loss adds alpha * MSE(agg(y), x) (see `mass_penalty`)
    add       y = y~ + x - agg(y~)                                   (eq. AddCL)
    mult      y = s * x / agg(s), s = softplus(y~) + 1e-6            (eq. MultCL)
    softmax   y = exp(y~) / sum_block exp(y~) * (n x)                (eq. SmCL; y >= 0 for x >= 0)
    scadd     y = y~ + r (sigma + y~), r = d / (sigma + agg(y~)),    (the seed code's scaled add)
              d = x - agg(y~), sigma = -1 where d > 0, else +1
For add, mult, softmax and scadd, agg(y) = x to float precision for every input.
  * mult: the seed applies it to the raw output, whose block mean can be 0 (division by zero);
    here it scales the positive map softplus(y~) + 1e-6, so agg(s) > 0 always.
  * softmax: exp is taken after subtracting the block maximum (the same value, no overflow).
  * scadd: with x in [0, 1] (the training range) |r| <= 1, and the layer equals the seed's; where
    |d| > |sigma + agg(y~)| (x outside the training range) the plain additive correction is used
    instead, so the layer never divides by ~0 and stays exact.

Models (option names as the seed's flags):
    cnn          SR-CNN: 3x3 conv + ReLU, residual blocks at LR, log2(f) stride-2 transposed
                 convolutions, 3x3 conv + ReLU at HR, 1x1 conv, constraint layer. Each frame on
                 its own. (The seed's CNN upsamples before its residual blocks and its GAN
                 generator after them; here both are the same network with the blocks at LR,
                 f^2 times cheaper, which the CPU budgets need.)
    gan          the SR-CNN as generator with one extra input channel of N(0, 1) noise per LR
                 pixel (the seed maps a 100-d vector through a 32 x 32 transposed conv, which
                 ties it to one LR size); `Discriminator` judges HR fields.
    convgru      residual blocks per frame at LR, a ConvGRU over the T frames (initial state from
                 the first frame), then per frame log2(f) x (bilinear x2 + residual block) and a
                 3x3 conv; T = 1 works (single frame).
    flowconvgru  a small voxel-flow network (Liu et al. 2017, "Video Frame Synthesis using Deep
                 Voxel Flow") interpolates the middle LR frame from the first and last, then the
                 ConvGRU super-resolves the 3 frames; trained end to end.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from config import UserError

CONSTRAINTS = ("none", "soft", "add", "mult", "softmax", "scadd")
HARD_CONSTRAINTS = ("add", "mult", "softmax", "scadd")
MULT_FLOOR = 1e-6  # added to softplus in the mult layer: the block mean is > 0


# --------------------------------------------------------------------------- aggregation
def aggregate(y, factor):
    """Block mean: (..., H, W) -> (..., H / factor, W / factor). H, W must be multiples of factor."""
    *lead, height, width = y.shape
    if height % factor or width % factor:
        raise ValueError(f"field {height} x {width} is not a multiple of the factor {factor}")
    return y.reshape(*lead, height // factor, factor, width // factor, factor).mean(dim=(-3, -1))


def repeat_blocks(x, factor):
    """Nearest repeat of every LR pixel over its factor x factor block: (..., h, w) -> (..., h f, w f)."""
    return x.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def _block_max(y, factor):
    *lead, height, width = y.shape
    blocks = y.reshape(*lead, height // factor, factor, width // factor, factor)
    return repeat_blocks(blocks.amax(dim=(-3, -1)), factor)


def apply_constraint(name, y, x, factor):
    """The constraint layer `name` on the raw output y (..., H, W) given the LR input x (..., h, w).

    Returns float32 (..., H, W); for the hard constraints agg(result) = x to float precision.
    Runs in float32 with autocast off (bf16 would break the conservation). ValueError for an
    unknown name.
    """
    if name in ("none", "soft"):
        return y
    if name not in HARD_CONSTRAINTS:
        raise ValueError(f"unknown constraint {name!r}; expected one of {', '.join(CONSTRAINTS)}")
    with torch.autocast(y.device.type, enabled=False):
        y, x = y.float(), x.float()
        if name == "add":
            return y + repeat_blocks(x - aggregate(y, factor), factor)
        if name == "mult":
            s = F.softplus(y) + MULT_FLOOR
            return s * repeat_blocks(x / aggregate(s, factor), factor)
        if name == "softmax":
            e = torch.exp(y - _block_max(y, factor).detach())  # in (0, 1], the block max is 1
            return e * repeat_blocks(x / aggregate(e, factor), factor)
        return _scaled_add(y, x, factor)


def _scaled_add(y, x, factor):
    """The seed's ScAdd layer with a guard: plain add where |d| > |sigma + agg(y)| (see module doc)."""
    mean = aggregate(y, factor)
    d = x - mean
    sigma = torch.where(d > 0, -torch.ones_like(d), torch.ones_like(d))
    denominator = sigma + mean
    scaled = denominator.abs() >= d.abs()
    safe = torch.where(scaled & (denominator != 0), denominator, torch.ones_like(denominator))
    r = torch.where(scaled, d / safe, torch.zeros_like(d))
    plain = torch.where(scaled, torch.zeros_like(d), d)
    return y + repeat_blocks(r, factor) * (repeat_blocks(sigma, factor) + y) + repeat_blocks(plain, factor)


def mass_penalty(y, x, factor):
    """Soft constraint term MSE(agg(y), x) (the seed's mass_loss); y (..., H, W), x (..., h, w)."""
    return F.mse_loss(aggregate(y.float(), factor), x.float())


def check_factor(factor):
    """log2(factor) for a factor 2, 4, 8, ...; UserError otherwise."""
    steps = int(round(math.log2(factor))) if isinstance(factor, int) and factor >= 2 else -1
    if steps < 1 or 2 ** steps != factor:
        raise UserError(f"upsampling_factor: expected a power of two >= 2 (2, 4, 8), got {factor!r}")
    return steps


def check_constraint(name):
    if name not in CONSTRAINTS:
        raise UserError(f"constraints: expected one of {', '.join(CONSTRAINTS)}, got {name!r}")
    return name


class InputTransform(nn.Module):
    """What a network sees of its [0, 1] input x (the constraint layers always use x itself):
        none   x
        log1p  log1p(max(lo + x (hi - lo), 0)) / log1p(max(hi, 0) + 1e-12): the physical value
               (mm/h) on a log scale, 0..1 over the training range. Min/max scaling alone leaves
               most rain near 0 (a 91.8 mm/h maximum puts 1 mm/h at 0.011), which the first
               convolution barely sees; nowcasting normalises rain rate with log1p for the same reason.
    lo, hi: the physical min/max of the [0, 1] scaling (buffers, saved with the weights).
    """

    def __init__(self, kind="none", lo=0.0, hi=1.0):
        super().__init__()
        if kind not in ("none", "log1p"):
            raise UserError(f"input_transform: expected none or log1p, got {kind!r}")
        self.kind = kind
        self.register_buffer("lo", torch.tensor(float(lo)))
        self.register_buffer("hi", torch.tensor(float(hi)))

    def forward(self, x):
        if self.kind == "none":
            return x
        physical = (self.lo + x * (self.hi - self.lo)).clamp(min=0)
        return torch.log1p(physical) / torch.log1p(self.hi.clamp(min=0) + 1e-12)

    def extra_repr(self):
        return self.kind


# --------------------------------------------------------------------------- building blocks
def conv3x3(in_channels, out_channels):
    return nn.Conv2d(in_channels, out_channels, 3, padding=1)


class ResidualBlock(nn.Module):
    """x + conv(ReLU(conv(x))), then ReLU; (N, C, H, W) -> same."""

    def __init__(self, channels):
        super().__init__()
        self.conv1, self.conv2 = conv3x3(channels, channels), conv3x3(channels, channels)

    def forward(self, x):
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


def _frames(x):
    """(B, T, C, h, w) -> (B T, C, h, w) and a function that restores (B, T, ...)."""
    if x.ndim != 5:
        raise UserError(f"expected input of shape (B, T, C, h, w), got {tuple(x.shape)}")
    batch, steps = x.shape[:2]
    return x.flatten(0, 1), lambda y: y.reshape(batch, steps, *y.shape[1:])


# --------------------------------------------------------------------------- SR-CNN and SR-GAN
class SRCNN(nn.Module):
    """SR-CNN (and, with noise=True, the SR-GAN generator) of Harder et al. (2023), sec. 4.

    forward(x, noise=None): x (B, T, C, h, w) normalised LR -> (B, T, C, f h, f w); each frame on
    its own. noise: (B, T, 1, h, w) N(0, 1) for the generator; None draws it from torch's RNG.
    """

    def __init__(self, upsampling_factor=4, constraints="none", number_channels=32,
                 number_residual_blocks=4, in_channels=1, noise=False, input_transform=("none", 0.0, 1.0)):
        super().__init__()
        steps = check_factor(upsampling_factor)
        self.factor, self.constraints = upsampling_factor, check_constraint(constraints)
        self.noise, self.in_channels = noise, in_channels
        self.features = InputTransform(*input_transform)
        width = number_channels
        self.head = nn.Sequential(conv3x3(in_channels + int(noise), width), nn.ReLU())
        self.blocks = nn.Sequential(*[ResidualBlock(width) for _ in range(number_residual_blocks)])
        self.body = nn.Sequential(conv3x3(width, width), nn.ReLU())
        self.upsampling = nn.Sequential(*[layer for _ in range(steps) for layer in
                                          (nn.ConvTranspose2d(width, width, 2, stride=2), nn.ReLU())])
        self.tail = nn.Sequential(conv3x3(width, width), nn.ReLU(), nn.Conv2d(width, in_channels, 1))

    def forward(self, x, noise=None):
        frames, restore = _frames(x)
        inputs = self.features(frames)
        if self.noise:
            if noise is None:
                noise = torch.randn(frames.shape[0], 1, *frames.shape[-2:], device=x.device, dtype=x.dtype)
            inputs = torch.cat([inputs, noise.reshape(frames.shape[0], 1, *frames.shape[-2:])], dim=1)
        out = self.head(inputs)
        out = self.body(self.blocks(out))
        out = self.tail(self.upsampling(out))
        return restore(apply_constraint(self.constraints, out, frames, self.factor))


class Discriminator(nn.Module):
    """Convolutional discriminator on HR frames: (B, T, C, H, W) -> logits (B T, 1).

    3x3 convolutions with ReLU, five of stride 2, a 1x1 convolution and a global mean: the
    seed's layout with logits out (BCEWithLogits = sigmoid + BCE, numerically stable).
    """

    def __init__(self, in_channels=1, number_channels=32):
        super().__init__()
        widths = [number_channels, number_channels, 2 * number_channels, 2 * number_channels,
                  4 * number_channels, 4 * number_channels]
        layers, previous = [], in_channels
        for i, width in enumerate(widths):
            layers += [nn.Conv2d(previous, width, 3, stride=1 if i == 0 else 2, padding=1), nn.ReLU()]
            previous = width
        self.features = nn.Sequential(*layers)
        self.score = nn.Conv2d(previous, 1, 1)

    def forward(self, y):
        frames, _ = _frames(y)
        return self.score(self.features(frames)).mean(dim=(-2, -1))


# --------------------------------------------------------------------------- ConvGRU
class ConvGRU(nn.Module):
    """Convolutional GRU over time (Ballas et al. 2016 form, as the seed's GenGateGRU).

    z = sigmoid(W_z * [x, h]), r = sigmoid(W_r * [x, h]), o = W_o * [x, r h],
    h' = z h + (1 - z) tanh(o). forward(x (B, T, C, h, w), h0 (B, C, h, w)) -> (B, T, C, h, w).
    """

    def __init__(self, channels):
        super().__init__()
        self.gates = conv3x3(2 * channels, 2 * channels)
        self.candidate = conv3x3(2 * channels, channels)

    def forward(self, x, h):
        out = []
        for t in range(x.shape[1]):
            z, r = torch.sigmoid(self.gates(torch.cat([x[:, t], h], dim=1))).chunk(2, dim=1)
            o = self.candidate(torch.cat([x[:, t], r * h], dim=1))
            h = z * h + (1 - z) * torch.tanh(o)
            out.append(h)
        return torch.stack(out, dim=1)


class ConvGRUGenerator(nn.Module):
    """The seed's ConvGRUGeneratorDet: (B, T, C, h, w) -> (B, T, C, f h, f w), T >= 1."""

    def __init__(self, upsampling_factor=4, constraints="none", number_channels=32,
                 number_residual_blocks=3, in_channels=1, input_transform=("none", 0.0, 1.0)):
        super().__init__()
        steps = check_factor(upsampling_factor)
        self.factor, self.constraints, self.in_channels = upsampling_factor, check_constraint(constraints), in_channels
        self.features = InputTransform(*input_transform)
        width = number_channels
        self.initial = nn.Sequential(conv3x3(in_channels, width), ResidualBlock(width), ResidualBlock(width))
        self.encode = nn.Sequential(conv3x3(in_channels, width), nn.ReLU(),
                                    *[ResidualBlock(width) for _ in range(number_residual_blocks)])
        self.gru = ConvGRU(width)
        self.upsampling = nn.Sequential(ResidualBlock(width), *[layer for _ in range(steps) for layer in
                                        (nn.Upsample(scale_factor=2, mode="bilinear"), ResidualBlock(width))])
        self.out = conv3x3(width, in_channels)

    def forward(self, x):
        frames, restore = _frames(x)
        inputs = self.features(frames)
        hidden = self.gru(restore(self.encode(inputs)), self.initial(restore(inputs)[:, 0]))
        out = self.out(self.upsampling(hidden.flatten(0, 1)))
        return restore(apply_constraint(self.constraints, out, frames, self.factor))


# --------------------------------------------------------------------------- voxel flow
def warp(image, flow):
    """Bilinear backward warp: out[i, j] = image at (i + flow_y, j + flow_x), border clamped.

    image (N, 1, h, w), flow (N, 2, h, w) in pixels (x then y). Zero flow returns `image` exactly
    (the sample points are the integer pixel centres, the weights exactly 1 and 0).
    """
    n, _, height, width = image.shape
    rows = torch.arange(height, device=image.device, dtype=image.dtype).view(1, height, 1)
    cols = torch.arange(width, device=image.device, dtype=image.dtype).view(1, 1, width)
    px = (cols + flow[:, 0]).clamp(0, width - 1)
    py = (rows + flow[:, 1]).clamp(0, height - 1)
    x0, y0 = px.floor(), py.floor()
    wx, wy = px - x0, py - y0
    x0, y0 = x0.long(), y0.long()
    x1, y1 = (x0 + 1).clamp(max=width - 1), (y0 + 1).clamp(max=height - 1)
    flat = image.reshape(n, height * width)

    def at(yy, xx):
        return flat.gather(1, (yy * width + xx).reshape(n, -1)).reshape(n, height, width)

    top = at(y0, x0) * (1 - wx) + at(y0, x1) * wx
    bottom = at(y1, x0) * (1 - wx) + at(y1, x1) * wx
    return (top * (1 - wy) + bottom * wy).unsqueeze(1)


class VoxelFlow(nn.Module):
    """Middle frame between two LR frames (Liu et al. 2017, deep voxel flow), small U-Net.

    forward(first, last) with (N, 1, h, w) each -> (N, 1, h, w):
        flow = max_shift * tanh(g(first, last) - g(last, first))   (pixels, antisymmetric)
        m    = sigmoid(k(first, last))
        mid  = warp(last, +flow) + m * (warp(first, -flow) - warp(last, +flow))
    Swapping the frames reverses the flow, so two equal frames give zero flow and mid = the
    frame, exactly. The last layer starts at zero: the untrained network returns the mean of the
    two frames. h, w must be multiples of 4.
    """

    def __init__(self, number_channels=16, max_shift=4.0, input_transform=("none", 0.0, 1.0)):
        super().__init__()
        c = number_channels
        self.max_shift = max_shift
        self.features = InputTransform(*input_transform)
        self.down1 = nn.Sequential(conv3x3(2, c), nn.ReLU())
        self.down2 = nn.Sequential(conv3x3(c, 2 * c), nn.ReLU())
        self.bottom = nn.Sequential(conv3x3(2 * c, 2 * c), nn.ReLU())
        self.up2 = nn.Sequential(conv3x3(4 * c, c), nn.ReLU())
        self.up1 = nn.Sequential(conv3x3(2 * c, c), nn.ReLU(), nn.Conv2d(c, 3, 1))
        nn.init.zeros_(self.up1[-1].weight)  # start from zero flow and m = 0.5: the mean of the two frames
        nn.init.zeros_(self.up1[-1].bias)

    def _net(self, a, b):
        d1 = self.down1(torch.cat([self.features(a), self.features(b)], dim=1))
        d2 = self.down2(F.max_pool2d(d1, 2))
        u = F.interpolate(self.bottom(F.max_pool2d(d2, 2)), scale_factor=2, mode="bilinear")
        u = F.interpolate(self.up2(torch.cat([u, d2], dim=1)), scale_factor=2, mode="bilinear")
        return self.up1(torch.cat([u, d1], dim=1))

    def forward(self, first, last):
        forward, backward = self._net(first, last), self._net(last, first)
        flow = self.max_shift * torch.tanh(forward[:, :2] - backward[:, :2])
        blend = torch.sigmoid(forward[:, 2:])
        from_last = warp(last, flow)
        return from_last + blend * (warp(first, -flow) - from_last)


class FlowConvGRU(nn.Module):
    """Voxel-flow interpolation + ConvGRU super-resolution (the seed's TimeEndToEndModel).

    forward(x): x (B, T, 1, h, w), T = 2 or 3 (only the first and last frames are used; the middle
    LR frame is predicted) -> (B, 3, 1, f h, f w). The constraint of the middle frame uses the
    interpolated LR frame (`last_lr` keeps the (B, 3, 1, h, w) LR sequence of the latest call).
    """

    def __init__(self, upsampling_factor=4, constraints="none", number_channels=32,
                 number_residual_blocks=3, in_channels=1, input_transform=("none", 0.0, 1.0)):
        super().__init__()
        if in_channels != 1:
            raise UserError(f"flowconvgru: expected one channel, got in_channels={in_channels}")
        self.factor, self.constraints = upsampling_factor, constraints
        self.interpolation = VoxelFlow(input_transform=input_transform)
        self.super_resolution = ConvGRUGenerator(upsampling_factor, constraints, number_channels,
                                                 number_residual_blocks, 1, input_transform)
        self.last_lr = None

    def interpolate(self, first, last):
        """Middle LR frame (N, 1, h, w) between `first` and `last` (N, 1, h, w)."""
        return self.interpolation(first, last)

    def forward(self, x):
        if x.ndim != 5 or x.shape[1] not in (2, 3):
            raise UserError(f"flowconvgru: expected input (B, 2 or 3, 1, h, w), got {tuple(x.shape)}")
        first, last = x[:, 0], x[:, -1]
        lr = torch.stack([first, self.interpolate(first, last), last], dim=1)
        self.last_lr = lr
        return self.super_resolution(lr)


# --------------------------------------------------------------------------- registry
MODELS = {"cnn": SRCNN, "gan": SRCNN, "convgru": ConvGRUGenerator, "flowconvgru": FlowConvGRU}


def get_model(name, upsampling_factor=4, constraints="none", number_channels=32, number_residual_blocks=4,
              in_channels=1, input_transform=("none", 0.0, 1.0)):
    """The downscaling model `name` (cnn, gan, convgru, flowconvgru); UserError for an unknown name.

    input_transform: (kind, lo, hi) of InputTransform, what the network sees of its input.
    """
    if name not in MODELS:
        raise UserError(f"model: expected one of {', '.join(MODELS)}, got {name!r}")
    kwargs = dict(upsampling_factor=upsampling_factor, constraints=constraints, number_channels=number_channels,
                  number_residual_blocks=number_residual_blocks, in_channels=in_channels,
                  input_transform=tuple(input_transform))
    if name == "gan":
        kwargs["noise"] = True
    return MODELS[name](**kwargs)
