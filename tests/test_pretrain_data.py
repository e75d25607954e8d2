"""Data of seed 004: pretraining windows over every valid frame (normalization.frame_starts,
dataset.FrameWindowDataset) and the NL-50-style rainy-fraction filter (normalization.rainy_fraction,
rainy_starts), all counted by hand."""
import numpy as np
import pytest

import config
import dataset
import normalization
from lagrangian import rotate_flip
from test_dataset import build, ramp


def test_frame_starts_by_hand():
    valid = np.array([1, 1, 1, 0, 1, 1, 1, 1, 0, 1], bool)
    # runs of valid steps: 0..2 (3 long), 4..7 (4 long), 9 (1 long)
    np.testing.assert_array_equal(normalization.frame_starts(valid, 3), [0, 4, 5])
    np.testing.assert_array_equal(normalization.frame_starts(valid, 1), [0, 1, 2, 4, 5, 6, 7, 9])
    assert len(normalization.frame_starts(valid, 5)) == 0 and len(normalization.frame_starts(valid[:2], 3)) == 0
    with pytest.raises(ValueError):
        normalization.frame_starts(valid, 0)


def test_frame_windows_use_every_valid_frame_and_need_no_target(params, tmp_path):
    # case a: 12 steps, 7..10 missing (> max_gap 3: invalid); b: 5 steps, all valid
    cases = {"a": (12, {7, 8, 9, 10}, ramp((24, 20))), "b": (5, set(), ramp((24, 20)))}
    p, out = build(params, tmp_path, cases, {"train": ["a", "b"], "val": [], "test": []},
                   input_steps=3, lead_steps=2, output_steps=2, patch_size=16)
    frames = dataset.FrameWindowDataset(str(out / "train"), p, frames=3)
    # a: valid 0..6 and 11 -> starts 0..4; b: valid 0..4 -> starts 0..2 (a forecast window of 3 + 2 + 2
    # steps would leave out a's steps 5, 6 as inputs and b entirely)
    np.testing.assert_array_equal(frames.sample_map, [[0, 0], [0, 1], [0, 2], [0, 3], [0, 4],
                                                      [1, 0], [1, 1], [1, 2]])
    used = {(int(c), int(s) + k) for c, s in frames.sample_map for k in range(3)}
    assert used == {(0, t) for t in range(7)} | {(1, t) for t in range(5)}   # every frame of a run >= 3 long
    sample = frames[6]                                  # case b, steps 1..3
    assert set(sample) == {"x", "time", "case"} and sample["case"] == "b"
    assert sample["x"].shape == (3, 1, 16, 16)
    crop = frames.crop(6)
    stored = frames._store(1)["inputs"][1:4, :, crop[0]:crop[0] + 16, crop[1]:crop[1] + 16]
    turned, _ = rotate_flip(stored, None, *frames.turn_draw(6))   # data.augment: ZarrPatchDataset's turn
    np.testing.assert_array_equal(sample["x"].numpy(), turned)
    val = dataset.FrameWindowDataset(str(out / "train"), p, frames=3, train=False)
    assert val.crop(0) == ((24 - 16) // 2, (20 - 16) // 2, 16, 16)   # held-out: the centre crop


def test_rainy_fraction_by_hand():
    frames = np.array([[[0.0, 0.1, 0.6], [np.nan, 2.0, 0.0]],     # 5 covered (NaN is not), 3 rain > 0
                       [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],        # dry
                       [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]])       # coverage below: 2 covered, both rain
    coverage = np.array([np.ones((2, 3), bool), np.ones((2, 3), bool), [[1, 1, 0], [0, 0, 0]]], bool)
    np.testing.assert_allclose(normalization.rainy_fraction(frames, coverage), [3 / 5, 0.0, 1.0])
    np.testing.assert_allclose(normalization.rainy_fraction(frames, coverage, threshold=0.5), [2 / 5, 0.0, 1.0])
    # strictly above: a pixel exactly at the threshold is not rainy (SmaAt-UNet: value > 0)
    np.testing.assert_allclose(normalization.rainy_fraction(frames, coverage, threshold=1.0), [1 / 5, 0.0, 0.0])
    assert np.isnan(normalization.rainy_fraction(frames[:1], np.zeros((2, 3), bool)))[0]


def test_rainy_starts_filter_counts_by_hand():
    fractions = np.array([0.9, 0.2, 0.5, 0.7, np.nan, 0.6, 0.49, 0.8])
    data = {"input_steps": 2, "lead_steps": 1, "output_steps": 1}   # inputs s, s+1; target s+2
    starts = np.arange(6)                                            # targets 2..7
    # target fractions 0.5, 0.7, nan, 0.6, 0.49, 0.8 -> >= 0.5 at starts 0, 1, 3, 5
    np.testing.assert_array_equal(normalization.rainy_starts(starts, fractions, data, 0.5), [0, 1, 3, 5])
    np.testing.assert_array_equal(normalization.rainy_starts(starts, fractions, data, 0.0), starts)
    np.testing.assert_array_equal(normalization.rainy_starts(starts, fractions, data, 0.65), [1, 5])
    # two targets (s+2, s+3): both must pass; starts 0..4 -> pairs (0.5,0.7) (0.7,nan) (nan,0.6) (0.6,0.49) (0.49,0.8)
    data2 = {"input_steps": 2, "lead_steps": 1, "output_steps": 2}
    np.testing.assert_array_equal(normalization.rainy_starts(np.arange(5), fractions, data2, 0.5), [0])


def test_rain_filter_keeps_the_windows_counted_by_hand(params, tmp_path):
    # rain (1 mm/h) on the first k(t) of 24 rows: rainy fraction k / 24; >= 0.5 when k >= 12
    rows = [24, 0, 12, 18, 6, 24, 11, 13, 0, 12]
    yy = np.mgrid[0:24, 0:20][0]
    cases = {"a": (10, set(), lambda t: (yy < rows[t]).astype(float))}
    p, out = build(params, tmp_path, cases, {"train": ["a"], "val": [], "test": []},
                   input_steps=2, lead_steps=1, output_steps=1, patch_size=16, rain_filter_fraction=0.5)
    # windows s = 0..7, target s + 2: k = 12, 18, 6, 24, 11, 13, 0, 12 -> kept s = 0, 1, 3, 5, 7
    np.testing.assert_array_equal(dataset.ZarrPatchDataset(str(out / "train"), p).sample_map[:, 1], [0, 1, 3, 5, 7])
    p["data"]["rain_filter_fraction"] = 0.7                   # k >= 16.8: 18, 24 -> s = 1, 3
    np.testing.assert_array_equal(dataset.ZarrPatchDataset(str(out / "train"), p).sample_map[:, 1], [1, 3])
    p["data"]["rain_filter_threshold"] = 1.0                  # strictly above 1 mm/h: no pixel
    with pytest.raises(config.UserError, match="rain_filter_fraction"):
        dataset.ZarrPatchDataset(str(out / "train"), p)
    p["data"]["rain_filter_fraction"] = 0.0                   # off: all 8 windows
    assert len(dataset.ZarrPatchDataset(str(out / "train"), p)) == 8


def test_seed004_protocol_sets_its_keys_and_explicit_flags_win():
    import argparse
    parser = config.add_protocol_arg(config.add_override_flags(
        argparse.ArgumentParser(), [("--lead_steps", "data.lead_steps"), ("--batch_size", "training.batch_size")]))
    overrides = config.overrides_from(parser.parse_args(["--protocol", "seed004", "--lead_steps", "3"]))
    assert overrides == {"data.input_steps": 12, "data.lead_steps": 3, "data.output_steps": 1,
                         "data.rain_filter_fraction": 0.5, "data.rain_filter_threshold": 0.0,
                         "evaluation.thresholds": [0.5], "training.batch_size": None}
    assert config.overrides_from(parser.parse_args([])) == {"data.lead_steps": None, "training.batch_size": None}
