"""The networks: a ConvLSTM cell, a ConvLSTM stack, the encoding-forecasting model of
Shi et al. (2015) and the ConvLSTM U-Net of seed 000. No I/O in this file.

Every model takes a sequence of frames and returns a sequence of predicted frames:

    x: (B, T_in, C, H, W) float32   (normalised inputs: radar rain rate and NWP fields)
    y: (B, T_out, 1, H, W) float32  (the normalised target, T_out = output_steps)

    model = get_model("convlstm_unet", in_channels=4, output_steps=1, base_channels=16)
    model = build_model(params, in_channels=4)  # reads params["model"] and the output length

The cell follows Shi et al. (2015), "Convolutional LSTM Network", eq. (3) (seed 002):

    i_t = sigma(W_xi * X_t + W_hi * H_{t-1} + W_ci o C_{t-1} + b_i)
    f_t = sigma(W_xf * X_t + W_hf * H_{t-1} + W_cf o C_{t-1} + b_f)
    C_t = f_t o C_{t-1} + i_t o tanh(W_xc * X_t + W_hc * H_{t-1} + b_c)
    o_t = sigma(W_xo * X_t + W_ho * H_{t-1} + W_co o C_t + b_o)
    H_t = o_t o tanh(C_t)

with `*` a convolution and `o` the Hadamard product. The eight convolutions are computed as ONE
convolution of concat[X_t, H_{t-1}] giving 4 * hidden channels, split in the order (i, f, c, o).

Peephole weights W_c. (on by default, `peephole=False` drops them) need a choice, because a
per-pixel weight ties the model to one frame size:
  - `peephole_size=None` (default): one weight per channel, shared by all pixels, shape
    (hidden, 1, 1). The model stays fully convolutional: train on 128 x 128 crops, predict on
    any H x W.
  - `peephole_size=(H, W)`: one weight per channel AND pixel, shape (hidden, H, W), as in the
    paper. The model then accepts frames of exactly H x W pixels (a clear error otherwise); the
    U-Net derives each scale's size from it. Use it for a fixed grid (the sea-ice ROI).
"""
import inspect
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from lagrangian import gaussian_kernels, sample, smooth, trajectories
from config import UserError  # only for get_model/build_model: errors in params.json values
from normalization import denormalize, normalize_tensor, target_channel



def _pair(size, what):
    """(H, W) from None, an int or a 2-sequence of positive ints; ValueError otherwise."""
    if size is None:
        return None
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    size = tuple(size)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size):
        raise ValueError(f"{what}: expected null or [H, W] with two positive ints, got {list(size)}")
    return size


# --------------------------------------------------------------------------- the cell
class ConvLSTMCell(nn.Module):
    """One ConvLSTM step, Shi et al. (2015) eq. (3), with the gate convolutions fused.

    in_channels: channels of X_t (0: the cell has no input, as the paper's forecaster).
    hidden_channels: channels of H_t and C_t.
    kernel_size: side of the square kernel of the input-to-state and state-to-state
        convolutions ("same" padding: H_t has the size of X_t).
    bias: learn b_i, b_f, b_c, b_o (the forget-gate bias starts at 1).
    peephole: add the W_c. o C terms.
    peephole_size: None for per-channel peephole weights (any frame size), (H, W) for
        per-channel-and-pixel weights (frames of exactly H x W pixels).

    forward(x, state) -> (h, c):
        x: (B, in_channels, H, W) or None when in_channels == 0
        state: (h, c), each (B, hidden, H, W); None starts from zeros
        h, c: (B, hidden, H, W)
    """

    def __init__(self, in_channels, hidden_channels, kernel_size=3, bias=True, peephole=True,
                 peephole_size=None):
        super().__init__()
        if in_channels < 0 or hidden_channels < 1 or kernel_size < 1:
            raise ValueError(f"ConvLSTMCell: expected in_channels >= 0, hidden_channels >= 1, "
                             f"kernel_size >= 1, got {in_channels}, {hidden_channels}, {kernel_size}")
        self.in_channels, self.hidden_channels, self.kernel_size = in_channels, hidden_channels, kernel_size
        self.peephole_size = _pair(peephole_size, "peephole_size") if peephole else None
        # One convolution for the 4 gates x (input-to-state, state-to-state): output (i, f, c, o).
        self.conv = nn.Conv2d(in_channels + hidden_channels, 4 * hidden_channels, kernel_size,
                              padding="same", bias=bias)
        if bias:
            with torch.no_grad():
                self.conv.bias[hidden_channels:2 * hidden_channels].fill_(1.0)  # remember by default
        if peephole:
            shape = (hidden_channels, *(self.peephole_size or (1, 1)))
            self.w_ci = nn.Parameter(torch.zeros(shape))
            self.w_cf = nn.Parameter(torch.zeros(shape))
            self.w_co = nn.Parameter(torch.zeros(shape))
        else:
            self.register_parameter("w_ci", None)
            self.register_parameter("w_cf", None)
            self.register_parameter("w_co", None)

    @property
    def peephole(self):
        return self.w_ci is not None

    def init_state(self, batch, height, width, like):
        """Zero (h, c), each (batch, hidden, height, width), with the dtype/device of `like`."""
        zeros = like.new_zeros(batch, self.hidden_channels, height, width)
        return zeros, zeros.clone()

    def forward(self, x, state=None):
        if x is None:
            if self.in_channels != 0 or state is None:
                raise ValueError("ConvLSTMCell: x may be None only for a cell with in_channels=0 "
                                 "given a state")
            h, c = state
            gates = self.conv(h)
        else:
            if x.ndim != 4 or x.shape[1] != self.in_channels:
                raise ValueError(f"ConvLSTMCell: expected x of shape (B, {self.in_channels}, H, W), "
                                 f"got {tuple(x.shape)}")
            h, c = state if state is not None else self.init_state(x.shape[0], x.shape[2], x.shape[3], x)
            gates = self.conv(torch.cat([x, h], dim=1))
        if self.peephole_size is not None and tuple(c.shape[-2:]) != self.peephole_size:
            raise ValueError(f"ConvLSTMCell: per-pixel peephole weights are {self.peephole_size[0]} x "
                             f"{self.peephole_size[1]} pixels, got a frame of {c.shape[-2]} x {c.shape[-1]}")
        i, f, g, o = torch.chunk(gates, 4, dim=1)
        if self.peephole:
            i = i + self.w_ci * c
            f = f + self.w_cf * c
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        if self.peephole:
            o = o + self.w_co * c
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c

    def extra_repr(self):
        kind = "off" if not self.peephole else \
            ("per channel" if self.peephole_size is None else f"per channel and pixel {self.peephole_size}")
        return f"in={self.in_channels}, hidden={self.hidden_channels}, kernel={self.kernel_size}, peephole={kind}"


# --------------------------------------------------------------------------- a stack over a sequence
class ConvLSTM(nn.Module):
    """Stacked ConvLSTM cells run over a sequence; layer l's hidden sequence feeds layer l+1.

    in_channels: C of the input sequence.
    hidden_channels: list, hidden channels of each layer (an int: one layer).
    kernel_size, bias, peephole, peephole_size: as in ConvLSTMCell, for every layer.

    forward(x, states=None) -> (outputs, last_states):
        x: (B, T, C, H, W)
        states: list of (h, c) per layer, each (B, hidden_l, H, W); None: zeros
        outputs: list per layer of the hidden sequences, (B, T, hidden_l, H, W)
        last_states: list per layer of (h_T, c_T), each (B, hidden_l, H, W)
    """

    def __init__(self, in_channels, hidden_channels, kernel_size=3, bias=True, peephole=True,
                 peephole_size=None):
        super().__init__()
        hidden_channels = [hidden_channels] if isinstance(hidden_channels, int) else list(hidden_channels)
        if not hidden_channels:
            raise ValueError("ConvLSTM: hidden_channels must list at least one layer")
        self.in_channels, self.hidden_channels = in_channels, hidden_channels
        inputs = [in_channels] + hidden_channels[:-1]
        self.cells = nn.ModuleList(ConvLSTMCell(c_in, c_hid, kernel_size, bias, peephole, peephole_size)
                                   for c_in, c_hid in zip(inputs, hidden_channels))

    def forward(self, x, states=None):
        if x.ndim != 5 or x.shape[2] != self.in_channels:
            raise ValueError(f"ConvLSTM: expected input of shape (B, T, {self.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        states = list(states) if states is not None else [None] * len(self.cells)
        outputs, last_states = [], []
        layer_input = x
        for cell, state in zip(self.cells, states):
            hs = []
            for t in range(layer_input.shape[1]):
                state = cell(layer_input[:, t], state)
                hs.append(state[0])
            layer_input = torch.stack(hs, dim=1)
            outputs.append(layer_input)
            last_states.append(state)
        return outputs, last_states


# --------------------------------------------------------------------------- Shi et al. (2015)
class EncoderForecaster(nn.Module):
    """The encoding-forecasting network of Shi et al. (2015), full resolution.

    The encoder (a ConvLSTM stack) reads the T_in input frames. The forecaster is a stack of the
    same shape whose layer l starts from the encoder's last (h, c) of layer l ("copy"); its first
    layer has no input (as in the paper) and layer l > 0 reads layer l-1's hidden state. It is
    unrolled `output_steps` times; each predicted frame is a 1x1 convolution over the concatenated
    hidden states of all forecaster layers.

    in_channels: C of the inputs; hidden_channels: list per layer; kernel_size, peephole,
    peephole_size: as in ConvLSTMCell.
    forward(x) -> y: x (B, T_in, C, H, W) float32 -> y (B, output_steps, 1, H, W)
    """

    def __init__(self, in_channels, output_steps, hidden_channels=(32, 32), kernel_size=3, peephole=True,
                 peephole_size=None):
        super().__init__()
        if output_steps < 1:
            raise ValueError(f"EncoderForecaster: output_steps must be >= 1, got {output_steps}")
        hidden_channels = list(hidden_channels)
        self.in_channels, self.output_steps = in_channels, output_steps
        self.peephole_size = _pair(peephole_size, "peephole_size") if peephole else None
        self.encoder = ConvLSTM(in_channels, hidden_channels, kernel_size, True, peephole, self.peephole_size)
        inputs = [0] + hidden_channels[:-1]
        self.forecaster = nn.ModuleList(
            ConvLSTMCell(c_in, c_hid, kernel_size, True, peephole, self.peephole_size)
            for c_in, c_hid in zip(inputs, hidden_channels))
        self.head = nn.Conv2d(sum(hidden_channels), 1, kernel_size=1)

    def forward(self, x):
        _check_input(x, self.in_channels, self.peephole_size, "EncoderForecaster")
        _, states = self.encoder(x)
        frames = []
        for _ in range(self.output_steps):
            layer_input, new_states = None, []
            for cell, state in zip(self.forecaster, states):
                state = cell(layer_input, state)
                new_states.append(state)
                layer_input = state[0]
            states = new_states
            frames.append(self.head(torch.cat([h for h, _ in states], dim=1)))
        return torch.stack(frames, dim=1)


# --------------------------------------------------------------------------- seed 000
def _conv_block(in_channels, out_channels):
    """Two 3x3 convolutions, each followed by GroupNorm and ReLU: (B, in, H, W) -> (B, out, H, W)."""
    def norm(ch):
        return nn.GroupNorm(math.gcd(8, ch), ch)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), norm(out_channels), nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), norm(out_channels), nn.ReLU(inplace=True))


def _transposed(in_channels, out_channels):
    """x2 upsampling by a 2x2 stride-2 transposed convolution (PyTorch's default initialisation)."""
    return nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)


def _transposed_icnr(in_channels, out_channels):
    """The transposed convolution with ICNR initialisation: its 4 kernel positions start equal, so
    at initialisation it is a 1x1 convolution followed by nearest-neighbour upsampling."""
    layer = _transposed(in_channels, out_channels)
    with torch.no_grad():
        layer.weight.copy_(layer.weight[:, :, :1, :1].expand_as(layer.weight))
    return layer


def _bilinear(in_channels, out_channels):
    """x2 upsampling by bilinear interpolation, then a 3x3 convolution (no checkerboard by design)."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                         nn.Conv2d(in_channels, out_channels, 3, padding=1))


UPSAMPLERS = {"transposed": _transposed, "transposed_icnr": _transposed_icnr, "bilinear": _bilinear}


class ConvLSTM_UNet(nn.Module):
    """U-Net whose encoder blocks are ConvLSTMs (seed 000).

    Scale l (0 .. depth-1) has base_channels * 2**l channels at H/2**l x W/2**l pixels. Its
    ConvLSTM reads the whole sequence: the input frames at scale 0, the previous scale's hidden
    sequence max-pooled 2x2 frame by frame below. The time dimension ends there: each scale hands
    its LAST hidden state to the decoder. The decoder starts from the deepest one and, scale by
    scale, upsamples x2 (`upsample`: "transposed", a 2x2 stride-2 transposed convolution;
    "transposed_icnr", the same initialised as nearest-neighbour upsampling (ICNR, Aitken et al.
    2017, arXiv 1707.02937), which starts without a checkerboard; "bilinear", bilinear x2 then a
    3x3 convolution (Odena et al. 2016, Distill, "Deconvolution and checkerboard artifacts")),
    concatenates the skip and applies two 3x3 conv-GroupNorm-ReLU layers; a 1x1 head gives the
    output_steps frames.

    Any H, W: frames are zero-padded at the bottom and right to a multiple of 2**(depth-1) and
    the prediction is cropped back. With per-pixel peepholes (peephole_size=(H, W), the input
    frame size) each scale's weights are sized from the padded frame.

    forward(x) -> y: x (B, T_in, C, H, W) float32 -> y (B, output_steps, 1, H, W)
    """

    def __init__(self, in_channels, output_steps, base_channels=16, depth=3, kernel_size=3, peephole=True,
                 peephole_size=None, upsample="transposed"):
        super().__init__()
        if upsample not in UPSAMPLERS:
            raise ValueError(f"ConvLSTM_UNet: upsample must be one of {', '.join(UPSAMPLERS)}, got {upsample!r}")
        if depth < 1 or base_channels < 1 or output_steps < 1:
            raise ValueError(f"ConvLSTM_UNet: expected depth, base_channels and output_steps >= 1, "
                             f"got {depth}, {base_channels}, {output_steps}")
        self.in_channels, self.output_steps, self.depth = in_channels, output_steps, depth
        self.multiple = 2 ** (depth - 1)
        self.peephole_size = _pair(peephole_size, "peephole_size") if peephole else None
        padded = None if self.peephole_size is None else \
            tuple(-(-s // self.multiple) * self.multiple for s in self.peephole_size)
        channels = [base_channels * 2 ** level for level in range(depth)]
        self.encoders = nn.ModuleList(
            ConvLSTM(c_in, c_out, kernel_size, True, peephole,
                     None if padded is None else (padded[0] >> level, padded[1] >> level))
            for level, (c_in, c_out) in enumerate(zip([in_channels] + channels[:-1], channels)))
        self.upsample = nn.ModuleList(UPSAMPLERS[upsample](channels[level + 1], channels[level])
                                      for level in range(depth - 1))
        self.decoders = nn.ModuleList(_conv_block(2 * channels[level], channels[level]) for level in range(depth - 1))
        self.head = nn.Conv2d(channels[0], output_steps, kernel_size=1)

    def forward(self, x):
        _check_input(x, self.in_channels, self.peephole_size, "ConvLSTM_UNet")
        B, T, C, H, W = x.shape
        pad_h, pad_w = -H % self.multiple, -W % self.multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))  # zeros at the bottom and right of each frame
        skips, sequence = [], x
        for level, encoder in enumerate(self.encoders):
            if level > 0:
                b, t, c, h, w = sequence.shape
                sequence = F.max_pool2d(sequence.reshape(b * t, c, h, w), 2).reshape(b, t, c, h // 2, w // 2)
            outputs, _ = encoder(sequence)
            sequence = outputs[-1]                 # (B, T, C_l, H_l, W_l)
            skips.append(sequence[:, -1])          # last hidden state (B, C_l, H_l, W_l)
        y = skips[-1]
        for level in reversed(range(self.depth - 1)):
            y = self.upsample[level](y)
            y = self.decoders[level](torch.cat([y, skips[level]], dim=1))
        y = self.head(y)[:, :, :H, :W]             # (B, output_steps, H, W)
        return y.unsqueeze(2)


def _check_input(x, in_channels, peephole_size, name):
    """One clear error for a wrong input: (B, T, C, H, W) with C = in_channels and, with
    per-pixel peepholes, H x W = peephole_size."""
    if x.ndim != 5 or x.shape[2] != in_channels:
        raise ValueError(f"{name}: expected input of shape (B, T, {in_channels}, H, W), got {tuple(x.shape)}")
    if peephole_size is not None and tuple(x.shape[-2:]) != peephole_size:
        raise ValueError(f"{name}: the model has per-pixel peephole weights for {peephole_size[0]} x "
                         f"{peephole_size[1]} frames (peephole_size), got {x.shape[-2]} x {x.shape[-1]}; "
                         f"set peephole_size to the frame size or to null (per-channel weights, any size)")


# --------------------------------------------------------------------------- frames stacked as channels
def _stack_frames(x, in_channels, input_steps, name):
    """(B, T, C, H, W) -> (B, T * C, H, W), frame 0's channels first; ValueError unless
    T == input_steps and C == in_channels."""
    if x.ndim != 5 or x.shape[1] != input_steps or x.shape[2] != in_channels:
        raise ValueError(f"{name}: expected input of shape (B, {input_steps}, {in_channels}, H, W) "
                         f"(input_steps frames of in_channels channels), got {tuple(x.shape)}")
    return x.reshape(x.shape[0], input_steps * in_channels, *x.shape[-2:])


def _pad_to_multiple(x, multiple):
    """Zero-pad the last two axes at the bottom and right to multiples of `multiple`."""
    pad_h, pad_w = -x.shape[-2] % multiple, -x.shape[-1] % multiple
    return F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x


def _check_positive(name, **values):
    bad = {k: v for k, v in values.items() if not isinstance(v, int) or isinstance(v, bool) or v < 1}
    if bad:
        raise ValueError(f"{name}: expected positive ints, got " + ", ".join(f"{k}={v!r}" for k, v in bad.items()))


# --------------------------------------------------------------------------- SmaAt-UNet (Trebing et al. 2021)
class DepthwiseSeparableConv(nn.Module):
    """A depthwise k x k convolution with `kernels_per_layer` filters per input channel, then a
    1 x 1 (pointwise) convolution: (B, in, H, W) -> (B, out, H, W). Trebing et al. (2021), Sect. 3.1.

    The depthwise step is computed as a plain depthwise convolution of the input channels repeated
    kernels_per_layer times, with the same weights as `self.depthwise` (a grouped nn.Conv2d):
    PyTorch's CPU backward pass of a grouped convolution with a channel multiplier measured 2-5x
    slower than this (torch 2.13).
    """

    def __init__(self, in_channels, out_channels, kernels_per_layer=2, kernel_size=3):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels * kernels_per_layer, kernel_size,
                                   padding=kernel_size // 2, groups=in_channels)
        self.pointwise = nn.Conv2d(in_channels * kernels_per_layer, out_channels, 1)

    def forward(self, x):
        d = self.depthwise
        repeats = d.out_channels // d.in_channels
        if repeats > 1:
            x = F.conv2d(x.repeat_interleave(repeats, 1), d.weight, d.bias, d.stride, d.padding, d.dilation,
                         d.out_channels)
        else:
            x = d(x)
        return self.pointwise(x)


def _double_conv_ds(in_channels, out_channels, kernels_per_layer, mid_channels=None):
    """(depthwise-separable 3x3 -> BatchNorm -> ReLU) twice: (B, in, H, W) -> (B, out, H, W)."""
    mid = mid_channels or out_channels
    return nn.Sequential(
        DepthwiseSeparableConv(in_channels, mid, kernels_per_layer), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
        DepthwiseSeparableConv(mid, out_channels, kernels_per_layer), nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True))


class CBAM(nn.Module):
    """Convolutional block attention module (Woo et al. 2018, eq. 1-3), as on SmaAt-UNet's skips.

    Channel attention: x * sigmoid(MLP(avgpool(x)) + MLP(maxpool(x))), MLP = 1x1 conv C -> C/r,
    ReLU, 1x1 conv C/r -> C (shared, no bias); then spatial attention:
    x * sigmoid(conv7x7([mean over channels, max over channels])). (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels, reduction=16, kernel_size=7):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden, channels, 1, bias=False))
        self.spatial = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x):
        x = x * torch.sigmoid(self.mlp(x.mean((2, 3), keepdim=True)) + self.mlp(x.amax((2, 3), keepdim=True)))
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(pooled))


class SmaAtUNet(nn.Module):
    """SmaAt-UNet (Trebing, Stanczyk and Mehrkanoon 2021, Pattern Recognit. Lett. 145), the
    baseline row of seed 004's table: a U-Net whose convolutions are depthwise separable, with a
    CBAM on every skip connection (and on the bottleneck); the input frames are stacked as
    channels (T_in * C input channels) and the output_steps frames come out as channels.

    Scale l (0 .. depth-1) has base_channels * 2**l channels (the deepest one repeats the
    previous width, the paper's bilinear "factor 2": 64, 128, 256, 512, 512 for base 64, depth 5);
    down: 2x2 max pool + double depthwise-separable conv; up: bilinear x2, concatenate the
    attended skip, double depthwise-separable conv (to half the skip's width, base at scale 0);
    a 1x1 convolution gives the frames. Any H, W: zero-padded at the bottom/right to a multiple
    of 2**(depth-1), the prediction cropped back.

    forward(x) -> y: x (B, input_steps, in_channels, H, W) float32 -> y (B, output_steps, 1, H, W).
    ValueError for non-positive sizes or a wrong input shape.
    """

    def __init__(self, in_channels, output_steps, input_steps, base_channels=64, depth=5, kernels_per_layer=2,
                 reduction=16):
        super().__init__()
        _check_positive("SmaAtUNet", in_channels=in_channels, output_steps=output_steps, input_steps=input_steps,
                        base_channels=base_channels, depth=depth, kernels_per_layer=kernels_per_layer,
                        reduction=reduction)
        self.in_channels, self.output_steps, self.input_steps = in_channels, output_steps, input_steps
        self.multiple = 2 ** (depth - 1)
        widths = [base_channels * 2 ** level for level in range(depth)]
        if depth > 1:
            widths[-1] = widths[-2]
        self.inc = _double_conv_ds(in_channels * input_steps, widths[0], kernels_per_layer)
        self.downs = nn.ModuleList(_double_conv_ds(widths[level - 1], widths[level], kernels_per_layer)
                                   for level in range(1, depth))
        self.attention = nn.ModuleList(CBAM(w, reduction) for w in widths)
        outs = [widths[0]] + [w // 2 for w in widths[1:]]
        self.ups = nn.ModuleList(_double_conv_ds(2 * widths[level], outs[level], kernels_per_layer, widths[level])
                                 for level in range(depth - 1))
        self.head = nn.Conv2d(widths[0], output_steps, 1)

    def forward(self, x):
        H, W = x.shape[-2:]
        y = _pad_to_multiple(_stack_frames(x, self.in_channels, self.input_steps, "SmaAtUNet"), self.multiple)
        y = self.inc(y)
        skips = [self.attention[0](y)]
        for level, down in enumerate(self.downs, start=1):
            y = down(F.max_pool2d(y, 2))
            skips.append(self.attention[level](y))
        y = skips[-1]
        for level in reversed(range(len(self.ups))):
            y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=True)
            y = self.ups[level](torch.cat([skips[level], y], dim=1))
        return self.head(y)[:, :, :H, :W].unsqueeze(2)


# --------------------------------------------------------------------------- ResNet encoder (torchvision layout)
def _block_mask(active, size):
    """active (B, 1, h, w) bool at the coarsest stride -> (B, 1, H, W): each coarse cell a block of
    (H / h) x (W / w) pixels (nearest upsampling)."""
    return active.repeat_interleave(size[0] // active.shape[-2], -2).repeat_interleave(size[1] // active.shape[-1], -1)


def _sparse(y, active):
    """Emulated sparse convolution (SparK, Tian et al. 2023, Sect. 3.1): zero the features at masked
    positions after a convolution or pooling, so that no later layer sees anything there."""
    return y if active is None else y * _block_mask(active, y.shape[-2:]).to(y.dtype)


class MaskedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d with mask-aware statistics (SparK's sparse batch norm).

    forward(x, active=None): x (B, C, H, W). Without `active` this is nn.BatchNorm2d. With active
    (B, 1, h, w) bool (True = visible, at a stride that divides H and W), the batch mean and
    (biased) variance come from the visible positions only, as if they were a batch of (N, C)
    vectors; the running statistics are updated from them as nn.BatchNorm2d does (unbiased
    variance, `momentum`); masked positions come out as exactly 0. Same parameters and
    state_dict keys as nn.BatchNorm2d, so weights move between pretraining and fine-tuning.
    (Statistics are masked sums, not a gather of the visible rows: in torch 2.13 on the CPU, the
    backward pass of boolean-mask indexing corrupted the heap when run on one thread.)
    """

    def forward(self, x, active=None):
        if active is None:
            return super().forward(x)
        keep = _block_mask(active, x.shape[-2:]).to(x.dtype)          # (B, 1, H, W)
        if self.training or not self.track_running_stats:
            n = keep.sum()
            mean = (x * keep).sum((0, 2, 3)) / n
            var = ((x - mean.view(1, -1, 1, 1)) * keep).square().sum((0, 2, 3)) / n
            if self.training and self.track_running_stats:
                self._update_running_stats(mean.detach(), var.detach(), n)
        else:
            mean, var = self.running_mean, self.running_var
        y = (x - mean.view(1, -1, 1, 1)) * torch.rsqrt(var.view(1, -1, 1, 1) + self.eps)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y * keep

    @torch.no_grad()
    def _update_running_stats(self, mean, var, n):
        self.num_batches_tracked.add_(1)
        momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        self.running_mean.mul_(1 - momentum).add_(momentum * mean)
        self.running_var.mul_(1 - momentum).add_(momentum * var * n / (n - 1).clamp(min=1))


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016, Fig. 2; torchvision's names): 3x3 conv (stride) -> BN ->
    ReLU -> 3x3 conv -> BN, plus the identity or a 1x1 conv + BN projection, then ReLU."""
    expansion = 1

    def __init__(self, in_channels, width, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride, 1, bias=False)
        self.bn1 = MaskedBatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = MaskedBatchNorm2d(width)
        self.downsample = _projection(in_channels, width * self.expansion, stride)

    def forward(self, x, active=None):
        out = F.relu(self.bn1(self.conv1(x), active))
        out = self.bn2(self.conv2(out), active)
        return F.relu(out + _shortcut(self.downsample, x, active))


class Bottleneck(nn.Module):
    """ResNet bottleneck block (He et al. 2016, Fig. 5; torchvision's "v1.5": the stride sits on
    the 3x3 conv): 1x1 conv -> BN -> ReLU -> 3x3 conv (stride) -> BN -> ReLU -> 1x1 conv (4 x width)
    -> BN, plus the shortcut, then ReLU."""
    expansion = 4

    def __init__(self, in_channels, width, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = MaskedBatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = MaskedBatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * self.expansion, 1, bias=False)
        self.bn3 = MaskedBatchNorm2d(width * self.expansion)
        self.downsample = _projection(in_channels, width * self.expansion, stride)

    def forward(self, x, active=None):
        out = F.relu(self.bn1(self.conv1(x), active))
        out = F.relu(self.bn2(self.conv2(out), active))
        out = self.bn3(self.conv3(out), active)
        return F.relu(out + _shortcut(self.downsample, x, active))


def _projection(in_channels, out_channels, stride):
    """torchvision's `downsample` (1x1 conv with stride + BN) where the shape changes, else None."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.ModuleList([nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), MaskedBatchNorm2d(out_channels)])


def _shortcut(downsample, x, active):
    return x if downsample is None else downsample[1](downsample[0](x), active)


RESNET_LAYOUTS = {"resnet18": (BasicBlock, (2, 2, 2, 2)), "resnet50": (Bottleneck, (3, 4, 6, 3))}


class ResNetEncoder(nn.Module):
    """The ResNet-18 / ResNet-50 layout of torchvision (He et al. 2016, Table 1) as a feature
    pyramid, without the classifier: conv1 7x7 stride 2 -> bn1 -> ReLU -> 3x3 max pool stride 2 ->
    layer1 .. layer4 (BasicBlock x [2, 2, 2, 2] or Bottleneck x [3, 4, 6, 3]; strides 1, 2, 2, 2;
    widths base_width * [1, 2, 4, 8], x 4 for Bottleneck). Parameter names follow torchvision
    (conv1, bn1, layer1.0.conv1, layer1.0.downsample.0, ...). Random initialisation only
    (He-normal convolutions, BN weight 1 and bias 0); no downloaded weights.

    forward(x, active=None) -> [f1, f2, f3, f4]: x (B, in_channels, H, W) with H, W multiples of
    32; f_k (B, channels[k-1], H / 2**(k+1), W / 2**(k+1)) (strides 4, 8, 16, 32). With active
    (B, 1, H / 32, W / 32) bool (SparK pretraining; True = visible) the input must already be 0 at
    masked pixels; every convolution is followed by a mask-aware BN and the max pool by a
    re-masking, so every feature map is 0 at masked positions and its statistics come from the
    visible ones: a dense emulation of sparse convolution.
    """
    stride = 32

    def __init__(self, in_channels, arch="resnet18", base_width=64):
        super().__init__()
        if arch not in RESNET_LAYOUTS:
            raise ValueError(f"ResNetEncoder: unknown arch {arch!r}; expected one of {', '.join(RESNET_LAYOUTS)}")
        _check_positive("ResNetEncoder", in_channels=in_channels, base_width=base_width)
        block, counts = RESNET_LAYOUTS[arch]
        self.conv1 = nn.Conv2d(in_channels, base_width, 7, 2, 3, bias=False)
        self.bn1 = MaskedBatchNorm2d(base_width)
        width_in, self.channels = base_width, []
        for index, count in enumerate(counts):
            width = base_width * 2 ** index
            blocks = []
            for j in range(count):
                blocks.append(block(width_in, width, 2 if index > 0 and j == 0 else 1))
                width_in = width * block.expansion
            setattr(self, f"layer{index + 1}", nn.ModuleList(blocks))
            self.channels.append(width_in)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x, active=None):
        y = F.relu(self.bn1(self.conv1(x), active))
        y = _sparse(F.max_pool2d(y, 3, 2, 1), active)
        features = []
        for index in range(1, 5):
            for block in getattr(self, f"layer{index}"):
                y = block(y, active)
            features.append(y)
        return features


# --------------------------------------------------------------------------- SparK encoder-decoder (seed 004)
class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels at every position of (B, C, H, W) (SparK's densify_norm "ln")."""

    def __init__(self, channels, eps=1e-6):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(channels)), nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x, active=None):
        y = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


class Identity2d(nn.Module):
    """Densify norm "none"."""

    def forward(self, x, active=None):
        return x


DENSIFY_NORMS = {"bn": MaskedBatchNorm2d, "ln": ChannelLayerNorm, "none": lambda channels: Identity2d()}
TRANSITIONS = ("none", "linearA", "conv")


class Transition(nn.Module):
    """The translation network between encoder and decoder: maps the (densified) representation of
    the input frames, scale by scale, to the one the decoder turns into the future frames.

    kind "none": identity (no parameters; pretraining, and a plain encoder-decoder).
    kind "linearA": one 1x1 convolution per scale (a linear map of the channels at every position,
        on All scales), initialised to the identity, so a pretrained encoder-decoder starts out
        reconstructing its input. This is our reading of the seed's `--transition linearA`; its
        code was not available to compare with.
    kind "conv": per scale a residual 3x3 conv -> ReLU -> 3x3 conv whose last conv starts at 0
        (identity at the start too), for non-local (advective) shifts within 2 cells per scale.
    forward(features) -> list of the same shapes.
    """

    def __init__(self, kind, widths):
        super().__init__()
        if kind not in TRANSITIONS:
            raise ValueError(f"Transition: unknown kind {kind!r}; expected one of {', '.join(TRANSITIONS)}")
        self.kind = kind
        if kind == "linearA":
            self.maps = nn.ModuleList(nn.Conv2d(w, w, 1) for w in widths)
            for conv, w in zip(self.maps, widths):
                with torch.no_grad():
                    conv.weight.copy_(torch.eye(w)[:, :, None, None])
                    conv.bias.zero_()
        elif kind == "conv":
            self.maps = nn.ModuleList(nn.Sequential(nn.Conv2d(w, w, 3, padding=1), nn.ReLU(inplace=True),
                                                    nn.Conv2d(w, w, 3, padding=1)) for w in widths)
            for block in self.maps:
                nn.init.zeros_(block[2].weight)
                nn.init.zeros_(block[2].bias)

    def forward(self, features):
        if self.kind == "none":
            return features
        if self.kind == "linearA":
            return [m(f) for m, f in zip(self.maps, features)]
        return [f + m(f) for m, f in zip(self.maps, features)]


class UpBlock(nn.Module):
    """SparK's light U-Net decoder block: 4x4 transposed conv stride 2 (x2), 3x3 conv -> BN ->
    ReLU6 -> 3x3 conv -> BN: (B, in, h, w) -> (B, out, 2h, 2w)."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels, 4, 2, 1)
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, padding=1, bias=False), nn.BatchNorm2d(in_channels),
            nn.ReLU6(inplace=True), nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels))

    def forward(self, x):
        return self.conv(self.up(x))


class SparKUNet(nn.Module):
    """The SpaT-SparK network (Li, Siebes and Mehrkanoon 2024, arXiv:2412.15917), built as SparK's
    encoder-decoder (Tian et al. ICLR 2023): ResNet encoder -> densify -> translation -> U-Net-style
    light decoder; input frames stacked as channels (the seed's --datamode CHW).

    Encoder: ResNetEncoder(input_steps * in_channels, arch, base_width), features at strides 32,
    16, 8, 4. Densify, per scale k (coarsest first): a norm (densify_norm "bn" mask-aware, "ln",
    "none"), the learned mask token put at masked positions (pretraining only), a projection to
    decoder_width / 2**k channels (1x1 conv at stride 32, 3x3 below). Translation (`transition`,
    see Transition). Decoder: five UpBlocks from stride 32 to 1, block k adding scale k's features
    to its input first (widths decoder_width / 2**k -> decoder_width / 2**(k+1)); a 1x1 head gives
    output_steps channels.

    forward(x) -> y: x (B, input_steps, in_channels, H, W) -> y (B, output_steps, 1, H, W); any H, W
        (zero-padded at the bottom/right to multiples of 32, cropped back).
    reconstruct(x, visible) -> (B, input_steps, in_channels, H, W): SparK's masked forward for
        pretraining (see its docstring); the model must have output_steps = input_steps * in_channels.
    ValueError for an unknown arch/densify_norm/transition, a decoder_width that is not a multiple
    of 32, or a wrong input shape.
    """
    stride = 32

    def __init__(self, in_channels, output_steps, input_steps, arch="resnet18", base_width=64, decoder_width=512,
                 densify_norm="bn", transition="linearA"):
        super().__init__()
        _check_positive("SparKUNet", in_channels=in_channels, output_steps=output_steps, input_steps=input_steps,
                        decoder_width=decoder_width)
        if decoder_width % 32:
            raise ValueError(f"SparKUNet: decoder_width must be a multiple of 32 (halved 5 times), got {decoder_width}")
        if densify_norm not in DENSIFY_NORMS:
            raise ValueError(f"SparKUNet: unknown densify_norm {densify_norm!r}; expected one of {', '.join(DENSIFY_NORMS)}")
        self.in_channels, self.output_steps, self.input_steps = in_channels, output_steps, input_steps
        self.encoder = ResNetEncoder(in_channels * input_steps, arch, base_width)
        enc = self.encoder.channels[::-1]                       # strides 32, 16, 8, 4
        widths = [decoder_width // 2 ** k for k in range(6)]
        self.densify_norms = nn.ModuleList(DENSIFY_NORMS[densify_norm](c) for c in enc)
        self.mask_tokens = nn.ParameterList(nn.Parameter(torch.zeros(1, c, 1, 1)) for c in enc)
        for token in self.mask_tokens:
            nn.init.trunc_normal_(token, std=0.02, a=-0.02, b=0.02)
        self.densify_projs = nn.ModuleList(nn.Conv2d(c, widths[k], 1 if k == 0 else 3, padding=0 if k == 0 else 1)
                                           for k, c in enumerate(enc))
        self.transition = Transition(transition, widths[:4])
        self.decoder = nn.ModuleList(UpBlock(widths[k], widths[k + 1]) for k in range(5))
        self.head = nn.Conv2d(widths[5], output_steps, 1)
        self.encoder_frozen = False

    def freeze_encoder(self):
        """Fine-tuning with a fixed encoder (the seed's --freeze encoder): its parameters stop learning
        (requires_grad False) and its batch-norm statistics stop updating (it stays in eval mode)."""
        self.encoder.requires_grad_(False)
        self.encoder_frozen = True
        return self.train(self.training)

    def train(self, mode=True):
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()
        return self

    def _densify(self, stacked, active=None):
        features = []
        for k, f in enumerate(self.encoder(stacked, active)[::-1]):
            f = self.densify_norms[k](f, active)
            if active is not None:
                f = torch.where(_block_mask(active, f.shape[-2:]), f, self.mask_tokens[k].to(f.dtype))
            features.append(self.densify_projs[k](f))
        return features

    def _decode(self, features):
        y = 0
        for k, block in enumerate(self.decoder):
            if k < len(features):
                y = y + features[k]
            y = block(y)
        return self.head(y)

    def forward(self, x):
        H, W = x.shape[-2:]
        stacked = _pad_to_multiple(_stack_frames(x, self.in_channels, self.input_steps, "SparKUNet"), self.stride)
        y = self._decode(self.transition(self._densify(stacked)))
        return y[:, :, :H, :W].unsqueeze(2)

    def reconstruct(self, x, visible):
        """Masked image modelling forward (SparK, Tian et al. 2023, Sect. 3): encode the visible
        patches only, densify masked positions with the mask tokens, decode every pixel.

        x: (B, T, C, H, W) with T = input_steps, C = in_channels, H and W multiples of 32.
        visible: (B, T, H / 32, W / 32) bool, True = the patch of that frame is seen. Masked
            pixels are set to 0 before the encoder; the encoder's active set is the union over
            frames (a position seen in some frame is encoded; it is all frames with the spatial
            mask); the translation network is not used.
        Returns the reconstruction (B, T, C, H, W) (the loss compares it with per-patch normalised
        targets, see pretrain.py).
        """
        B, T, C, H, W = x.shape
        _stack_frames(x, self.in_channels, self.input_steps, "SparKUNet.reconstruct")  # shape check
        if H % self.stride or W % self.stride:
            raise ValueError(f"SparKUNet.reconstruct: H and W must be multiples of {self.stride}, got {H} x {W}")
        if tuple(visible.shape) != (B, T, H // self.stride, W // self.stride):
            raise ValueError(f"SparKUNet.reconstruct: expected visible of shape {(B, T, H // self.stride, W // self.stride)}, "
                             f"got {tuple(visible.shape)}")
        if self.output_steps != T * C:
            raise ValueError(f"SparKUNet.reconstruct: the head gives {self.output_steps} channels, "
                             f"reconstruction needs input_steps * in_channels = {T * C}")
        pixels = _block_mask(visible, (H, W))[:, :, None].to(x.dtype)          # (B, T, 1, H, W)
        stacked = (x * pixels).reshape(B, T * C, H, W)
        y = self._decode(self._densify(stacked, visible.any(dim=1, keepdim=True)))
        return y.reshape(B, T, C, H, W)
# --------------------------------------------------------------------------- Lagrangian forecasts
class LeadSmoothing(nn.Module):
    """A Gaussian smoothing of each lead's forecast whose width is learned: it removes the scales
    that are no longer predictable at that lead time, whose variance is what MSE punishes (the
    predictability of precipitation falls with its scale: Germann and Zawadzki 2002, Mon. Wea. Rev.
    130; S-PROG, Seed 2003, J. Appl. Meteor. 42, filters them out of the extrapolation).

    variance (pixels^2) of lead i = RATE x lead_i^2 x |w_i|, w a parameter per lead that starts at 0:
    the identity, so a Lagrangian model still starts as the extrapolation. |w| is taken with the
    derivative +1 at 0 (torch.where), so the width can grow from 0, and a step that pushes w below 0
    is undone by the next ones (with max(w, 0) such a lead would stay unsmoothed for good). The
    pace grows with lead^2, so all widths grow in proportion to the lead, as the advection's position
    error does: an optimiser step of size lr moves the variance by about RATE x lr x lead^2 (0.05
    pixels^2 at lead 1, 7.2 at lead 12 at lr 1e-4). Widths are capped at MAX_SIGMA pixels. The
    kernels are discrete Gaussians (lagrangian.gaussian_kernels), so the rain mass is kept away from
    the frame's edges. Chosen on the validation split: bench/RESULTS.md, run 5.

    forward(rain) -> smoothed: (B, T_out, H, W) mm/h -> (B, T_out, H, W) mm/h.
    """
    RATE, MAX_SIGMA = 500.0, 16

    def __init__(self, leads):
        super().__init__()
        self.register_buffer("leads", torch.tensor(leads, dtype=torch.float32), persistent=False)
        self.weight = nn.Parameter(torch.zeros(len(leads)))

    def variance(self):
        """(T_out,) pixels^2."""
        size = torch.where(self.weight >= 0, self.weight, -self.weight)
        return (self.RATE * self.leads.to(self.weight.dtype) ** 2 * size).clamp(max=self.MAX_SIGMA ** 2)

    def forward(self, rain):
        return smooth(rain, gaussian_kernels(self.variance(), 4 * self.MAX_SIGMA))


class Lagrangian(nn.Module):
    """An Eulerian network run in Lagrangian coordinates: it forecasts growth and decay only, the
    motion comes from optical flow (L-CNN, Ritvanen et al. 2023, IEEE JSTARS 16, "Advection-free
    convolutional neural network for convective rainfall nowcasting"; with the differentiable
    semi-Lagrangian operator inside the network as in LUPIN, Pavlik et al. 2024, arXiv 2402.10747).

    1. The input frame t0 - k is advected k steps along the motion field: every input lands in the
       frame of the last input time t0 (lagrangian.trajectories, the scheme of baselines.advect;
       0 where a trajectory comes from outside the frame).
    2. `network` (B, T_in, C, H, W) -> (B, T_out, 1, H, W) reads them and predicts, per lead, the
       change of the normalised target in that frame: z = last input frame + change.
    3. z is turned into physical units (mm/h), smoothed with a learned width per lead when
       `smoothing` (LeadSmoothing), advected `lead` steps along the same motion (0 mm/h where the
       trajectory leaves the frame) and normalised again.
    With a network that outputs 0 (and no smoothing yet) the forecast is the optical-flow
    extrapolation of baselines.extrapolation (tests/test_model.py); the network's 1x1 head and the
    smoothing widths start at zero, so training starts from that baseline and learns growth, decay
    and smoothing.

    target: {"channel": index of the target among the input channels, "min", "max", "transform"}
    (stats.json); leads: the lead time of each output frame, steps after t0.
    forward(x, motion) -> y: x (B, T_in, C, H, W) normalised, motion (B, 2, H, W) pixels per step
    at t0 ([0] along x, [1] along y) -> y (B, T_out, 1, H, W) normalised.
    """

    def __init__(self, network, leads, target, smoothing=False):
        super().__init__()
        if len(leads) != network.output_steps:
            raise ValueError(f"Lagrangian: {len(leads)} lead times for {network.output_steps} output frames")
        self.network, self.leads, self.target = network, list(leads), dict(target)
        self.in_channels, self.output_steps = network.in_channels, network.output_steps
        self.smoothing = LeadSmoothing(self.leads) if smoothing else None
        head = getattr(network, "head", None)
        if isinstance(head, nn.Conv2d):  # start as the extrapolation: no change at any lead
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def forward(self, x, motion):
        if motion is None or motion.shape != (x.shape[0], 2) + x.shape[-2:]:
            raise ValueError(f"Lagrangian: expected motion (B, 2, H, W) = {(x.shape[0], 2) + tuple(x.shape[-2:])}, "
                             f"got {None if motion is None else tuple(motion.shape)}")
        n_inputs = x.shape[1]
        steps = trajectories(motion.to(x.dtype), max(n_inputs - 1, max(self.leads)))
        moved = [sample(x[:, t], steps[n_inputs - 2 - t]) for t in range(n_inputs - 1)]
        change = self.network(torch.stack(moved + [x[:, -1]], dim=1))            # (B, T_out, 1, H, W)
        c, t = self.target["channel"], self.target
        frame = x[:, -1:, c:c + 1] + change                                        # normalised, frame of t0
        rain = denormalize(frame, t["min"], t["max"], t["transform"])              # mm/h
        if self.smoothing is not None:
            rain = self.smoothing(rain[:, :, 0])[:, :, None]
        ahead = [sample(rain[:, i], steps[lead - 1]) for i, lead in enumerate(self.leads)]
        return normalize_tensor(torch.stack(ahead, dim=1), t["min"], t["max"], t["transform"])


# --------------------------------------------------------------------------- registry
MODELS = {
    "convlstm_unet": ConvLSTM_UNet,
    "encoder_forecaster": EncoderForecaster,
    "smaat_unet": SmaAtUNet,
    "spark_unet": SparKUNet,
}
SUPPLIED = ("in_channels", "output_steps", "input_steps")  # given by the caller, not by params.json


def get_model(name, lagrangian=False, smoothing=False, leads=None, target=None, **cfg):
    """Build the model registered as `name` from its options.

    cfg: the keys of params.json model.<name> (e.g. base_channels, depth, kernel_size, peephole,
    peephole_size) plus in_channels and output_steps, supplied by the caller, and input_steps for
    the models that stack the input frames as channels (smaat_unet, spark_unet). lagrangian=True
    wraps it in `Lagrangian` (leads, target and smoothing as there).
    Raises UserError for an unknown name or option (naming it and what is valid), ValueError for a
    bad value.
    """
    if name not in MODELS:
        raise UserError(f"model.name: unknown model {name!r}; expected one of {', '.join(MODELS)}")
    accepted = list(inspect.signature(MODELS[name].__init__).parameters)[1:]
    unknown = [key for key in cfg if key not in accepted]
    if unknown:
        options = ", ".join(accepted + ["lagrangian", "smoothing"])
        raise UserError(f"model.{name}: unknown option {unknown[0]!r}; expected {options}")
    missing = [key for key in SUPPLIED if key in accepted and key not in cfg]
    if missing:
        raise UserError(f"get_model({name!r}): {missing[0]} must be given")
    if smoothing and not lagrangian:
        raise UserError(f"model.{name}.smoothing: smooths the forecast before it is advected, so it needs "
                        f"model.{name}.lagrangian=true")
    network = MODELS[name](**cfg)
    return Lagrangian(network, leads, target, smoothing) if lagrangian else network


def build_model(params, in_channels, stats=None):
    """The model named by params["model"]["name"] with the options of its section.

    in_channels: C of the inputs (nowcast: radar + NWP channels; sea ice: 1). stats: the stats.json
    dict (needed by Lagrangian models, which advect in physical units).
    The number of predicted frames is data.output_steps for the nowcast task and
    sea_ice.pred_length for the sea-ice task; models that stack the input frames as channels
    (smaat_unet, spark_unet) get input_steps = data.input_steps (sea_ice.input_length).
    A bad value in params.json raises config.UserError (one line naming the section).
    """
    name = params["model"]["name"]
    cfg = dict(params["model"].get(name, {}))
    sea_ice = params.get("task") == "sea_ice"
    output_steps = params["sea_ice"]["pred_length"] if sea_ice else params["data"]["output_steps"]
    if name in MODELS and "input_steps" in inspect.signature(MODELS[name].__init__).parameters:
        cfg["input_steps"] = params["sea_ice"]["input_length"] if sea_ice else params["data"]["input_steps"]
    if cfg.get("lagrangian"):
        if sea_ice or stats is None or target_channel(stats) is None:
            raise UserError(f"model.{name}.lagrangian: needs a nowcasting target that is also an input channel "
                            "(it advects the last radar frame)")
        data = params["data"]
        cfg.update(leads=[data["lead_steps"] + k for k in range(output_steps)],
                   target={"channel": target_channel(stats), **{k: stats["target"][k] for k in ("min", "max", "transform")}})
    try:
        return get_model(name, in_channels=in_channels, output_steps=output_steps, **cfg)
    except ValueError as exc:
        raise UserError(f"model.{name} in params.json: {exc}") from None


def count_parameters(model):
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
