"""dataset.py: sample_map over valid windows, crops, rainy patches, padding, loaders and workers."""
import datetime as dt
import json
import os

import numpy as np
import pytest
import torch
import zarr

import config
import dataset
import normalization
import preproc

T0 = dt.datetime(2024, 6, 1, 0, 0)


def save(raw, case, step, frame):
    folder = os.path.join(raw, case, "radar")
    os.makedirs(folder, exist_ok=True)
    np.save(os.path.join(folder, f"{T0 + dt.timedelta(minutes=5 * step):%Y%m%d%H%M}.npy"),
            np.asarray(frame, dtype=np.float32))


def configure(params, raw, out, **data):
    params = json.loads(json.dumps(params))
    params["paths"].update(raw_dataset=str(raw), processed_data=str(out))
    params["data"].update({"inputs": {"radar": ["rain_rate"]}, **data})
    return config.validate(params)


def build(params, tmp_path, cases, split, **data):
    """cases: {case: (n_steps, missing steps, frame function t -> (H, W))}; runs preproc."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    for case, (n_steps, missing, frame) in cases.items():
        for t in range(n_steps):
            if t not in missing:
                save(raw, case, t, frame(t))
    p = configure(params, raw, out, split={**split, "seed": 0}, **data)
    preproc.preprocess(p, progress=False)
    return p, out


def ramp(shape):
    """Frames whose value tells the step and the pixel: t + y / 100 + x / 10000 (mm/h)."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return lambda t: t + yy / 100 + xx / 10000


# --------------------------------------------------------------------------- sample_map
def window(input_steps, lead_steps, output_steps):
    return {"input_steps": input_steps, "lead_steps": lead_steps, "output_steps": output_steps}


def test_sample_starts_by_hand():
    valid = np.ones(20, bool)
    valid[7:11] = False
    # inputs s, s+1, s+2 and targets s+4, s+5 (input 3, lead 2, output 2) must avoid steps 7..10:
    # s = 0, 1 work; s = 2 needs 7; s = 3..10 touch 7..10; s = 11..14 work; s = 15 would need step 20
    np.testing.assert_array_equal(normalization.sample_starts(valid, window(3, 2, 2)), [0, 1, 11, 12, 13, 14])
    assert len(normalization.sample_starts(np.ones(6, bool), window(3, 2, 2))) == 1   # exactly one window fits
    assert len(normalization.sample_starts(np.ones(5, bool), window(3, 2, 2))) == 0
    assert len(normalization.sample_starts(np.ones(30, bool), window(6, 24, 1))) == 1  # the seed's 2-hour lead


def test_sample_map_counts_by_hand(params, tmp_path):
    cases = {"a": (20, {7, 8, 9, 10}, ramp((24, 20))),   # 4 missing > max_gap 3: steps 7..10 invalid
             "b": (8, {3}, ramp((24, 20)))}               # 1 missing: filled, all 8 valid -> s = 0, 1, 2
    p, out = build(params, tmp_path, cases, {"train": ["a", "b"], "val": [], "test": []},
                   input_steps=3, lead_steps=2, output_steps=2, patch_size=16)
    ds = dataset.ZarrPatchDataset(str(out / "train"), p)
    assert ds.cases == ["a", "b"]
    np.testing.assert_array_equal(ds.sample_map, [[0, 0], [0, 1], [0, 11], [0, 12], [0, 13], [0, 14],
                                                  [1, 0], [1, 1], [1, 2]])
    assert len(ds) == 9


# --------------------------------------------------------------------------- crops
@pytest.fixture
def ramp_store(params, tmp_path):
    """One 40 x 36 case of 12 steps whose values encode (t, y, x)."""
    cases = {"a": (12, set(), ramp((40, 36)))}
    return build(params, tmp_path, cases, {"train": ["a"], "val": [], "test": []},
                 input_steps=3, lead_steps=2, output_steps=1, patch_size=16, transform={}, augment=False)


def decode(x, stats):
    """Physical ramp values (transform none) -> (t, y, x) of every pixel."""
    v = np.asarray(x, np.float64) * (stats["max"][0] - stats["min"][0]) + stats["min"][0]
    t = np.floor(v + 1e-6)
    y = np.floor((v - t) * 100 + 1e-4)
    return t, y, np.round((v - t - y / 100) * 10000)


def test_patch_is_the_stored_crop(ramp_store):
    p, out = ramp_store
    stats = normalization.load_stats(str(out))
    ds = dataset.ZarrPatchDataset(str(out / "train"), p)
    for index in range(len(ds)):
        sample = ds[index]
        y0, x0, _, _ = ds.crop(index)
        assert sample["x"].shape == (3, 1, 16, 16) and sample["y"].shape == (1, 1, 16, 16)
        assert sample["x"].dtype == torch.float32 and sample["coverage"].dtype == torch.bool
        t, y, x = decode(sample["x"][:, 0], stats)
        start = ds.sample_map[index][1]
        np.testing.assert_array_equal(t[:, 0, 0], start + np.arange(3))
        np.testing.assert_array_equal(y[0, :, 0], y0 + np.arange(16))
        np.testing.assert_array_equal(x[0, 0, :], x0 + np.arange(16))
        t, _, _ = decode(sample["y"][:, 0], stats)
        assert np.all(t == start + 2 + 2)  # t0 + lead_steps
        assert sample["coverage"].all()
        minutes = int((T0 - preproc.EPOCH).total_seconds()) // 60 + 5 * (start + 4)
        assert sample["time"].tolist() == [minutes] and sample["case"] == "a"


def test_crops_inside_grid_and_deterministic(ramp_store):
    p, out = ramp_store
    ds = dataset.ZarrPatchDataset(str(out / "train"), p)
    again = dataset.ZarrPatchDataset(str(out / "train"), p)
    crops = [ds.crop(i) for i in range(len(ds))]
    for y0, x0, size_y, size_x in crops:
        assert 0 <= y0 <= 40 - 16 and 0 <= x0 <= 36 - 16 and (size_y, size_x) == (16, 16)
    assert [again.crop(i) for i in range(len(ds))] == crops  # same seed, epoch, index -> same crop
    assert len(set(crops)) > len(crops) // 2                  # and they do vary
    torch.testing.assert_close(ds[3]["x"], again[3]["x"])
    again.set_epoch(1)
    assert [again.crop(i) for i in range(len(ds))] != crops
    other_seed = dataset.ZarrPatchDataset(str(out / "train"), p, seed=123)
    assert [other_seed.crop(i) for i in range(len(ds))] != crops


def test_eval_crop_is_centre_or_full_frame(ramp_store):
    p, out = ramp_store
    centre = dataset.ZarrPatchDataset(str(out / "train"), p, train=False)
    assert {centre.crop(i) for i in range(len(centre))} == {((40 - 16) // 2, (36 - 16) // 2, 16, 16)}
    full = dataset.ZarrPatchDataset(str(out / "train"), p, train=False, full_frame=True)
    sample = full[0]
    assert sample["x"].shape == (3, 1, 40, 36) and sample["y"].shape == (1, 1, 40, 36)
    p_full = json.loads(json.dumps(p))
    p_full["data"]["eval_full_frame"] = True
    assert dataset.ZarrPatchDataset(str(out / "train"), p_full, train=False).full_frame
    assert not dataset.ZarrPatchDataset(str(out / "train"), p_full, train=True).full_frame


def test_small_grid_is_padded_without_coverage(params, tmp_path):
    cases = {"s": (8, set(), ramp((10, 20)))}
    p, out = build(params, tmp_path, cases, {"train": ["s"], "val": [], "test": []},
                   input_steps=2, lead_steps=1, output_steps=1, patch_size=16, augment=False)
    ds = dataset.ZarrPatchDataset(str(out / "train"), p)
    sample = ds[0]
    y0, x0, size_y, size_x = ds.crop(0)
    assert (y0, size_y, size_x) == (0, 10, 16) and 0 <= x0 <= 4
    assert sample["x"].shape == (2, 1, 16, 16)
    assert sample["coverage"][..., :10, :].all() and not sample["coverage"][..., 10:, :].any()
    assert (sample["x"][..., 10:, :] == 0).all() and (sample["y"][..., 10:, :] == 0).all()


def test_augmentation_turns_frames_and_motion_together(ramp_store):
    from lagrangian import rotate_flip
    p, out = ramp_store
    plain = dataset.ZarrPatchDataset(str(out / "train"), p)
    p = json.loads(json.dumps(p))
    p["data"]["augment"] = True
    turned = dataset.ZarrPatchDataset(str(out / "train"), p)
    seen = set()
    for index in range(len(plain)):
        a, b = plain[index], turned[index]
        assert plain.crop(index) == turned.crop(index)  # augmentation draws apart from the crop
        rng = np.random.default_rng([p["training"]["seed"], 0, index, 1])
        turns, flip = int(rng.integers(0, 4)), bool(rng.integers(0, 2))
        seen.add((turns, flip))
        for key in ("x", "y", "coverage"):
            np.testing.assert_array_equal(b[key].numpy(), rotate_flip(a[key].numpy(), None, turns, flip)[0])
        np.testing.assert_array_equal(b["motion"].numpy(), rotate_flip(a["y"][0].numpy(), a["motion"].numpy(),
                                                                       turns, flip)[1])
    assert len(seen) >= 4


def test_a_sample_drawn_again_in_an_epoch_gets_a_new_crop(ramp_store):
    import training
    p, out = ramp_store
    p["training"].update(batch_size=4, num_workers=0)
    loader = dataset.load_datasets(p, datasets={"train": dataset.ZarrPatchDataset(str(out / "train"), p),
                                                "val": dataset.ZarrPatchDataset(str(out / "train"), p)})["train"]
    batches = training.cycle(loader, epoch=0)
    n_batches = -(-len(loader.dataset) // 4)
    passes = [[next(batches) for _ in range(n_batches)] for _ in range(2)]  # the data twice in one epoch
    crops = [{(int(t), tuple(x[0, 0, :2, :2].flatten().tolist())) for b in batches_ for t, x in
              zip(b["time"][:, 0], b["x"])} for batches_ in passes]
    times = [{t for t, _ in c} for c in crops]
    assert times[0] == times[1]  # every sample again ...
    assert len(crops[0] & crops[1]) < len(crops[0]) // 2  # ... mostly in another crop


# --------------------------------------------------------------------------- rainy patches
@pytest.fixture
def blob_store(params, tmp_path):
    """64 x 64, no rain except one 8 x 8 block of 5 mm/h at rows 40..47, cols 8..15."""
    def frame(t):
        f = np.zeros((64, 64))
        f[40:48, 8:16] = 5.0
        return f
    return build(params, tmp_path, {"r": (6, set(), frame)}, {"train": ["r"], "val": [], "test": []},
                 input_steps=2, lead_steps=1, output_steps=1, patch_size=16, rain_threshold=0.5)


def rainy_fraction(ds, stats, epochs=8):
    rainy = []
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            s = ds[i]
            rainy.append(float(normalization.denormalize_target(s["y"], stats)[s["coverage"]].max()) > 0.5)
    return np.mean(rainy)


def test_rainy_patch_preference(blob_store):
    p, out = blob_store
    stats = normalization.load_stats(str(out))
    p = json.loads(json.dumps(p))
    p["data"].update(rain_patch_prob=1.0, crop_tries=200)
    always = rainy_fraction(dataset.ZarrPatchDataset(str(out / "train"), p), stats)
    p["data"].update(rain_patch_prob=0.0)
    never = rainy_fraction(dataset.ZarrPatchDataset(str(out / "train"), p), stats)
    # a uniform 16 x 16 crop of 64 x 64 overlaps the blob with probability 23 * 16 / 49^2 = 0.15
    assert always >= 0.9 and never <= 0.4


def test_rain_check_is_conservative(blob_store):
    """Whenever the rain_max check says 'rainy', the crop really holds target rain (brute force)."""
    p, out = blob_store
    ds = dataset.ZarrPatchDataset(str(out / "train"), p)
    root = zarr.open_group(str(out / "train" / "r.zarr"), mode="r")
    rain = root["rain_max"][:1]
    physical = normalization.denormalize_target(root["target"][0], normalization.load_stats(str(out)))
    said_yes = 0
    for y0 in range(0, 64 - 16 + 1):
        for x0 in range(0, 64 - 16 + 1):
            says = ds._has_rain(rain, 8, (64, 64), y0, x0, 16, 16)
            truth = physical[y0:y0 + 16, x0:x0 + 16].max() > 0.5
            assert truth or not says
            said_yes += says
    assert said_yes == 9 * 9  # block rows 40..47 inside the crop: y0 in 32..40; cols 8..15: x0 in 0..8


# --------------------------------------------------------------------------- loaders
def test_pad_collate_different_grids():
    a = {"x": torch.ones(2, 1, 4, 6), "y": torch.ones(1, 1, 4, 6), "coverage": torch.ones(1, 1, 4, 6, dtype=bool),
         "time": torch.tensor([5]), "case": "a"}
    b = {"x": torch.ones(2, 1, 5, 3), "y": torch.ones(1, 1, 5, 3), "coverage": torch.ones(1, 1, 5, 3, dtype=bool),
         "time": torch.tensor([7]), "case": "b"}
    batch = dataset.pad_collate([a, b])
    assert batch["x"].shape == (2, 2, 1, 5, 6) and batch["coverage"].dtype == torch.bool
    assert batch["coverage"][0].sum() == 24 and batch["coverage"][1].sum() == 15
    assert batch["x"][0, :, :, 4:, :].abs().sum() == 0 and batch["x"][1, :, :, :, 3:].abs().sum() == 0
    assert batch["case"] == ["a", "b"] and batch["time"].tolist() == [[5], [7]]


def test_load_datasets_and_workers(params, tmp_path):
    shape = (40, 36)
    cases = {c: (14, set(), ramp(shape)) for c in ("a", "b", "c")}
    p, out = build(params, tmp_path, cases, {"train": ["a"], "val": ["b"], "test": ["c"]},
                   input_steps=3, lead_steps=2, output_steps=1, patch_size=16)
    p["training"].update(batch_size=4, num_workers=0, seed=7)
    loaders = dataset.load_datasets(p)
    train, val, test = loaders["train"], loaders["val"], loaders["test"]
    assert [len(loader.dataset) for loader in (train, val, test)] == [10, 10, 10]
    serial = [b["x"] for b in train]  # the first epoch (each pass draws a new order from the generator)
    batch = next(iter(train))
    assert batch["x"].shape == (4, 3, 1, 16, 16) and batch["y"].shape == (4, 1, 1, 16, 16)
    test_times = torch.cat([b["time"][:, 0] for b in test])
    assert (torch.diff(test_times) > 0).all()  # test: store and time order
    val_times = [torch.cat([b["time"][:, 0] for b in val]).tolist() for _ in range(2)]
    assert val_times[0] == val_times[1] != sorted(val_times[0])  # val: one fixed mixed order
    assert sorted(val_times[0]) == sorted(set(val_times[0])) and len(val_times[0]) == 10
    # the same batches with two worker processes: crops depend on (seed, epoch, index) only
    p["training"]["num_workers"] = 2
    train2 = dataset.load_datasets(p)["train"]
    parallel = [b["x"] for b in train2]
    assert len(parallel) == len(serial) == 3
    for s, q in zip(serial, parallel):
        torch.testing.assert_close(s, q)


def test_persistent_workers_get_each_pass_epoch_through_the_sampler(params, tmp_path):
    """Workers persist between passes (their chunk caches stay warm); training.cycle's new epoch per pass
    reaches them as (epoch, index) keys, so 2 workers give the batches of one process over several passes."""
    import training
    cases = {c: (14, set(), ramp((40, 36))) for c in ("a", "b", "c")}
    p, _ = build(params, tmp_path, cases, {"train": ["a"], "val": ["b"], "test": ["c"]},
                 input_steps=3, lead_steps=2, output_steps=1, patch_size=16)
    p["training"].update(batch_size=4, seed=3)
    runs = {}
    for workers in (0, 2):
        p["training"]["num_workers"] = workers
        loader = dataset.load_datasets(p)["train"]
        assert loader.persistent_workers == (workers > 0) and isinstance(loader.sampler, dataset.EpochKeys)
        source = training.cycle(loader, epoch=5)
        runs[workers] = [next(source)["x"] for _ in range(5)]  # 2 batches a pass: 3 passes, the last cut short
    for serial, parallel in zip(runs[0], runs[2]):
        torch.testing.assert_close(serial, parallel)
    ds = loader.dataset
    ds.set_epoch(17)
    torch.testing.assert_close(ds[(17, 4)]["x"], ds[4]["x"])  # a key (epoch, index) = set_epoch + index
    assert [ds.crop((17, i)) for i in range(len(ds))] != [ds.crop((18, i)) for i in range(len(ds))]


def test_errors(params, tmp_path, ramp_store):
    p, out = ramp_store
    with pytest.raises(config.UserError, match=r"empty: no .zarr stores \(run preproc.py; see paths.processed_data\)$"):
        dataset.ZarrPatchDataset(str(tmp_path / "empty"), p)
    with pytest.raises(config.UserError, match=r"test: no .zarr stores \(preproc.py gave this split no case: see "
                                               r"data.split\)$"):
        dataset.ZarrPatchDataset(str(out / "test"), p)  # ramp_store's split gives test no case
    other = json.loads(json.dumps(p))
    other["data"]["inputs"] = {"radar": ["rain_rate"], "nwp": ["t2m"]}
    with pytest.raises(config.UserError, match="re-run preproc.py"):
        dataset.ZarrPatchDataset(str(out / "train"), config.validate(other))
    long_lead = json.loads(json.dumps(p))
    long_lead["data"]["lead_steps"] = 30
    with pytest.raises(config.UserError, match="no valid window"):
        dataset.ZarrPatchDataset(str(out / "train"), long_lead)


def test_command_line_reports_splits_and_a_batch(processed, tmp_path, capsys):
    from conftest import write_tiny_params
    cfg = write_tiny_params(tmp_path, processed)
    assert dataset.main(["--config", cfg, "--batch_size", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    splits = {name: count_stores(processed, name) for name in ("train", "val", "test")}
    for line, (name, n_stores) in zip(lines, splits.items()):
        assert line.startswith(f"{name:<5}") and f"from {n_stores} stores" in line
    assert lines[-1].startswith("a training batch: x (2, 3, 4, 16, 16) (B, T_in, C, H, W)")


def count_stores(processed, split):
    return len([n for n in os.listdir(os.path.join(processed, split)) if n.endswith(".zarr")])


def test_damaged_stats_and_stores_are_one_line(ramp_store):
    p, out = ramp_store
    stats_path = out / "stats.json"
    good = stats_path.read_text()
    stats_path.write_bytes(b"\x00\x85 not json")
    with pytest.raises(config.UserError, match=f"^{stats_path}: cannot read it as JSON \\(UnicodeDecodeError"):
        dataset.make_datasets(p)
    stats_path.write_text('{"channels": ["rain_rate"]}')
    with pytest.raises(config.UserError, match=f"^{stats_path}: no sources, transform, min, max, target \\(not a "):
        dataset.make_datasets(p)
    stats_path.write_text(good)
    store = out / "train" / "a.zarr"
    os.rename(store / "rain_max", out / "rain_max")  # an array missing
    with pytest.raises(config.UserError, match=f"^{store}: rain_max missing \\(an interrupted or foreign store\\)"):
        dataset.ZarrPatchDataset(str(out / "train"), p)
    os.rename(out / "rain_max", store / "rain_max")
    (out / "train" / "b.zarr").mkdir()  # an empty folder named like a store
    with pytest.raises(config.UserError, match=f"^{out / 'train' / 'b.zarr'}: not a readable Zarr store"):
        dataset.ZarrPatchDataset(str(out / "train"), p)


@pytest.mark.parametrize("dotted, value, message", [
    ("data.time_step_minutes", 10, "data.time_step_minutes: 10, but {stats} has 5; re-run preproc.py, or set it back"),
    ("data.max_gap_steps", 1, "data.max_gap_steps: 1, but {stats} has 3; re-run preproc.py, or set it back"),
    ("data.transform", {"rain_rate": "log1p"}, "data.transform.rain_rate: 'log1p', but {stats} has 'none'; re-run "
                                               "preproc.py, or set it back"),
])
def test_a_config_edited_after_preproc_is_refused(ramp_store, dotted, value, message):
    p, out = ramp_store
    edited = json.loads(json.dumps(p))
    config.set_dotted(edited, dotted, value)
    with pytest.raises(config.UserError) as info:
        dataset.make_datasets(config.validate(edited))
    assert str(info.value) == message.format(stats=out / "stats.json")



# --------------------------------------------------------------------------- the chunk cache
def test_chunk_cache_reads_what_zarr_reads(tmp_path):
    """Every selection (ints, negative ints, slices across chunk and edge boundaries, trailing axes
    whole) equals zarr's own read, cold, warm and after evictions from a cache too small to keep all."""
    data = np.random.default_rng(0).random((11, 2, 37, 29)).astype(np.float32)
    array = zarr.create_array(str(tmp_path / "a.zarr"), shape=data.shape, dtype="float32", chunks=(4, 1, 8, 8),
                              shards=(12, 1, 16, 16))
    array[:] = data
    selections = [(slice(2, 9), slice(None), slice(5, 21), slice(3, 29)), (-1,), (5, 1, slice(30, 37)),
                  (slice(0, 11),), (slice(7, 8), 0, 36, slice(0, 1)), (slice(3, 3),)]
    rng = np.random.default_rng(1)
    for _ in range(30):
        t0, y0, x0 = rng.integers(0, 10), rng.integers(0, 36), rng.integers(0, 28)
        selections.append((slice(t0, rng.integers(t0 + 1, 12)), slice(None), slice(y0, rng.integers(y0 + 1, 38)),
                           slice(x0, rng.integers(x0 + 1, 30))))
    for megabytes in (64, 0.01):  # 0.01 MB: about 40 chunks of 8 x 8 float32
        cache = dataset.ChunkCache(megabytes)
        for selection in selections * 2:
            got = cache.read({"a": ("a", array, selection)})["a"]
            np.testing.assert_array_equal(got, data[selection])
            assert cache.nbytes <= cache.limit
        assert cache.hits > 0 and cache.misses > 0
    with pytest.raises(ValueError, match="step 1"):
        dataset.ChunkCache(1).read({"a": ("a", array, (slice(0, 8, 2),))})


def test_samples_are_the_same_with_and_without_the_cache(params, tmp_path, monkeypatch):
    """Crops that cross chunks of 8 x 8 pixels and 4 steps, with motion and augmentation, over two epochs."""
    monkeypatch.setattr(preproc, "CHUNK_XY", 8)
    cases = {"a": (14, set(), lambda t: np.roll(ramp((40, 36))(t), t, axis=1))}
    p, out = build(params, tmp_path, cases, {"train": ["a"], "val": [], "test": []},
                   input_steps=3, lead_steps=1, output_steps=4, patch_size=16, augment=True, rain_patch_prob=0.5)
    assert zarr.open_group(str(out / "train" / "a.zarr"))["target"].chunks == (4, 8, 8)
    p["data"]["cache_mb"] = 0
    plain = dataset.ZarrPatchDataset(str(out / "train"), p)
    p["data"]["cache_mb"] = 16
    cached = dataset.ZarrPatchDataset(str(out / "train"), p)
    assert plain.has_motion
    for epoch in (0, 1):
        plain.set_epoch(epoch)
        cached.set_epoch(epoch)
        for index in range(len(plain)):
            a, b = plain[index], cached[index]
            for key in ("x", "y", "coverage", "motion"):
                np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())
    assert cached.cache.hits > cached.cache.misses > 0 and plain.cache.hits == plain.cache.misses == 0


def test_motion_crop_is_scipy_bilinear_interpolation():
    """The separable interpolation equals scipy.ndimage.map_coordinates (order 1, edges clamped), also
    for crops reaching past the last coarse pixel and for a coarse frame one pixel wide."""
    from scipy import ndimage
    rng = np.random.default_rng(2)
    for coarse_shape, rows, cols in (((2, 10, 8), slice(5, 37), slice(9, 31)), ((2, 10, 8), slice(0, 40), slice(0, 32)),
                                     ((2, 1, 5), slice(0, 3), slice(2, 19))):
        coarse = rng.normal(size=coarse_shape).astype(np.float32)
        y, x = np.mgrid[rows, cols].astype(np.float64)
        expected = np.stack([ndimage.map_coordinates(c, [y / 4, x / 4], order=1, mode="nearest", prefilter=False)
                             for c in coarse])
        np.testing.assert_allclose(dataset.motion_crop(coarse, 4, rows, cols), expected, rtol=1e-6, atol=1e-6)
