"""pretrain.py (SparK masked image modelling, seed 004) and fine-tuning with training.py --init_weight:
masks, the per-patch normalised loss against a loop written out by hand, the sparse emulation of the
encoder, the learning-rate schedule, resume bit for bit, weight loading and freezing."""
import argparse
import csv
import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import config
import model
import normalization
import pretrain
import training
from conftest import ROOT, tiny_params


# --------------------------------------------------------------------------- masks
@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.6, 0.95])
@pytest.mark.parametrize("mode", ["spatial", "spatiotemporal"])
def test_the_requested_ratio_of_patches_is_masked(ratio, mode):
    visible = pretrain.random_visible(5, 3, (4, 5), ratio, mode, torch.Generator().manual_seed(1))
    assert visible.shape == (5, 3, 4, 5) and visible.dtype == torch.bool
    keep = max(1, round(20 * (1 - ratio)))                     # 20, 14, 8, 1 visible of 20 patches
    assert (visible.sum(dim=(2, 3)) == keep).all()             # in every sample and frame
    same_through_time = (visible == visible[:, :1]).all()
    assert bool(same_through_time) == (mode == "spatial" or keep == 20)


def test_masks_are_identical_under_a_fixed_seed_and_differ_otherwise():
    draw = [pretrain.random_visible(4, 2, (4, 4), 0.5, "spatiotemporal", torch.Generator().manual_seed(s))
            for s in (7, 7, 8)]
    assert torch.equal(draw[0], draw[1]) and not torch.equal(draw[0], draw[2])
    torch.manual_seed(3)
    a = pretrain.random_visible(4, 2, (4, 4), 0.5)
    torch.manual_seed(3)
    assert torch.equal(a, pretrain.random_visible(4, 2, (4, 4), 0.5))
    with pytest.raises(ValueError):
        pretrain.random_visible(1, 1, (2, 2), 1.0)


# --------------------------------------------------------------------------- loss
EPS = 1e-6  # SparK's variance offset, in the unit tests of the loss


def masked_cuts(visible, patch):
    """(b, t, i, j, rows, cols) of every masked (sample, frame, patch), one at a time."""
    B, T, h, w = visible.shape
    for b, t, i, j in itertools.product(range(B), range(T), range(h), range(w)):
        if not visible[b, t, i, j]:
            yield b, t, i, j, slice(i * patch, (i + 1) * patch), slice(j * patch, (j + 1) * patch)


def loss_by_hand(rec, target, visible, patch, eps):
    """The loss written out patch by patch: normalise the target patch, mean squared error, masked mean."""
    errors = []
    for b, t, _, _, rows, cols in masked_cuts(visible, patch):
        x = target[b, t, :, rows, cols].double().numpy()                  # (C, patch, patch)
        mean, var = x.mean(axis=(1, 2), keepdims=True), x.var(axis=(1, 2), keepdims=True)
        normalised = (x - mean) / np.sqrt(var + eps)                      # per channel
        errors.append(np.mean((rec[b, t, :, rows, cols].double().numpy() - normalised) ** 2))
    return np.mean(errors)


def test_loss_equals_the_patch_by_patch_definition():
    g = torch.Generator().manual_seed(4)
    target, rec = torch.rand(2, 3, 2, 8, 12, generator=g), torch.randn(2, 3, 2, 8, 12, generator=g)
    target[0, 0, :, :4, :4] = 0.25                            # a constant ("dry") patch: normalised to 0
    target[1, 2, 1] *= 1000                                    # channel 1 of one frame on another scale
    visible = pretrain.random_visible(2, 3, (2, 3), 0.5, "spatiotemporal", g)
    visible[0, 0, 0, 0] = False
    got = pretrain.masked_patch_loss(rec, target, visible, EPS, patch=4).item()
    assert got == pytest.approx(loss_by_hand(rec, target, visible, 4, EPS), rel=1e-5)


def test_loss_ignores_visible_patches():
    g = torch.Generator().manual_seed(5)
    target, rec = torch.rand(2, 2, 1, 8, 8, generator=g), torch.randn(2, 2, 1, 8, 8, generator=g)
    visible = pretrain.random_visible(2, 2, (2, 2), 0.5, "spatial", g)
    pixels = visible.repeat_interleave(4, -2).repeat_interleave(4, -1)[:, :, None]
    before = pretrain.masked_patch_loss(rec, target, visible, EPS, patch=4)
    noise = torch.randn(rec.shape, generator=g) * 100
    after = pretrain.masked_patch_loss(torch.where(pixels, rec + noise, rec), torch.where(pixels, target + noise, target),
                                       visible, EPS, patch=4)
    assert after.item() == before.item()
    changed = pretrain.masked_patch_loss(torch.where(pixels, rec, rec + 1), target, visible, EPS, patch=4)
    assert changed.item() != before.item()
    assert pretrain.masked_patch_loss(rec, target, torch.ones_like(visible), EPS, patch=4).item() == 0.0


def test_predicting_the_patch_mean_scores_the_share_of_non_constant_patches():
    target = torch.zeros(1, 1, 1, 8, 8)
    target[..., :4, 4:] = torch.arange(16.0).reshape(4, 4)      # one structured patch, three dry ones
    visible = torch.zeros(1, 1, 2, 2, dtype=torch.bool)
    level = pretrain.masked_patch_loss(torch.zeros_like(target), target, visible, EPS, patch=4).item()
    assert level == pytest.approx(1 / 4, rel=1e-6)              # var / (var + 1e-6) on 1 of 4 patches


def test_norm_eps_keeps_trace_rain_patches_near_zero():
    target = torch.zeros(1, 1, 1, 8, 8)
    target[..., 0, 0] = 0.02                                    # one pixel of trace rain in patch (0, 0)
    target[..., 4:, 4:] = torch.arange(16.0).reshape(4, 4) / 10  # a rainy patch: var 0.2125
    visible = torch.zeros(1, 1, 2, 2, dtype=torch.bool)
    var_trace = 0.02 ** 2 * (1 / 16) * (15 / 16)                # one value of 16 differs: p (1 - p) a^2
    var_rain = np.var(np.arange(16.0) / 10)
    for eps in (1e-6, 4e-4):
        level = pretrain.masked_patch_loss(torch.zeros_like(target), target, visible, eps, patch=4).item()
        expected = (var_trace / (var_trace + eps) + var_rain / (var_rain + eps)) / 4
        assert level == pytest.approx(expected, rel=1e-5)
    assert var_trace / (var_trace + 1e-6) > 0.95                # SparK's eps: the trace pixel is a full target
    assert var_trace / (var_trace + 4e-4) < 0.1                 # the default: it is nearly ignored


def interpolation_by_hand(x, visible, patch):
    """temporal_interpolation written out: per masked (sample, frame, patch), scan for the nearest
    visible frame before and after."""
    out, T = x.clone(), x.shape[1]
    for b, t, i, j, rows, cols in masked_cuts(visible, patch):
        near = [next((x[b, u, :, rows, cols] for u in seq if visible[b, u, i, j]), None)
                for seq in (range(t - 1, -1, -1), range(t + 1, T))]
        near = [v for v in near if v is not None]
        out[b, t, :, rows, cols] = sum(near) / len(near) if near else 0.0
    return out


def test_temporal_interpolation_against_a_scan_by_hand():
    g = torch.Generator().manual_seed(9)
    x = torch.rand(3, 5, 2, 8, 12, generator=g)
    visible = pretrain.random_visible(3, 5, (2, 3), 0.5, "spatiotemporal", g)
    visible[0, :, 0, 0] = False                                 # masked in every frame: 0
    visible[1, :, 1, 2] = torch.tensor([False, True, False, False, True])
    got = pretrain.temporal_interpolation(x, visible, patch=4)
    torch.testing.assert_close(got, interpolation_by_hand(x, visible, 4))
    assert (got[0, :, :, :4, :4] == 0).all()
    torch.testing.assert_close(got[1, 2, :, 4:, 8:], (x[1, 1, :, 4:, 8:] + x[1, 4, :, 4:, 8:]) / 2)
    torch.testing.assert_close(got[1, 0, :, 4:, 8:], x[1, 1, :, 4:, 8:])    # nothing before: the one after
    spatial = pretrain.random_visible(3, 5, (2, 3), 0.5, "spatial", g)     # spatial mask: the constant level
    ref = pretrain.temporal_interpolation(x, spatial, patch=4)
    assert pretrain.reference_loss(ref, x, spatial, EPS, patch=4).item() == pytest.approx(
        pretrain.masked_patch_loss(torch.zeros_like(x), x, spatial, EPS, patch=4).item())
    # a reference equal to the target scores 0: reference_loss normalises it as the targets are
    assert pretrain.reference_loss(x, x, visible, EPS, patch=4).item() == pytest.approx(0, abs=1e-9)


def test_patchify_round_trip_and_layout():
    x = torch.arange(2 * 3 * 2 * 8 * 4, dtype=torch.float32).reshape(2, 3, 2, 8, 4)
    patches = pretrain.patchify(x, 4)
    assert patches.shape == (2, 3, 2, 1, 2 * 16)
    torch.testing.assert_close(patches[1, 2, 1, 0], x[1, 2, :, 4:8, 0:4].reshape(-1))
    torch.testing.assert_close(pretrain.unpatchify(patches, x.shape, 4), x)


# --------------------------------------------------------------------------- sparse emulation
def encoder_with_mask(seed=6, arch="resnet18"):
    torch.manual_seed(seed)
    encoder = model.ResNetEncoder(3, arch, 4).double()
    x = torch.randn(4, 3, 64, 96, dtype=torch.float64)
    active = pretrain.random_visible(4, 1, (2, 3), 0.5, generator=torch.Generator().manual_seed(seed))
    pixels = active.repeat_interleave(32, -2).repeat_interleave(32, -1)
    return encoder, x, active, pixels


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_masked_input_pixels_do_not_change_the_encoder_at_visible_positions(arch):
    encoder, x, active, pixels = encoder_with_mask(arch=arch)
    other = torch.where(pixels, x, torch.randn_like(x) * 10)   # new values at masked pixels only
    first = encoder(x * pixels, active)
    second = encoder(other * pixels, active)
    for f, g in zip(first, second):                            # the same features at every stage
        torch.testing.assert_close(f, g, rtol=0, atol=0)
    for f in first:                                            # and nothing at masked positions
        keep = model._block_mask(active, f.shape[-2:]).expand_as(f)
        assert (f[~keep] == 0).all() and (f[keep] != 0).any()


def test_changing_masked_input_pixels_does_change_a_dense_encoder():
    encoder, x, active, pixels = encoder_with_mask()           # the check above can fail
    other = torch.where(pixels, x, torch.randn_like(x) * 10)
    first = encoder(x)[0]
    keep = model._block_mask(active, first.shape[-2:]).expand_as(first)
    assert not torch.equal(first[keep], encoder(other)[0][keep])


def test_mask_aware_batch_norm_uses_the_visible_positions_only():
    torch.manual_seed(7)
    bn = model.MaskedBatchNorm2d(3).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64) + 2
    active = torch.tensor([[[[True, False], [False, True]]], [[[False, False], [True, False]]]])
    y = bn(x, active)
    keep = active.repeat_interleave(4, -2).repeat_interleave(4, -1)[:, 0]
    rows = x.permute(0, 2, 3, 1)[keep]                          # (48, 3): 3 visible 4 x 4 blocks
    expected = (rows - rows.mean(0)) / torch.sqrt(rows.var(0, unbiased=False) + bn.eps)
    torch.testing.assert_close(y.permute(0, 2, 3, 1)[keep], expected)
    assert (y.permute(0, 2, 3, 1)[~keep] == 0).all()
    torch.testing.assert_close(bn.running_mean, 0.1 * rows.mean(0))                    # momentum 0.1 from 0
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * rows.var(0, unbiased=True))  # ... from 1
    assert bn.num_batches_tracked.item() == 1
    bn.eval()                                                    # eval: the running statistics
    expected = (rows - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(bn(x, active).permute(0, 2, 3, 1)[keep], expected)
    plain, masked = torch.nn.BatchNorm2d(3).double(), model.MaskedBatchNorm2d(3).double()
    torch.testing.assert_close(masked(x), plain(x))           # no mask: nn.BatchNorm2d
    torch.testing.assert_close(masked.running_var, plain.running_var)


def test_reconstruct_fills_masked_positions_with_the_mask_tokens():
    torch.manual_seed(8)
    net = model.SparKUNet(1, 2, 2, base_width=4, decoder_width=32)
    x = torch.randn(2, 2, 1, 64, 64)
    visible = pretrain.random_visible(2, 2, (2, 2), 0.5, generator=torch.Generator().manual_seed(2))
    rec = net.reconstruct(x, visible)
    assert rec.shape == x.shape
    pretrain.masked_patch_loss(rec, x, visible, EPS).backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in net.mask_tokens)
    assert all(p.grad is not None for n, p in net.named_parameters() if not n.startswith("transition"))
    with pytest.raises(ValueError, match="multiples of 32"):
        net.reconstruct(torch.randn(2, 2, 1, 48, 64), visible)
    with pytest.raises(ValueError, match="reconstruction needs"):
        model.SparKUNet(1, 1, 2, base_width=4, decoder_width=32).reconstruct(x, visible)


# --------------------------------------------------------------------------- schedule
def test_learning_rate_warms_up_linearly_then_decays_as_a_cosine():
    peak = 2e-4 * 64 / 256
    lrs = [pretrain.lr_at(s, 10, 4, peak) for s in range(10)]
    assert lrs[:4] == pytest.approx([peak / 4, peak / 2, 3 * peak / 4, peak])
    # after warm-up: progress (s - 4) / 6, lr = peak (1 + cos(pi progress)) / 2
    assert lrs[4] == pytest.approx(peak) and lrs[7] == pytest.approx(peak * 0.5)
    assert lrs[9] == pytest.approx(peak * (1 + np.cos(np.pi * 5 / 6)) / 2)
    assert pretrain.lr_at(10, 10, 4, peak) == pytest.approx(0.0, abs=1e-15)
    assert pretrain.lr_at(0, 10, 0, peak) == pytest.approx(peak)


# --------------------------------------------------------------------------- pretrain.py, end to end
def pretrain_params(tmp, processed, **pretraining):
    params = tiny_params(tmp)
    params["paths"]["processed_data"] = processed
    params["data"]["patch_size"] = 64                  # 2 x 2 patches of 32 (the 48 x 40 grid is zero-padded)
    params["model"]["spark_unet"].update(base_width=4, decoder_width=32)
    params["pretraining"].update({"bs": 2, "ep": 2, "steps_per_epoch": 2, "val_steps": 2, "mask": 0.5,
                                  "base_lr": 0.05, **pretraining})
    path = tmp / "params.json"
    path.write_text(json.dumps(params))
    return str(path)


def test_pretrain_resumes_bit_for_bit_and_writes_its_outputs(processed, tmp_path, monkeypatch):
    straight, resumed = tmp_path / "a", tmp_path / "b"
    straight.mkdir(), resumed.mkdir()
    assert pretrain.main(["--config", pretrain_params(straight, processed)]) == 0
    real_validate, calls = pretrain.validate, {"n": 0}

    def interrupted(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt                   # during epoch 2, after epoch 1's checkpoint
        return real_validate(*args)
    monkeypatch.setattr(pretrain, "validate", interrupted)
    cfg = pretrain_params(resumed, processed)
    with pytest.raises(KeyboardInterrupt):
        pretrain.main(["--config", cfg])
    monkeypatch.setattr(pretrain, "validate", real_validate)
    first = torch.load(resumed / "ckpt" / "spark_pretrain" / "last.pt", weights_only=False)
    assert first["epoch"] == 1 and first["step"] == 2
    assert pretrain.main(["--config", cfg, "--resume"]) == 0
    a = torch.load(straight / "ckpt" / "spark_pretrain" / "last.pt", weights_only=False)
    b = torch.load(resumed / "ckpt" / "spark_pretrain" / "last.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"] == 4
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert not all(torch.equal(t, first["model"][n]) for n, t in a["model"].items())
    assert a["input_steps"] == 3 and a["in_channels"] == 4 and a["kind"] == "spark_pretraining"
    with open(resumed / "out" / "spark_pretrain" / "pretrain_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == ["1", "2"] and list(rows[0]) == list(pretrain.LOG_COLUMNS)
    assert 0 < float(rows[1]["val_constant_level"]) <= 1
    assert os.path.getsize(resumed / "out" / "spark_pretrain" / "reconstruction.png") > 10000
    with pytest.raises(config.UserError, match="made with pretraining.mask = 0.5, but the config has 0.3"):
        pretrain.main(["--config", cfg, "--resume", "--mask", "0.3"])


def test_a_window_drawn_again_in_one_epoch_gets_a_new_draw(processed, tmp_path):
    """Pretraining draws crops and turns per pass, not per epoch: with one batch per pass (bs = every
    window), the second pass of an epoch holds samples that the first pass did not."""
    params = config.load_params(pretrain_params(tmp_path, processed))
    frames = pretrain.frames_per_window(params, normalization.load_stats(processed))
    params["pretraining"]["bs"] = len(pretrain.make_loaders(params, frames)[0].dataset)
    loader, _ = pretrain.make_loaders(params, frames)
    assert params["data"]["augment"] and len(loader) == 1
    source = pretrain.batches(loader, params, epoch=0)
    first, second = next(source), next(source)
    repeated = [any(torch.equal(x, y) for y in first) for x in second]
    assert not all(repeated)
    again = pretrain.batches(loader, params, epoch=0)
    assert torch.equal(next(again), first) and torch.equal(next(again), second)  # the same keys, the same draws


def test_pretrain_user_errors_are_one_line(processed, tmp_path):
    cfg = pretrain_params(tmp_path, processed)
    cases = [(["--in_channels", "6"], "pretraining.in_channels: 6 is not a multiple of the 4 input channels"),
             (["--mask", "1"], "--mask: pretraining.mask: expected a ratio below 1"),
             (["--resume"], f"{tmp_path / 'ckpt' / 'spark_pretrain' / 'last.pt'}: checkpoint not found")]
    for flags, message in cases:
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "pretrain.py"), "--config", cfg, *flags],
                              capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.strip().startswith(f"error: {message}"), proc.stderr
    params = json.loads(open(cfg).read())
    params["data"]["patch_size"] = 48
    with pytest.raises(config.UserError, match="data.patch_size: pretraining needs a multiple of 32"):
        pretrain.frames_per_window(params, {"channels": ["a"]})


def test_seed_model_names_are_accepted():
    args = pretrain.parse_args(["--model", "resnet50_chan12", "--in_channels", "12", "--bs", "128"])
    overrides = config.overrides_from(args)
    assert overrides["model.spark_unet.arch"] == "resnet50" and overrides["pretraining.in_channels"] == 12


# --------------------------------------------------------------------------- fine-tuning
@pytest.fixture(scope="module")
def pretrained(processed, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pretrained")
    assert pretrain.main(["--config", pretrain_params(tmp, processed, ep=1)]) == 0
    return str(tmp / "ckpt" / "spark_pretrain" / "best.pt")


def finetune_params(tmp, processed, **training_overrides):
    params = tiny_params(tmp, **training_overrides)
    params["paths"]["processed_data"] = processed
    params["data"]["patch_size"] = 32
    params["model"]["name"] = "spark_unet"
    params["model"]["spark_unet"].update(base_width=4, decoder_width=32)
    path = tmp / "params.json"
    path.write_text(json.dumps(params))
    return str(path)


def test_fine_tuning_loads_the_encoder_bit_for_bit_and_reports_the_rest(pretrained, processed, tmp_path, capsys):
    params = config.load_params(finetune_params(tmp_path, processed))
    net = model.build_model(params, in_channels=4)
    report = training.load_matching_weights(net, pretrained)
    saved = torch.load(pretrained, weights_only=False)["model"]
    own = net.state_dict()
    encoder = [k for k in own if k.startswith("encoder.")]
    assert encoder and all(torch.equal(own[k], saved[k]) for k in encoder)
    # the pretraining head reconstructs 3 frames x 4 channels; the forecast head has output_steps 2
    assert report["mismatched"] == ["head.weight", "head.bias"]
    assert sorted(report["missing"]) == sorted(["head.weight", "head.bias"] + [
        f"transition.maps.{k}.{p}" for k in range(4) for p in ("weight", "bias")])
    assert report["unexpected"] == ["head.weight", "head.bias"]
    assert len(report["loaded"]) == len(saved) - 2
    cfg = finetune_params(tmp_path, processed, epochs=1, init_weight=pretrained)
    assert training.main(["--config", cfg, "--skip_test"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("init_weight"))
    assert f"loaded {len(saved) - 2} tensors" in line and "missing 10 (transition 8, head 2)" in line
    assert "unexpected 2 (head 2); shape differs: head.weight, head.bias" in line


def test_frozen_encoder_does_not_change_in_a_step(pretrained, processed, tmp_path):
    params = config.load_params(finetune_params(tmp_path, processed, init_weight=pretrained, freeze="encoder"))
    net = model.build_model(params, in_channels=4)

    class Quiet:
        main = False
    training.start_from_pretrained(net, params, Quiet())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.1, weight_decay=0.1)
    net.train()
    x = torch.randn(2, 3, 4, 32, 32)
    torch.nn.functional.mse_loss(net(x), torch.randn(2, 2, 1, 32, 32)).backward()
    optimizer.step()
    after = net.state_dict()
    for name in before:
        same = torch.equal(before[name], after[name])
        if name.startswith("encoder."):                       # weights and BN statistics
            assert same, name
        elif name.startswith(("decoder.", "head.")) and name.endswith("weight"):
            assert not same, name
    assert not any(p.requires_grad for p in net.encoder.parameters())
    with pytest.raises(config.UserError, match="training.freeze: 'encoder' needs a model with an encoder"):
        params["model"]["name"], params["training"]["init_weight"] = "convlstm_unet", ""
        training.start_from_pretrained(model.build_model(params, 4), params, Quiet())


def test_init_weight_that_matches_nothing_is_a_user_error(processed, tmp_path):
    params = config.load_params(finetune_params(tmp_path, processed))
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {"encoder.conv1.weight": torch.zeros(3, 3), "other.bias": torch.zeros(2)}}, foreign)
    with pytest.raises(config.UserError, match="no tensor of .*foreign.pt matches the model by name and shape"):
        training.load_matching_weights(model.build_model(params, 4), str(foreign))


def test_pretrain_compare_cuts_events_into_cases_and_holds_out_the_test_event(tmp_path, monkeypatch):
    """bench/pretrain_compare.py's set-up (real_data.plan_cases + write_cases): a training event becomes
    <event>-train (its first part) and <event>-val (its last quarter, at least one 18-step window),
    the held-out event is the test case only, and every frame lands in the raw case layout."""
    monkeypatch.syspath_prepend(os.path.join(ROOT, "bench"))
    import pretrain_compare
    import real_data
    radar = tmp_path / "radar"
    radar.mkdir()
    for name, n in (("knmi-20100826", 40), (real_data.TEST_EVENT, 30)):
        times = np.array([f"20100826{m // 60:02d}{m % 60:02d}" for m in range(0, 5 * n, 5)])
        np.savez(radar / f"{name}.npz", rain_rate=np.ones((n, 8, 8), np.float32), time=times)
    out = tmp_path / "out"
    cfg = pretrain_compare.write_params(str(out), argparse.Namespace(steps_per_epoch=10, pretrain_base_lr=0.032,
                                                                     radar=str(radar)))
    with open(cfg) as fh:
        split = json.load(fh)["data"]["split"]
    assert (split["train"], split["val"], split["test"]) == \
        (["knmi-20100826-train"], ["knmi-20100826-val"], [real_data.TEST_EVENT])
    counts = {case: len(os.listdir(out / "raw" / case / "radar")) for case in os.listdir(out / "raw")}
    assert counts == {"knmi-20100826-train": 40 - 18, "knmi-20100826-val": 18, real_data.TEST_EVENT: 30}
