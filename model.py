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

from config import UserError  # only for get_model/build_model: errors in params.json values



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


class ConvLSTM_UNet(nn.Module):
    """U-Net whose encoder blocks are ConvLSTMs (seed 000).

    Scale l (0 .. depth-1) has base_channels * 2**l channels at H/2**l x W/2**l pixels. Its
    ConvLSTM reads the whole sequence: the input frames at scale 0, the previous scale's hidden
    sequence max-pooled 2x2 frame by frame below. The time dimension ends there: each scale hands
    its LAST hidden state to the decoder. The decoder starts from the deepest one and, scale by
    scale, upsamples (2x2 transposed convolution), concatenates the skip and applies two 3x3
    conv-GroupNorm-ReLU layers; a 1x1 head gives the output_steps frames.

    Any H, W: frames are zero-padded at the bottom and right to a multiple of 2**(depth-1) and
    the prediction is cropped back. With per-pixel peepholes (peephole_size=(H, W), the input
    frame size) each scale's weights are sized from the padded frame.

    forward(x) -> y: x (B, T_in, C, H, W) float32 -> y (B, output_steps, 1, H, W)
    """

    def __init__(self, in_channels, output_steps, base_channels=16, depth=3, kernel_size=3, peephole=True,
                 peephole_size=None):
        super().__init__()
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
        self.upsample = nn.ModuleList(nn.ConvTranspose2d(channels[level + 1], channels[level], 2, stride=2)
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


# --------------------------------------------------------------------------- registry
MODELS = {
    "convlstm_unet": ConvLSTM_UNet,
    "encoder_forecaster": EncoderForecaster,
}


def get_model(name, **cfg):
    """Build the model registered as `name` from its options.

    cfg: the keys of params.json model.<name> (e.g. base_channels, depth, kernel_size, peephole,
    peephole_size) plus in_channels and output_steps, supplied by the caller.
    Raises UserError for an unknown name or option (naming it and what is valid), ValueError for a
    bad value.
    """
    if name not in MODELS:
        raise UserError(f"model.name: unknown model {name!r}; expected one of {', '.join(MODELS)}")
    accepted = list(inspect.signature(MODELS[name].__init__).parameters)[1:]
    unknown = [key for key in cfg if key not in accepted]
    if unknown:
        raise UserError(f"model.{name}: unknown option {unknown[0]!r}; expected {', '.join(accepted)}")
    missing = [key for key in ("in_channels", "output_steps") if key not in cfg]
    if missing:
        raise UserError(f"get_model({name!r}): {missing[0]} must be given")
    return MODELS[name](**cfg)


def build_model(params, in_channels):
    """The model named by params["model"]["name"] with the options of its section.

    in_channels: C of the inputs (nowcast: radar + NWP channels; sea ice: 1).
    The number of predicted frames is data.output_steps for the nowcast task and
    sea_ice.pred_length for the sea-ice task.
    A bad value in params.json raises config.UserError (one line naming the section).
    """
    name = params["model"]["name"]
    cfg = dict(params["model"].get(name, {}))
    output_steps = params["sea_ice"]["pred_length"] if params.get("task") == "sea_ice" \
        else params["data"]["output_steps"]
    try:
        return get_model(name, in_channels=in_channels, output_steps=output_steps, **cfg)
    except ValueError as exc:
        raise UserError(f"model.{name} in params.json: {exc}") from None


def count_parameters(model):
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
