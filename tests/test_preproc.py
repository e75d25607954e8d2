"""preproc.py: alignment, gap filling, validity, split, statistics, normalisation, bad input, real events."""
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import zarr

import config
import normalization
import preproc
from conftest import RADAR_DIR

T0 = dt.datetime(2024, 6, 1, 0, 0)
GRID = (4, 5)
YY, XX = np.mgrid[0:GRID[0], 0:GRID[1]].astype(np.float32)


def save(raw, case, source, step, array, minutes=5):
    """Write raw/<case>/<source>/<time of `step`>.npy."""
    folder = os.path.join(raw, case, source)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{T0 + dt.timedelta(minutes=minutes * step):%Y%m%d%H%M}.npy")
    np.save(path, np.asarray(array, dtype=np.float32))
    return path


def rain(t):
    """Radar rain rate (mm/h) at step t: linear in t, so linear interpolation reproduces it exactly."""
    return 0.5 * t + 0.1 * YY + 0.01 * XX


def nwp(t):
    """Three NWP channels at step t, linear in t: channel c = 100 c + t + y."""
    return np.stack([100.0 * c + t + YY for c in range(3)])


def configure(params, raw, out, **data):
    params = json.loads(json.dumps(params))
    params["paths"].update(raw_dataset=str(raw), processed_data=str(out))
    params["data"].update(data)
    return config.validate(params)


def one_case_split(case):
    return {"train": [case], "val": [], "test": [], "seed": 0}


def open_store(out, split, case):
    return zarr.open_group(os.path.join(out, split, f"{case}.zarr"), mode="r")


def physical_inputs(root, stats):
    """Stored inputs (T, C, H, W) back to physical units with stats.json."""
    x = root["inputs"][:].astype(np.float64)
    return np.stack([normalization.denormalize(x[:, c], stats["min"][c], stats["max"][c], stats["transform"][c])
                     for c in range(x.shape[1])], axis=1)


def write_aligned_case(raw, case="c1", radar_missing=(5, 10, 11, 12, 13), nwp_steps=(0, 12, 24), n_steps=30):
    """5-minute radar (steps 0..n_steps-1 minus radar_missing) and hourly 3-channel NWP.

    Pixel (0, 0) is NaN at step 20 only; pixel (1, 1) at steps 20..23.
    """
    for t in range(n_steps):
        if t in radar_missing:
            continue
        frame = rain(t)
        if t == 20:
            frame[0, 0] = np.nan
        if 20 <= t <= 23:
            frame[1, 1] = np.nan
        save(raw, case, "radar", t, frame)
    for t in nwp_steps:
        save(raw, case, "nwp", t, nwp(t))


# --------------------------------------------------------------------------- alignment and gaps
def test_alignment_missing_files_and_coarse_source(params, tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_aligned_case(raw)
    summary = preproc.preprocess(configure(params, raw, out, split=one_case_split("c1")), progress=False)
    root = open_store(out, "train", "c1")
    stats = json.loads((out / "stats.json").read_text())

    minutes = int((T0 - preproc.EPOCH).total_seconds()) // 60
    np.testing.assert_array_equal(root["time"][:], minutes + 5 * np.arange(30))  # earliest .. latest file
    expected_valid = np.ones(30, bool)
    expected_valid[10:14] = False  # 4 missing radar files > max_gap_steps 3
    expected_valid[25:] = False    # after the last NWP file
    np.testing.assert_array_equal(root["valid"][:], expected_valid)
    assert summary["steps_filled"] == 1 and summary["steps_invalid"] == 9
    assert root.attrs["native_step_minutes"] == {"radar": 5, "nwp": 60}

    x = physical_inputs(root, stats)
    coverage = root["coverage"][:]
    for t in np.flatnonzero(expected_valid):
        # NWP: hourly files interpolated on the 5-minute axis (exact: the fields are linear in t)
        np.testing.assert_allclose(x[t, 1:], nwp(t), rtol=1e-5, atol=1e-4, err_msg=f"step {t}")
        expected = rain(t)
        if t == 20:
            expected[0, 0] = rain(t)[0, 0]  # a one-step NaN in the pixel: filled from steps 19 and 21
        if 20 <= t <= 23:
            expected[1, 1] = np.nan          # a four-step NaN run: not filled
        np.testing.assert_array_equal(coverage[t], np.isfinite(expected), err_msg=f"step {t}")
        np.testing.assert_allclose(x[t, 0][coverage[t]], expected[coverage[t]], rtol=1e-5, atol=1e-6,
                                   err_msg=f"step {t}")
    assert np.all(root["inputs"][20:24, 0, 1, 1] == 0) and np.all(root["target"][20:24, 1, 1] == 0)
    assert not coverage[10:14].any()  # the unfilled radar gap has no target data


@pytest.mark.parametrize("max_gap, filled", [(2, []), (3, [3]), (4, [3, 4])])
def test_gap_filling_at_and_beyond_max_gap(params, tmp_path, max_gap, filled):
    """A run of 3 and a run of 4 missing radar files: filled exactly when the run <= max_gap_steps."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    runs = {3: range(4, 7), 4: range(12, 16)}
    write_aligned_case(raw, radar_missing=[t for r in runs.values() for t in r], nwp_steps=(0, 12, 24))
    preproc.preprocess(configure(params, raw, out, max_gap_steps=max_gap, split=one_case_split("c1")),
                       progress=False)
    root = open_store(out, "train", "c1")
    stats = json.loads((out / "stats.json").read_text())
    valid, x = root["valid"][:], physical_inputs(root, stats)
    for length, steps in runs.items():
        assert valid[list(steps)].all() == (length in filled)
        if length in filled:
            for t in steps:
                np.testing.assert_allclose(x[t, 0], rain(t), rtol=1e-5)
        else:
            assert not root["coverage"][list(steps)].any()


def test_coarse_source_interpolated_whatever_max_gap(params, tmp_path):
    """max_gap_steps 0: a missing radar file is not filled, hourly NWP still is between its times."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_aligned_case(raw, radar_missing=(5,))
    preproc.preprocess(configure(params, raw, out, max_gap_steps=0, split=one_case_split("c1")), progress=False)
    root = open_store(out, "train", "c1")
    x = physical_inputs(root, json.loads((out / "stats.json").read_text()))
    valid = root["valid"][:]
    assert not valid[5] and valid[:25].sum() == 24
    for t in (1, 6, 11, 13, 23):
        np.testing.assert_allclose(x[t, 1:], nwp(t), rtol=1e-5, atol=1e-4)


def test_missing_coarse_file_is_a_gap(params, tmp_path):
    """NWP at 0, 12, 36, 48 (native step 12): the 01:00 file missing leaves 23 steps invalid."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_aligned_case(raw, radar_missing=(), nwp_steps=(0, 12, 36, 48), n_steps=49)
    preproc.preprocess(configure(params, raw, out, split=one_case_split("c1")), progress=False)
    valid = open_store(out, "train", "c1")["valid"][:]
    np.testing.assert_array_equal(np.flatnonzero(~valid), np.arange(13, 36))


def test_place_source_rules():
    """Native step = most common difference; runs up to max(max_gap, native - 1) are filled."""
    placed = preproc.place_source(np.array([0, 2, 4, 10, 12]), 14, 3)  # 10-minute source on a 5-minute axis
    assert placed["native_steps"] == 2 and placed["max_gap"] == 3
    np.testing.assert_array_equal(placed["valid"], [1] * 5 + [0] * 5 + [1] * 3 + [0])  # 4..10: run 5 > 3
    assert placed["steps_filled"] == 0
    placed = preproc.place_source(np.array([0, 1, 2, 5, 6]), 7, 3)
    assert placed["native_steps"] == 1 and placed["steps_filled"] == 2 and placed["valid"].all()


# --------------------------------------------------------------------------- split and statistics
def copy_raw(raw_cases, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(raw_cases["dir"], raw)
    return raw


def test_no_leakage_val_test_cases_do_not_change_stats(params, raw_cases, tmp_path):
    raw = copy_raw(raw_cases, tmp_path)
    p = configure(params, raw, tmp_path / "a", lead_steps=6)
    preproc.preprocess(p, progress=False)
    before = json.loads((tmp_path / "a" / "stats.json").read_text())
    for case in before["split"]["val"] + before["split"]["test"]:  # much larger values in val/test
        for source in ("radar", "nwp"):
            for name in os.listdir(raw / case / source):
                path = raw / case / source / name
                np.save(path, np.load(path) * 10 + 50)
    preproc.preprocess(configure(p, raw, tmp_path / "b"), progress=False)
    after = json.loads((tmp_path / "b" / "stats.json").read_text())
    assert after == before
    # the same change to a training case does change them (the check above can fail)
    train_case = before["split"]["train"][0]
    for name in os.listdir(raw / train_case / "radar"):
        path = raw / train_case / "radar" / name
        np.save(path, np.load(path) * 10 + 50)
    preproc.preprocess(configure(p, raw, tmp_path / "c"), progress=False)
    changed = json.loads((tmp_path / "c" / "stats.json").read_text())
    assert changed["max"][0] > before["max"][0]


def test_stats_are_train_min_max_after_transform(params, raw_cases, tmp_path):
    """stats.json equals a brute-force min/max over the raw training files; training data spans [0, 1]."""
    out = tmp_path / "out"
    preproc.preprocess(configure(params, raw_cases["dir"], out, lead_steps=6), progress=False)
    stats = json.loads((out / "stats.json").read_text())
    radar_values, nwp_values = [], []
    for case in stats["split"]["train"]:
        for name in os.listdir(os.path.join(raw_cases["dir"], case, "radar")):
            radar_values.append(np.load(os.path.join(raw_cases["dir"], case, "radar", name)).ravel())
        for name in os.listdir(os.path.join(raw_cases["dir"], case, "nwp")):
            nwp_values.append(np.load(os.path.join(raw_cases["dir"], case, "nwp", name)).reshape(3, -1))
    radar, nwp_values = np.concatenate(radar_values), np.concatenate(nwp_values, axis=1)
    assert stats["channels"] == ["rain_rate", "t2m", "tcwv", "cape"]
    assert stats["min"][0] == pytest.approx(np.log1p(max(np.nanmin(radar), 0)))
    assert stats["max"][0] == pytest.approx(np.log1p(np.nanmax(radar)))
    for c in range(3):
        assert stats["min"][c + 1] == pytest.approx(np.nanmin(nwp_values[c]))
        assert stats["max"][c + 1] == pytest.approx(np.nanmax(nwp_values[c]))
    assert stats["target"]["min"] == stats["min"][0] and stats["target"]["max"] == stats["max"][0]
    for case in stats["split"]["train"]:
        root = open_store(out, "train", case)
        x = root["inputs"][:]
        assert x.min() >= 0 and x.max() <= 1 + 1e-6
    joined = np.concatenate([open_store(out, "train", c)["inputs"][:] for c in stats["split"]["train"]])
    np.testing.assert_allclose(joined.max(axis=(0, 2, 3)), 1.0, rtol=1e-6)  # each channel reaches its max


def test_ratio_split_rules():
    ids = [f"c{i:02d}" for i in range(10)]
    split = preproc.split_cases(ids, {"train": 0.7, "val": 0.15, "test": 0.15, "seed": 1})
    assert [len(split[s]) for s in preproc.SPLITS] == [7, 2, 1]  # 7 / 1.5 / 1.5: largest remainder, first wins
    assert sorted(sum(split.values(), [])) == ids
    assert split == preproc.split_cases(ids[::-1], {"train": 0.7, "val": 0.15, "test": 0.15, "seed": 1})
    assert split != preproc.split_cases(ids, {"train": 0.7, "val": 0.15, "test": 0.15, "seed": 2})
    three = preproc.split_cases(["a", "b", "c"], {"train": 0.7, "val": 0.15, "test": 0.15, "seed": 0})
    assert [len(three[s]) for s in preproc.SPLITS] == [1, 1, 1]  # every asked-for split gets a case


def test_skipping_a_bad_case_keeps_every_other_case_in_its_split():
    ids = [f"c{i:02d}" for i in range(10)]
    ratios = {"train": 0.6, "val": 0.2, "test": 0.2, "seed": 4}
    full = preproc.split_cases(ids, ratios)
    for bad in ids:
        split = preproc.split_cases([c for c in ids if c != bad], ratios, skipped={bad: "reason"})
        assert split == {name: [c for c in full[name] if c != bad] for name in preproc.SPLITS}


def test_explicit_split_lists(params, raw_cases, tmp_path):
    ids = sorted(raw_cases["cases"])
    out = tmp_path / "out"
    split = {"train": ids[1:3], "val": [ids[0]], "test": [], "seed": 0}
    summary = preproc.preprocess(configure(params, raw_cases["dir"], out, split=split, lead_steps=6), progress=False)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["split"] == {"train": ids[1:3], "val": [ids[0]], "test": []}
    assert sorted(os.listdir(out / "train")) == [f"{c}.zarr" for c in ids[1:3]]
    assert os.listdir(out / "val") == [f"{ids[0]}.zarr"] and os.listdir(out / "test") == []
    assert summary["unassigned"] == [ids[3]]
    # a second run with another split removes the stores that moved (no stale val case left)
    split2 = {"train": ids[1:3], "val": [], "test": [ids[0]], "seed": 0}
    summary = preproc.preprocess(configure(params, raw_cases["dir"], out, split=split2, lead_steps=6),
                                 progress=False)
    assert os.listdir(out / "val") == [] and os.listdir(out / "test") == [f"{ids[0]}.zarr"]
    assert summary["removed_stale"] == 1
    with pytest.raises(config.UserError, match="'nope' not found"):
        preproc.split_cases(ids, {"train": ["nope"], "val": [], "test": [], "seed": 0})
    with pytest.raises(config.UserError, match="in both train and test"):
        preproc.split_cases(ids, {"train": [ids[0]], "val": [], "test": [ids[0]], "seed": 0})


# --------------------------------------------------------------------------- normalisation
def test_normalisation_round_trip():
    torch = pytest.importorskip("torch")
    x = np.array([0.0, 0.3, 2.0, 17.5, 120.0], dtype=np.float32)
    lo, hi = float(np.log1p(0.0)), float(np.log1p(120.0))
    y = normalization.normalize(x, lo, hi, "log1p")
    np.testing.assert_allclose(y, np.log1p(x) / np.log1p(120.0), rtol=1e-6)  # hand formula
    assert y.min() == 0 and y.max() == pytest.approx(1)
    np.testing.assert_allclose(normalization.denormalize(y, lo, hi, "log1p"), x, rtol=1e-5, atol=1e-6)
    stats = {"target": {"min": lo, "max": hi, "transform": "log1p"}}
    back = normalization.denormalize_target(torch.from_numpy(y), stats)
    assert isinstance(back, torch.Tensor)
    np.testing.assert_allclose(back.numpy(), x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(normalization.normalize_target(x, stats), y)
    assert normalization.normalize(np.float32(-0.4), lo, hi, "log1p") == 0  # negative rain counts as 0
    assert normalization.denormalize(np.float32(-0.1), lo, hi, "log1p") == 0  # predictions below 0 -> 0 mm/h
    t = np.array([280.0, 290.0, 300.0])
    np.testing.assert_allclose(normalization.denormalize(normalization.normalize(t, 280, 300, "none"), 280, 300, "none"), t)
    np.testing.assert_array_equal(normalization.normalize(np.full(3, 5.0), 5.0, 5.0, "none"), 0)  # max == min


def test_stored_target_matches_raw_files(params, raw_cases, tmp_path):
    """denormalize_target(stored target) = max(raw radar, 0) wherever a raw file has a value."""
    out = tmp_path / "out"
    preproc.preprocess(configure(params, raw_cases["dir"], out, lead_steps=6), progress=False)
    stats = normalization.load_stats(str(out))
    case = stats["split"]["test"][0]
    root = open_store(out, "test", case)
    target, coverage = root["target"][:], root["coverage"][:]
    minutes = root["time"][:]
    folder = os.path.join(raw_cases["dir"], case, "radar")
    for name in sorted(os.listdir(folder)):
        stamp = dt.datetime.strptime(name[:-4], "%Y%m%d%H%M")
        t = int(np.flatnonzero(minutes == int((stamp - preproc.EPOCH).total_seconds()) // 60)[0])
        raw = np.load(os.path.join(folder, name))
        seen = np.isfinite(raw)
        assert coverage[t][seen].all()
        np.testing.assert_allclose(normalization.denormalize_target(target[t], stats)[seen], np.maximum(raw[seen], 0),
                                   rtol=1e-5, atol=1e-5)


def test_separate_target_source(params, raw_cases, tmp_path):
    """Target 'label' (not an input): its own min/max, stored target = the label files."""
    out = tmp_path / "out"
    p = configure(params, raw_cases["dir"], out, lead_steps=6, target={"source": "label", "channel": "rain_rate"})
    preproc.preprocess(p, progress=False)
    stats = normalization.load_stats(str(out))
    labels = [np.load(os.path.join(raw_cases["dir"], c, "label", n)) for c in stats["split"]["train"]
              for n in os.listdir(os.path.join(raw_cases["dir"], c, "label"))]
    assert stats["target"]["source"] == "label" and stats["channels"] == ["rain_rate", "t2m", "tcwv", "cape"]
    assert stats["target"]["max"] == pytest.approx(np.log1p(max(np.nanmax(v) for v in labels)))
    assert stats["target"]["max"] != stats["max"][0]
    case = stats["split"]["val"][0]
    root = open_store(out, "val", case)
    first = sorted(os.listdir(os.path.join(raw_cases["dir"], case, "label")))[0]
    label = np.load(os.path.join(raw_cases["dir"], case, "label", first))
    np.testing.assert_allclose(normalization.denormalize_target(root["target"][0], stats), np.maximum(label, 0),
                               rtol=1e-5, atol=1e-5)


def test_rerun_writes_identical_stores(params, raw_cases, tmp_path):
    out = tmp_path / "out"
    p = configure(params, raw_cases["dir"], out, lead_steps=6)

    def snapshot():
        files = {}
        for folder, _, names in os.walk(out):
            for name in names:
                path = os.path.join(folder, name)
                files[os.path.relpath(path, out)] = open(path, "rb").read()
        return files

    preproc.preprocess(p, progress=False)
    first = snapshot()
    preproc.preprocess(p, progress=False)
    assert snapshot() == first
    assert any(k.endswith(os.path.join("inputs", "zarr.json")) for k in first)
    root = open_store(out, "train", json.loads(first["stats.json"])["split"]["train"][0])
    assert root.attrs["channels"] == ["rain_rate", "t2m", "tcwv", "cape"] and root["inputs"].dtype == np.float32


# --------------------------------------------------------------------------- bad input
def break_missing_source(case_dir):
    shutil.rmtree(case_dir / "nwp")
    return "nwp", "source folder"


def break_grid(case_dir):
    path = sorted((case_dir / "radar").iterdir())[3]
    np.save(path, np.zeros((GRID[0] + 1, GRID[1]), np.float32))
    return path.name, "grid 5x5 differs from 4x5"


def break_garbage(case_dir):
    path = sorted((case_dir / "radar").iterdir())[2]
    path.write_bytes(b"this is not a numpy file")
    return path.name, "cannot load"


def break_truncated(case_dir):
    path = sorted((case_dir / "radar").iterdir())[2]
    path.write_bytes(path.read_bytes()[:-20])
    return path.name, "cannot load"


def break_channels(case_dir):
    path = sorted((case_dir / "nwp").iterdir())[1]
    np.save(path, np.zeros((2,) + GRID, np.float32))
    return path.name, "expected 3 channel"


def break_name(case_dir):
    np.save(case_dir / "radar" / "2024-06-01T0000.npy", rain(0))
    return "2024-06-01T0000.npy", "not a time"


def break_off_axis(case_dir):
    np.save(case_dir / "radar" / "202406010002.npy", rain(0))
    return "202406010002.npy", "not on the 5-minute axis"


def break_dtype(case_dir):
    path = sorted((case_dir / "radar").iterdir())[4]
    np.save(path, np.array([["a"] * GRID[1]] * GRID[0]))
    return path.name, "expected a float"


@pytest.mark.parametrize("breaker", [break_missing_source, break_grid, break_garbage, break_truncated,
                                     break_channels, break_name, break_off_axis, break_dtype])
def test_bad_input_names_case_and_file(params, tmp_path, breaker, capsys):
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_aligned_case(raw, "bad")
    write_aligned_case(raw, "good")
    needle, reason = breaker(raw / "bad")
    split = {"train": ["good", "bad"], "val": [], "test": [], "seed": 0}
    p = configure(params, raw, out, split=split)
    with pytest.raises(config.UserError) as info:
        preproc.preprocess(p, progress=False)
    message = str(info.value)
    assert "case bad" in message and needle in message and reason in message and "\n" not in message
    summary = preproc.preprocess(p, skip_bad_cases=True, progress=False)
    assert list(summary["skipped"]) == ["bad"] and summary["split"]["train"] == ["good"]
    assert os.listdir(out / "train") == ["good.zarr"]
    assert "skipped: case bad" in capsys.readouterr().out


def test_command_line_error_and_summary(params, params_file, tmp_path, capsys):
    """The script: one error line and exit 2 on bad input; a summary line on success."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_aligned_case(raw, "c1")
    cfg = params_file(configure(params, raw, out, split=one_case_split("c1")))
    assert preproc.main(["--config", cfg]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("preproc: 1 cases")
    with pytest.raises(SystemExit) as info:
        config.run_main(preproc.main, ["--config", cfg, "--raw-dataset", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "nowhere" in err


# --------------------------------------------------------------------------- motion
def test_stored_motion_equals_motion_field_of_the_stored_frames(params, tmp_path):
    import baselines
    raw, out = tmp_path / "raw", tmp_path / "out"
    yy, xx = np.mgrid[0:48, 0:56].astype(np.float32)
    for t in range(8):  # two blobs moving 1.5 px/step along x and -0.5 along y; a NaN corner (no radar)
        frame = 12 * np.exp(-((yy - 30 + 0.5 * t) ** 2 + (xx - 12 - 1.5 * t) ** 2) / 40) + \
            6 * np.exp(-((yy - 14 + 0.5 * t) ** 2 + (xx - 20 - 1.5 * t) ** 2) / 25)
        frame[:6, :6] = np.nan
        save(raw, "c1", "radar", t, frame)
    p = configure(params, raw, out, split=one_case_split("c1"), inputs={"radar": ["rain_rate"]},
                  input_steps=2, lead_steps=1)
    preproc.preprocess(p, progress=False)
    root, stats = open_store(out, "train", "c1"), normalization.load_stats(str(out))
    motion = root["motion"][:]
    assert motion.shape == (8, 2, 12, 14) and motion.dtype == np.float32 and root["motion"].attrs["stride"] == 4
    assert not motion[0].any()  # one frame: no motion
    for t in (1, 5, 7):
        frames = normalization.denormalize_target(root["target"][max(0, t - 2):t + 1].astype(np.float64), stats)
        frames[~root["coverage"][max(0, t - 2):t + 1]] = np.nan
        full = baselines.motion_field(frames)
        np.testing.assert_array_equal(motion[t], full[:, ::4, ::4].astype(np.float32))  # every 4th pixel
        # what a training crop gets back: the full-resolution field, to a small fraction of a pixel
        import dataset
        crop = dataset.motion_crop(root["motion"][t], 4, slice(5, 37), slice(9, 50))
        np.testing.assert_allclose(crop, full[:, 5:37, 9:50], atol=0.02)
    rainy = root["target"][5] > 0.2
    full5 = baselines.motion_field(normalization.denormalize_target(root["target"][3:6].astype(np.float64), stats))
    assert abs(np.median(full5[0][rainy]) - 1.5) < 0.2 and abs(np.median(full5[1][rainy]) + 0.5) < 0.2


def test_motion_on_worker_processes_equals_one_process(params, params_file, tmp_path, capsys):
    """preproc --workers 2 (spawned processes reading the store being written) writes the same stores."""
    raw = tmp_path / "raw"
    yy, xx = np.mgrid[0:40, 0:44].astype(np.float32)
    for t in range(7):
        save(raw, "c1", "radar", t, 9 * np.exp(-((yy - 20 + 0.7 * t) ** 2 + (xx - 10 - 2.0 * t) ** 2) / 30))
    stores = []
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        cfg = params_file(configure(params, raw, out, split=one_case_split("c1"), inputs={"radar": ["rain_rate"]},
                                    input_steps=2, lead_steps=1))
        assert preproc.main(["--config", cfg, "--workers", str(workers)]) == 0
        stores.append(open_store(out, "train", "c1"))
    assert np.abs(stores[0]["motion"][3]).max() > 1.0  # a real field, not the fill value
    for name in ("motion", "target", "coverage", "inputs"):
        np.testing.assert_array_equal(stores[1][name][:], stores[0][name][:])
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        config.run_main(preproc.main, ["--config", cfg, "--workers", "-2"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "--workers -2" in err


# --------------------------------------------------------------------------- data that must not look good
def test_negative_rain_rates_are_no_data_and_said(params, tmp_path, capsys):
    """A -9999 no-data flag and a -0.5 artefact: dropped as no data (coverage False), stats unchanged."""
    raw, out, clean_out = tmp_path / "raw", tmp_path / "out", tmp_path / "clean"
    write_aligned_case(raw, "c1", radar_missing=())
    p = configure(params, raw, clean_out, split=one_case_split("c1"), max_gap_steps=0)
    preproc.preprocess(p, progress=False)
    clean_stats = json.loads((clean_out / "stats.json").read_text())
    frame = rain(3)
    frame[2, 2], frame[3, 4] = -9999.0, -0.5
    save(raw, "c1", "radar", 3, frame)
    preproc.preprocess(configure(params, raw, out, split=one_case_split("c1"), max_gap_steps=0), progress=False)
    assert "warning: case c1: 2 negative rain-rate values (lowest -9999) treated as no data" in capsys.readouterr().out
    stats = json.loads((out / "stats.json").read_text())
    assert stats["min"] == clean_stats["min"] and stats["max"] == clean_stats["max"]
    root = open_store(out, "train", "c1")
    assert not root["coverage"][3, 2, 2] and not root["coverage"][3, 3, 4] and root["coverage"][3].sum() == 18
    assert root.attrs["negative_values_dropped"] == 2
    kept = rain(3)
    kept[2, 2] = kept[3, 4] = np.nan
    assert root["rain_max"][3].max() == pytest.approx(np.nanmax(kept))  # the dropped pixels count for nothing


def test_case_without_radar_coverage_is_skipped_and_not_counted(params, tmp_path, capsys):
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_aligned_case(raw, "c1")
    write_aligned_case(raw, "c2")
    for name in os.listdir(raw / "c2" / "radar"):  # c2: radar files there, but NaN everywhere
        np.save(raw / "c2" / "radar" / name, np.full(GRID, np.nan, np.float32))
    split = {"train": ["c1"], "val": ["c2"], "test": [], "seed": 0}
    summary = preproc.preprocess(configure(params, raw, out, split=split, input_steps=2, lead_steps=1),
                                 progress=False)
    assert "skipped: case c2: the target radar/rain_rate has no data at any step (no radar coverage)" \
        in capsys.readouterr().out
    assert summary["split"]["val"] == [] and summary["samples"]["val"] == 0 and "c2" in summary["skipped"]
    assert not (out / "val" / "c2.zarr").exists()
    assert json.loads((out / "stats.json").read_text())["split"]["val"] == []


def test_no_usable_window_is_said_in_one_line(params, params_file, tmp_path, capsys):
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_aligned_case(raw, "c1")  # 30 steps; the last valid one is 24 (after it, no NWP)
    cfg = params_file(configure(params, raw, out, split=one_case_split("c1"), input_steps=6, lead_steps=20))
    assert preproc.main(["--config", cfg]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "warning: no usable train window: a sample spans 26 steps (data.input_steps 6 + data.lead_steps 20 + " \
           "data.output_steps 1 - 1) with valid inputs and targets; the longest train case has 30 steps" in lines
    assert "samples train 0," in lines[-1]


# --------------------------------------------------------------------------- real radar events
def first_frames(path, n_frames):
    """rain_rate[:n_frames] of an event .npz, decompressing only those frames; and their times."""
    with zipfile.ZipFile(path) as archive, archive.open("rain_rate.npy") as fh:
        major, _ = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
        assert not fortran
        count = n_frames * shape[1] * shape[2]
        frames = np.frombuffer(fh.read(count * dtype.itemsize), dtype).reshape(n_frames, *shape[1:])
    with np.load(path) as z:
        return frames, z["time"][:n_frames]


def write_real_subset(raw, n_frames):
    """The first n_frames of each real event, in the raw case layout."""
    events = {}
    for name in sorted(os.listdir(RADAR_DIR)):
        if name.endswith(".npz"):
            frames, times = first_frames(os.path.join(RADAR_DIR, name), n_frames)
            folder = raw / name[:-4] / "radar"
            folder.mkdir(parents=True)
            for frame, stamp in zip(frames, times):
                np.save(folder / f"{stamp}.npy", frame)
            events[name[:-4]] = (frames, times)
    return events


@pytest.mark.skipif(not os.path.isdir(RADAR_DIR), reason="../shared/data/radar not present")
def test_real_events_subset(params, tmp_path):
    """First 8 frames of the three real events: BoM's 10-minute frames interpolated to 5 minutes."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    events = write_real_subset(raw, 8)
    split = {"train": ["knmi-20100826"], "val": ["bom-20201031"], "test": ["fmi-20160928"], "seed": 0}
    p = configure(params, raw, out, inputs={"radar": ["rain_rate"]}, split=split,
                  input_steps=2, lead_steps=2, output_steps=1, motion=False)  # motion: tested on generated cases
    summary = preproc.preprocess(p, progress=False)
    assert summary["samples"] == {"train": 8 - 3, "val": 15 - 3, "test": 8 - 3}  # T - (2 - 1 + 2 + 1 - 1)
    stats = normalization.load_stats(str(out))
    knmi = events["knmi-20100826"][0]
    assert stats["max"][0] == pytest.approx(np.log1p(np.nanmax(knmi)), rel=1e-6)

    root = open_store(out, "val", "bom-20201031")
    frames = events["bom-20201031"][0]
    assert root.attrs["native_step_minutes"] == {"radar": 10} and root["valid"][:].all()
    target = normalization.denormalize_target(root["target"][:].astype(np.float64), stats)
    coverage = root["coverage"][:]
    assert target.shape == (15,) + frames.shape[1:]
    frames = np.where(frames < 0, np.nan, frames)  # BoM holds a few -0.6 mm/h: no data, not rain
    for i in range(len(frames) - 1):
        a, b = frames[i], frames[i + 1]
        both = np.isfinite(a) & np.isfinite(b)
        assert coverage[2 * i + 1][both].all()
        np.testing.assert_allclose(target[2 * i + 1][both], np.maximum((a[both] + b[both]) / 2, 0),
                                   rtol=1e-4, atol=1e-4)  # stats from KNMI: BoM values above its max
        np.testing.assert_allclose(target[2 * i][np.isfinite(a)], np.maximum(a[np.isfinite(a)], 0),
                                   rtol=1e-4, atol=1e-4)  # clip at normalised 1 is not applied
    fmi = open_store(out, "test", "fmi-20160928")
    assert fmi.attrs["grid_shape"] == [1226, 760]
    # the NaN area of real composites: coverage is at least the finite area of each frame
    finite = np.isfinite(events["fmi-20160928"][0])
    assert (fmi["coverage"][:] >= finite).all() and fmi["coverage"][:].mean() < 1


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(RADAR_DIR), reason="../shared/data/radar not present")
def test_real_events_full(params, tmp_path):
    """All frames of the three events through to_raw_cases.py, the default ratio split."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    subprocess.run([sys.executable, os.path.join(RADAR_DIR, "to_raw_cases.py"), str(raw)], check=True,
                   capture_output=True)
    p = configure(params, raw, out, inputs={"radar": ["rain_rate"]})
    summary = preproc.preprocess(p, progress=False)
    assert [len(summary["split"][s]) for s in preproc.SPLITS] == [1, 1, 1]
    assert summary["steps_invalid"] == 0 and summary["steps"] == 92 + 287 + 40
    # 6 inputs + lead 24 + 1 output: the last target is 29 steps after the first input, T - 29 windows
    assert sum(summary["samples"].values()) == (92 - 29) + (287 - 29) + (40 - 29)
    # patches of the real events: default 128 x 128 crops, rainy ones preferred
    import dataset
    stats = normalization.load_stats(str(out))
    for name in preproc.SPLITS:
        ds = dataset.ZarrPatchDataset(str(out / name), p, train=True)
        fractions = []
        for prob in (0.0, 1.0):
            ds.rain_patch_prob = prob
            rainy = []
            for i in range(0, len(ds), max(1, len(ds) // 12)):
                s = ds[i]
                assert s["x"].shape == (6, 1, 128, 128) and s["y"].shape == (1, 1, 128, 128)
                y = normalization.denormalize_target(s["y"].numpy(), stats)[s["coverage"].numpy()]
                rainy.append(float(y.max(initial=0)) > 0.5)
            fractions.append(np.mean(rainy))
        assert fractions[1] >= fractions[0], name


def test_output_under_a_file_or_unreadable_input_is_one_line(params, params_file, tmp_path, capsys, monkeypatch):
    raw = tmp_path / "raw"
    write_aligned_case(raw, "c1")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cfg = params_file(configure(params, raw, blocker / "processed", split=one_case_split("c1")))
    with pytest.raises(SystemExit) as info:
        config.run_main(preproc.main, ["--config", cfg])
    assert info.value.code == 2
    assert capsys.readouterr().err == (f"error: paths.processed_data {blocker / 'processed' / 'train'}: {blocker} "
                                       "is a file, expected a folder\n")
    real_listdir = os.listdir

    def no_permission(folder):
        if os.path.basename(folder) == "radar":
            raise PermissionError(13, "Permission denied", folder)
        return real_listdir(folder)
    monkeypatch.setattr(os, "listdir", no_permission)  # we run as root: chmod would not stop us
    with pytest.raises(SystemExit) as info:
        config.run_main(preproc.main, ["--config", cfg, "--processed_data", str(tmp_path / "out")])
    assert info.value.code == 2
    assert capsys.readouterr().err == (f"error: case c1: source folder {raw / 'c1' / 'radar'}: cannot read it "
                                       "(Permission denied) (--skip_bad_cases skips such cases)\n")
