"""model.py: the ConvLSTM cell against the formulas of Shi et al. (2015) written out gate by
gate, the wiring of the stacks, output shapes for odd frame sizes, gradients, one training
step, and the registry. Tiny tensors; float64 where values are compared."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import config
import model


# --------------------------------------------------------------------------- reference cell
def reference_step(cell, x, h, c):
    """Seed 002 eq. (3) with one convolution per weight W_x., W_h. and the peepholes W_c. as a
    Hadamard product; the weights are cut out of the fused convolution (output order i, f, c, o).
    x: (B, C_in, H, W) or None; h, c: (B, hid, H, W). Returns (h_t, c_t)."""
    hid, c_in, k = cell.hidden_channels, cell.in_channels, cell.kernel_size
    weight, bias = cell.conv.weight, cell.conv.bias

    def conv(gate, source, wx_or_wh):
        rows = slice(gate * hid, (gate + 1) * hid)
        cols = slice(0, c_in) if wx_or_wh == "x" else slice(c_in, c_in + hid)
        return F.conv2d(source, weight[rows, cols], padding=k // 2)

    def pre(gate):
        total = conv(gate, h, "h")
        if x is not None:
            total = total + conv(gate, x, "x")
        if bias is not None:
            total = total + bias[gate * hid:(gate + 1) * hid].view(1, hid, 1, 1)
        return total

    w_ci = cell.w_ci if cell.peephole else 0.0
    w_cf = cell.w_cf if cell.peephole else 0.0
    w_co = cell.w_co if cell.peephole else 0.0
    i_t = torch.sigmoid(pre(0) + w_ci * c)
    f_t = torch.sigmoid(pre(1) + w_cf * c)
    c_t = f_t * c + i_t * torch.tanh(pre(2))
    o_t = torch.sigmoid(pre(3) + w_co * c_t)
    h_t = o_t * torch.tanh(c_t)
    return h_t, c_t


def randomise(module, seed=0):
    """Random values in every parameter (peepholes start at zero, which would hide them)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.5)


@pytest.mark.parametrize("in_channels, kernel, bias, peephole, peephole_size", [
    (2, 3, True, False, None),
    (2, 3, True, True, None),
    (2, 3, True, True, (6, 5)),
    (3, 5, False, True, (6, 5)),
    (0, 3, True, True, (6, 5)),          # the forecaster's cell without input
])
def test_cell_matches_gate_by_gate_formulas(in_channels, kernel, bias, peephole, peephole_size):
    torch.manual_seed(1)
    cell = model.ConvLSTMCell(in_channels, 4, kernel, bias=bias, peephole=peephole,
                              peephole_size=peephole_size).double()
    randomise(cell)
    B, H, W = 2, 6, 5
    h = torch.randn(B, 4, H, W, dtype=torch.float64)
    c = torch.randn(B, 4, H, W, dtype=torch.float64)
    state, ref = (h, c), (h, c)
    for _ in range(3):
        x = torch.randn(B, in_channels, H, W, dtype=torch.float64) if in_channels else None
        state = cell(x, state)
        ref = reference_step(cell, x, *ref)
    torch.testing.assert_close(state[0], ref[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(state[1], ref[1], rtol=1e-10, atol=1e-12)


def test_peepholes_change_the_output():
    torch.manual_seed(2)
    cell = model.ConvLSTMCell(2, 3, peephole=True).double()
    randomise(cell)
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    state = (torch.randn(1, 3, 5, 5, dtype=torch.float64), torch.randn(1, 3, 5, 5, dtype=torch.float64))
    with_peepholes = cell(x, state)[0]
    with torch.no_grad():
        cell.w_ci.zero_(), cell.w_cf.zero_(), cell.w_co.zero_()
    assert (with_peepholes - cell(x, state)[0]).abs().max() > 1e-3


def test_cell_starts_from_zero_state_and_remembers_by_default():
    cell = model.ConvLSTMCell(2, 3)
    x = torch.randn(2, 2, 7, 4)
    zeros = torch.zeros(2, 3, 7, 4)
    torch.testing.assert_close(cell(x), cell(x, (zeros, zeros)))
    assert torch.all(cell.conv.bias[3:6] == 1.0)          # forget gate
    assert cell.w_ci.shape == (3, 1, 1)                    # per channel by default


def test_per_pixel_peephole_rejects_another_frame_size():
    cell = model.ConvLSTMCell(2, 3, peephole_size=(8, 8))
    assert cell.w_co.shape == (3, 8, 8)
    with pytest.raises(ValueError, match="8 x 8 pixels, got a frame of 8 x 6"):
        cell(torch.randn(1, 2, 8, 6))
    unet = model.ConvLSTM_UNet(2, 1, base_channels=4, depth=2, peephole_size=[9, 7])
    with pytest.raises(ValueError, match="9 x 7 frames .*got 8 x 7"):
        unet(torch.randn(1, 2, 2, 8, 7))
    with pytest.raises(ValueError, match="peephole_size: expected null or"):
        model.ConvLSTMCell(2, 3, peephole_size=[8, 0])


# --------------------------------------------------------------------------- wiring of the stacks
def test_convlstm_stack_runs_cells_over_time():
    torch.manual_seed(3)
    stack = model.ConvLSTM(3, [4, 5], kernel_size=3).double()
    randomise(stack)
    x = torch.randn(2, 4, 3, 6, 7, dtype=torch.float64)
    outputs, last = stack(x)
    layer_input = x
    for layer, cell in enumerate(stack.cells):
        h = c = torch.zeros(2, cell.hidden_channels, 6, 7, dtype=torch.float64)
        hs = []
        for t in range(4):
            h, c = reference_step(cell, layer_input[:, t], h, c)
            hs.append(h)
        layer_input = torch.stack(hs, 1)
        torch.testing.assert_close(outputs[layer], layer_input)
        torch.testing.assert_close(last[layer][0], h)
        torch.testing.assert_close(last[layer][1], c)


def test_encoder_forecaster_copies_states_and_reads_all_layers():
    torch.manual_seed(4)
    net = model.EncoderForecaster(2, output_steps=3, hidden_channels=[3, 4]).double()
    randomise(net)
    x = torch.randn(2, 5, 2, 6, 5, dtype=torch.float64)
    # by hand: encoder layers over time, forecaster from the copied states without input
    states, layer_input = [], x
    for cell in net.encoder.cells:
        h = c = torch.zeros(2, cell.hidden_channels, 6, 5, dtype=torch.float64)
        hs = []
        for t in range(5):
            h, c = reference_step(cell, layer_input[:, t], h, c)
            hs.append(h)
        layer_input = torch.stack(hs, 1)
        states.append((h, c))
    frames = []
    for _ in range(3):
        below = None
        for layer, cell in enumerate(net.forecaster):
            states[layer] = reference_step(cell, below, *states[layer])
            below = states[layer][0]
        stacked = torch.cat([h for h, _ in states], 1)                    # (B, 7, H, W)
        frames.append(torch.einsum("bchw,c->bhw", stacked, net.head.weight[0, :, 0, 0]) + net.head.bias[0])
    expected = torch.stack(frames, 1).unsqueeze(2)
    torch.testing.assert_close(net(x), expected)


# --------------------------------------------------------------------------- shapes, padding
def small_models(output_steps, in_channels=3):
    return {
        "unet": model.ConvLSTM_UNet(in_channels, output_steps, base_channels=4, depth=3),
        "unet_depth1": model.ConvLSTM_UNet(in_channels, output_steps, base_channels=4, depth=1),
        "ef": model.EncoderForecaster(in_channels, output_steps, hidden_channels=[4, 3]),
    }


@pytest.mark.parametrize("T, H, W, output_steps", [(1, 16, 16, 1), (3, 13, 9, 2), (2, 5, 3, 3), (4, 1, 7, 1)])
def test_output_shapes(T, H, W, output_steps):
    x = torch.randn(2, T, 3, H, W)
    for name, net in small_models(output_steps).items():
        y = net(x)
        assert y.shape == (2, output_steps, 1, H, W), name
        assert y.dtype == torch.float32 and torch.isfinite(y).all(), name


def test_per_pixel_peephole_models_run_at_their_size():
    x = torch.randn(1, 2, 3, 11, 6)
    unet = model.ConvLSTM_UNet(3, 2, base_channels=4, depth=3, peephole_size=(11, 6))
    assert [e.cells[0].w_ci.shape[1:] for e in unet.encoders] == [(12, 8), (6, 4), (3, 2)]
    assert unet(x).shape == (1, 2, 1, 11, 6)
    ef = model.EncoderForecaster(3, 2, hidden_channels=[4], peephole_size=(11, 6))
    assert ef(x).shape == (1, 2, 1, 11, 6)


def test_unet_pads_with_zeros_and_crops_back():
    torch.manual_seed(5)
    net = model.ConvLSTM_UNet(3, 2, base_channels=4, depth=3).double().eval()
    x = torch.randn(2, 3, 3, 13, 10, dtype=torch.float64)
    padded = F.pad(x, (0, 2, 0, 3))                     # 16 x 12, a multiple of 4
    torch.testing.assert_close(net(x), net(padded)[..., :13, :10])


def test_wrong_input_channels_is_a_clear_error():
    for net in small_models(1).values():
        with pytest.raises(ValueError, match=r"expected input of shape \(B, T, 3, H, W\)"):
            net(torch.randn(1, 2, 4, 8, 8))


# --------------------------------------------------------------------------- training
@pytest.mark.parametrize("name", ["unet", "unet_depth1", "ef"])
def test_gradient_reaches_every_parameter(name):
    torch.manual_seed(6)
    net = small_models(2)[name]
    x, y = torch.randn(2, 3, 3, 12, 10), torch.randn(2, 2, 1, 12, 10)
    F.mse_loss(net(x), y).backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().max() > 0, pname


@pytest.mark.parametrize("name", ["unet", "ef"])
def test_one_adamw_step_reduces_the_loss(name):
    torch.manual_seed(7)
    net = small_models(1)[name]
    x = torch.randn(4, 3, 3, 12, 12)
    y = x[:, -1:, :1] * 0.5                              # a learnable target
    optimiser = torch.optim.AdamW(net.parameters(), lr=1e-3)
    before = F.mse_loss(net(x), y)
    before.backward()
    optimiser.step()
    with torch.no_grad():
        after = F.mse_loss(net(x), y)
    assert after < before


# --------------------------------------------------------------------------- registry
def test_registry_builds_models_from_params(params):
    for name, cls in [("convlstm_unet", model.ConvLSTM_UNet), ("encoder_forecaster", model.EncoderForecaster)]:
        net = model.get_model(name, in_channels=4, output_steps=2, **params["model"][name])
        assert type(net) is cls and net.output_steps == 2
    net = model.build_model(params, in_channels=4)
    assert type(net) is model.ConvLSTM_UNet and net.output_steps == params["data"]["output_steps"]
    assert net.encoders[0].cells[0].hidden_channels == params["model"]["convlstm_unet"]["base_channels"]
    params["task"] = "sea_ice"
    params["model"]["name"] = "encoder_forecaster"
    net = model.build_model(params, in_channels=1)
    assert type(net) is model.EncoderForecaster and net.output_steps == params["sea_ice"]["pred_length"]
    assert [c.hidden_channels for c in net.encoder.cells] == params["model"]["encoder_forecaster"]["hidden_channels"]


def test_registry_errors_name_what_is_valid():
    with pytest.raises(config.UserError, match="unknown model 'unet'; expected one of convlstm_unet, encoder_forecaster"):
        model.get_model("unet", in_channels=4, output_steps=1)
    with pytest.raises(config.UserError, match="model.convlstm_unet: unknown option 'hidden_channels'"):
        model.get_model("convlstm_unet", in_channels=4, output_steps=1, hidden_channels=[8])
    with pytest.raises(config.UserError, match="in_channels must be given"):
        model.get_model("encoder_forecaster", output_steps=1)


# --------------------------------------------------------------------------- seed 004: SmaAt-UNet, spark_unet
def frame_stacking_models(output_steps, input_steps, in_channels=2):
    return {
        "smaat": model.SmaAtUNet(in_channels, output_steps, input_steps, base_channels=4, depth=4, reduction=2),
        "smaat_depth1": model.SmaAtUNet(in_channels, output_steps, input_steps, base_channels=4, depth=1),
        "spark18": model.SparKUNet(in_channels, output_steps, input_steps, base_width=4, decoder_width=32),
        "spark50_conv": model.SparKUNet(in_channels, output_steps, input_steps, arch="resnet50", base_width=2,
                                        decoder_width=32, transition="conv", densify_norm="ln"),
    }


@pytest.mark.parametrize("T, H, W, output_steps", [(1, 32, 32, 1), (3, 13, 9, 2), (12, 40, 70, 1), (2, 1, 7, 3)])
def test_frame_stacking_model_shapes(T, H, W, output_steps):
    x = torch.randn(2, T, 2, H, W)
    for name, net in frame_stacking_models(output_steps, T).items():
        y = net(x)
        assert y.shape == (2, output_steps, 1, H, W), name
        assert torch.isfinite(y).all(), name


@pytest.mark.parametrize("name", ["smaat", "spark18"])
def test_frame_stacking_models_pad_with_zeros_and_crop_back(name):
    torch.manual_seed(8)
    net = frame_stacking_models(2, 3)[name].double().eval()   # eval: BatchNorm uses its running statistics
    x = torch.randn(2, 3, 2, 21, 37, dtype=torch.float64)
    multiple = 8 if name == "smaat" else 32                    # 2**(depth - 1); the ResNet's stride
    padded = F.pad(x, (0, -37 % multiple, 0, -21 % multiple))  # (CBAM pools over the padded frame too)
    torch.testing.assert_close(net(x), net(padded)[..., :21, :37])


def test_frames_are_stacked_as_channels_in_time_order():
    torch.manual_seed(9)
    net = model.SmaAtUNet(2, 1, 3, base_channels=4, depth=2).eval()
    x = torch.randn(1, 3, 2, 8, 8)
    stacked = x.reshape(1, 6, 8, 8)
    first = net.inc[0].depthwise   # the first layer sees frame t's channel c at channel 2 t + c
    assert first.groups == first.in_channels == 6
    hooked = {}
    net.inc[0].register_forward_hook(lambda m, inputs, out: hooked.update(x=inputs[0]))
    net(x)
    torch.testing.assert_close(hooked["x"], stacked)


def test_resnet_layouts_have_torchvision_parameter_counts():
    # torchvision resnet18 / resnet50 (3 input channels): 11,689,512 / 25,557,032 parameters, of which the
    # 1000-class fc layer has 513,000 / 2,049,000 (published counts of torchvision.models)
    assert model.count_parameters(model.ResNetEncoder(3, "resnet18", 64)) == 11_689_512 - 513_000
    assert model.count_parameters(model.ResNetEncoder(3, "resnet50", 64)) == 25_557_032 - 2_049_000
    r50 = model.ResNetEncoder(3, "resnet50", 64)
    assert [len(getattr(r50, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    assert r50.channels == [256, 512, 1024, 2048]
    assert r50.layer2[0].conv2.stride == (2, 2) and r50.layer2[0].conv1.stride == (1, 1)   # torchvision v1.5
    names = set(model.ResNetEncoder(3, "resnet18", 8).state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
            "layer4.1.bn2.weight"} <= names and "layer1.0.downsample.0.weight" not in names


def test_resnet_feature_strides():
    features = model.ResNetEncoder(5, "resnet18", 4)(torch.randn(1, 5, 64, 96))
    assert [tuple(f.shape) for f in features] == [(1, 4, 16, 24), (1, 8, 8, 12), (1, 16, 4, 6), (1, 32, 2, 3)]


def test_cbam_matches_its_formula():
    torch.manual_seed(10)
    cbam = model.CBAM(8, reduction=4).double()
    randomise(cbam, 3)
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64)
    w1, w2 = cbam.mlp[0].weight[:, :, 0, 0], cbam.mlp[2].weight[:, :, 0, 0]   # (2, 8), (8, 2)

    def mlp(v):                                                               # v (B, 8)
        return torch.relu(v @ w1.T) @ w2.T
    channel = torch.sigmoid(mlp(x.mean((2, 3))) + mlp(x.amax((2, 3))))[:, :, None, None]
    y = x * channel
    spatial = torch.sigmoid(F.conv2d(torch.stack([y.mean(1), y.amax(1)], 1), cbam.spatial.weight, padding=3))
    torch.testing.assert_close(cbam(x), y * spatial)


def test_depthwise_step_equals_the_grouped_convolution():
    torch.manual_seed(13)
    conv = model.DepthwiseSeparableConv(3, 5, kernels_per_layer=2).double()
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    torch.testing.assert_close(conv(x), conv.pointwise(conv.depthwise(x)))   # nn.Conv2d(groups=3) itself


def test_smaat_convolutions_are_depthwise_separable_with_attention_on_every_skip():
    net = model.SmaAtUNet(1, 1, 12)            # the paper's sizes: base 64, depth 5
    depthwise = [m for m in net.modules() if isinstance(m, model.DepthwiseSeparableConv)]
    assert depthwise and all(m.depthwise.groups == m.depthwise.in_channels and
                             m.depthwise.out_channels == 2 * m.depthwise.in_channels and
                             m.pointwise.kernel_size == (1, 1) for m in depthwise)
    assert [c.mlp[0].in_channels for c in net.attention] == [64, 128, 256, 512, 512]
    assert not [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
                and m.groups == 1]                                   # no full 3x3 convolution anywhere


def test_linear_a_transition_starts_as_the_identity():
    torch.manual_seed(11)
    plain = model.SparKUNet(1, 2, 4, base_width=4, decoder_width=32, transition="none").eval()
    linear = model.SparKUNet(1, 2, 4, base_width=4, decoder_width=32, transition="linearA").eval()
    result = linear.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(result.missing_keys) == sorted(f"transition.maps.{k}.{p}" for k in range(4) for p in ("weight", "bias"))
    x = torch.randn(2, 4, 1, 32, 64)
    torch.testing.assert_close(linear(x), plain(x))
    assert len(linear.transition.maps) == 4 and linear.transition.maps[0].kernel_size == (1, 1)


@pytest.mark.parametrize("name", ["smaat", "spark18", "spark50_conv"])
def test_frame_stacking_models_train(name):
    torch.manual_seed(12)
    net = frame_stacking_models(1, 3)[name]
    x = torch.randn(4, 3, 2, 32, 32)
    y = x[:, -1:, :1] * 0.5
    F.mse_loss(net(x), y).backward()
    # mask tokens serve pretraining only; a "conv" transition's first conv gets a gradient once its last
    # conv (initialised to 0, so that the transition starts as the identity) has moved
    unused = {n for n, _ in net.named_parameters() if n.startswith("mask_tokens") or ".maps." in n and ".0." in n}
    for pname, p in net.named_parameters():
        if pname not in unused:
            assert p.grad is not None and p.grad.abs().max() > 0, pname
    optimiser = torch.optim.AdamW(net.parameters(), lr=1e-3)
    before = F.mse_loss(net(x), y)
    optimiser.zero_grad()
    before.backward()
    optimiser.step()
    with torch.no_grad():
        assert F.mse_loss(net(x), y) < before


def test_frame_stacking_models_reject_bad_shapes_and_options():
    net = model.SmaAtUNet(2, 1, 3, base_channels=4, depth=2)
    with pytest.raises(ValueError, match=r"expected input of shape \(B, 3, 2, H, W\)"):
        net(torch.randn(1, 4, 2, 8, 8))
    with pytest.raises(ValueError, match="unknown arch 'resnet34'"):
        model.SparKUNet(1, 1, 3, arch="resnet34")
    with pytest.raises(ValueError, match="decoder_width must be a multiple of 32"):
        model.SparKUNet(1, 1, 3, decoder_width=48)
    with pytest.raises(ValueError, match="unknown kind 'linearB'"):
        model.SparKUNet(1, 1, 3, transition="linearB")
    with pytest.raises(ValueError, match="expected positive ints, got depth=0"):
        model.SmaAtUNet(1, 1, 3, depth=0)


def test_registry_gives_frame_stacking_models_their_input_steps(params):
    params["data"]["input_steps"] = 5
    params["model"]["smaat_unet"]["base_channels"] = 4
    params["model"]["spark_unet"].update(base_width=4, decoder_width=32)
    for name, cls in [("smaat_unet", model.SmaAtUNet), ("spark_unet", model.SparKUNet)]:
        params["model"]["name"] = name
        net = model.build_model(params, in_channels=2)
        assert type(net) is cls and net.input_steps == 5 and net.output_steps == params["data"]["output_steps"]
        assert net.eval()(torch.randn(1, 5, 2, 16, 16)).shape == (1, params["data"]["output_steps"], 1, 16, 16)
    with pytest.raises(config.UserError, match="input_steps must be given"):
        model.get_model("smaat_unet", in_channels=1, output_steps=1)


# --------------------------------------------------------------------------- Lagrangian forecasts
def lagrangian_case(seed=0, shape=(36, 44), n_inputs=4):
    """Normalised input frames of two moving rain cells (log1p, max 3.2) and their stats-like target."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    frames = np.stack([15 * np.exp(-((yy - 14 - 0.6 * t) ** 2 + (xx - 10 - 1.4 * t) ** 2) / 30) +
                       4 * np.exp(-((yy - 25 + 0.3 * t) ** 2 + (xx - 22 - 1.1 * t) ** 2) / 18)
                       + rng.uniform(0, 0.05, shape) for t in range(n_inputs)])
    target = {"channel": 0, "min": 0.0, "max": 3.2, "transform": "log1p"}
    return frames, target


@pytest.mark.parametrize("smoothing", [False, True])
def test_lagrangian_model_with_no_change_is_optical_flow_extrapolation(smoothing):
    import baselines
    from normalization import denormalize, normalize
    frames, target = lagrangian_case()
    leads = [1, 2, 3, 6]
    net = model.get_model("convlstm_unet", in_channels=1, output_steps=4, base_channels=4, depth=2,
                          lagrangian=True, smoothing=smoothing, leads=leads, target=target).double()
    assert not net.network.head.weight.any() and not net.network.head.bias.any()  # "no change" at start
    x = normalize(frames, 0.0, 3.2, "log1p")
    physical = denormalize(x, 0.0, 3.2, "log1p")  # what persistence/extrapolation see
    motion = baselines.motion_field(physical[-3:])
    with torch.no_grad():
        y = net(torch.from_numpy(x)[None, :, None], torch.from_numpy(motion)[None])
    forecast = denormalize(y[0, :, 0].numpy(), 0.0, 3.2, "log1p")
    expected = baselines.extrapolation(physical, leads, fill_value=0.0)
    np.testing.assert_allclose(forecast, expected, rtol=1e-9, atol=1e-9)


def test_lagrangian_smoothing_smooths_the_last_frame_before_it_is_advected():
    """Zero change and learned widths: each lead is the last frame filtered with the discrete
    Gaussian of its variance (scipy), then advected by baselines.advect."""
    import baselines
    from scipy.ndimage import correlate1d
    from scipy.special import ive
    from normalization import denormalize, normalize
    frames, target = lagrangian_case()
    leads = [1, 2, 3, 6]
    net = model.get_model("convlstm_unet", in_channels=1, output_steps=4, base_channels=4, depth=2,
                          lagrangian=True, smoothing=True, leads=leads, target=target).double()
    with torch.no_grad():
        net.smoothing.weight.copy_(torch.tensor([0.0, 0.25, -0.5, 100.0]) / model.LeadSmoothing.RATE)
    rate = model.LeadSmoothing.RATE
    variance = [0.0, 4 * 0.25, 9 * 0.5, 16 ** 2]  # RATE x lead^2 x |w|, at most MAX_SIGMA^2
    np.testing.assert_allclose(net.smoothing.variance().detach().numpy(), variance)
    x = normalize(frames, 0.0, 3.2, "log1p")
    physical = denormalize(x, 0.0, 3.2, "log1p")
    motion = baselines.motion_field(physical[-3:])
    with torch.no_grad():
        y = net(torch.from_numpy(x)[None, :, None], torch.from_numpy(motion)[None])
    forecast = denormalize(y[0, :, 0].numpy(), 0.0, 3.2, "log1p")
    radius = 4 * model.LeadSmoothing.MAX_SIGMA
    for i, (lead, v) in enumerate(zip(leads, variance)):
        kernel = ive(np.abs(np.arange(-radius, radius + 1)), v)
        smoothed = correlate1d(correlate1d(physical[-1], kernel / kernel.sum(), axis=0, mode="nearest"),
                               kernel / kernel.sum(), axis=1, mode="nearest")
        expected = baselines.advect(smoothed, motion, [lead], fill_value=0.0)[0]
        np.testing.assert_allclose(forecast[i], expected, rtol=1e-7, atol=1e-9)
    assert np.abs(forecast[2] - baselines.extrapolation(physical, [3], fill_value=0.0)[0]).max() > 0.1
    with torch.no_grad():  # the width grows from 0 and comes back from below it
        net.smoothing.weight.copy_(torch.tensor([0.0, -1e-3, 0.0, 0.0]))
    net.smoothing.variance().sum().backward()
    np.testing.assert_allclose(net.smoothing.weight.grad.numpy(), [rate * 1, -rate * 4, rate * 9, rate * 36])


def test_smoothing_needs_the_lagrangian_model():
    with pytest.raises(config.UserError, match="smoothing.*needs model.convlstm_unet.lagrangian=true"):
        model.get_model("convlstm_unet", in_channels=1, output_steps=2, smoothing=True)


def test_lagrangian_inputs_are_moved_to_the_last_input_time():
    """The network sees every input frame advected to t0: for frames that are one field moving
    along the motion, all of them look like the last (away from the inflow edge)."""
    frames, target = lagrangian_case(n_inputs=4)
    motion = np.stack([np.full(frames.shape[1:], 1.4), np.full(frames.shape[1:], 0.6)])
    seen = {}

    class Spy(torch.nn.Module):
        in_channels, output_steps = 1, 1

        def forward(self, x):
            seen["x"] = x
            return torch.zeros(x.shape[0], 1, 1, *x.shape[-2:], dtype=x.dtype)
    net = model.Lagrangian(Spy(), [1], target)
    yy, xx = np.mgrid[0:36, 0:44]
    moving = np.stack([np.exp(-((yy - 15 - 0.6 * t) ** 2 + (xx - 12 - 1.4 * t) ** 2) / 30) for t in range(4)])
    net(torch.from_numpy(moving)[None, :, None], torch.from_numpy(motion)[None])
    moved = seen["x"][0, :, 0].numpy()
    interior = (slice(6, 30), slice(8, 40))
    for t in range(3):
        np.testing.assert_allclose(moved[t][interior], moving[-1][interior], atol=0.02)
        assert np.abs(moving[t] - moving[-1])[interior].max() > 0.2  # they differ before the move


def test_upsampling_options_and_icnr_starts_as_nearest_neighbour():
    for upsample in ("transposed", "transposed_icnr", "bilinear"):
        net = model.ConvLSTM_UNet(2, 3, base_channels=4, depth=3, upsample=upsample)
        assert net(torch.randn(1, 2, 2, 20, 12)).shape == (1, 3, 1, 20, 12)
    layer = model.UPSAMPLERS["transposed_icnr"](3, 2)
    x = torch.randn(1, 3, 5, 4)
    y = layer(x)
    torch.testing.assert_close(y, torch.nn.functional.interpolate(y[:, :, ::2, ::2], scale_factor=2, mode="nearest"))
    with pytest.raises(ValueError, match="upsample must be one of"):
        model.ConvLSTM_UNet(2, 3, upsample="pixelshuffle")
