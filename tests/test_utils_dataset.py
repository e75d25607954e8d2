"""utils.ConsolidatedSICDataset against a brute-force enumeration of samples, on small
consolidated files written here with xarray in the consolidate_data.py layout (.nc and .zarr)."""
import datetime as dt
import pickle
import warnings

import numpy as np
import pytest
import torch
import xarray as xr

from config import UserError
from utils import ConsolidatedSICDataset

START = dt.date(2024, 4, 1)
N_DAYS, H, W = 20, 12, 10
MISSING = [20240405, 20240412]


def yyyymmdd(day):
    return int(f"{day:%Y%m%d}")


def write_consolidated(path, sic, start=START, missing=(), times=None, flag=None):
    """Write a consolidated file in the consolidate_data.py layout (.nc NetCDF-4 or .zarr).

    sic: float32 (T, H, W) fraction. time int32 YYYYMMDD, every day from `start` unless
    `times` is given; missing_dates int32 on its own dimension (may be empty); fill_flag
    uint8 (T, H, W); x, y ascending in metres; a polar_stereographic grid mapping.
    """
    n_t, n_y, n_x = sic.shape
    if times is None:
        times = [yyyymmdd(start + dt.timedelta(days=i)) for i in range(n_t)]
    flag = np.zeros(sic.shape, np.uint8) if flag is None else flag
    for date in missing:
        flag[times.index(date)] = 2
    grid_mapping = {"grid_mapping": "polar_stereographic"}
    ds = xr.Dataset(
        {"sea_ice_conc": (("time", "y", "x"), sic.astype(np.float32),
                          {"units": "1", "standard_name": "sea_ice_area_fraction", **grid_mapping}),
         "fill_flag": (("time", "y", "x"), flag, grid_mapping),
         "polar_stereographic": ((), np.int32(0), {"grid_mapping_name": "polar_stereographic",
                                                   "latitude_of_projection_origin": 90.0,
                                                   "straight_vertical_longitude_from_pole": -45.0,
                                                   "standard_parallel": 70.0})},
        coords={"time": ("time", np.array(times, np.int32)),
                "missing_dates": ("missing_dates", np.array(missing, np.int32)),
                "y": ("y", -5.3e6 + 1e5 * np.arange(n_y), {"units": "m", "axis": "Y"}),
                "x": ("x", -3.8e6 + 1e5 * np.arange(n_x), {"units": "m", "axis": "X"})})
    if str(path).endswith(".zarr"):
        with warnings.catch_warnings():  # zarr: "consolidated metadata is not part of Zarr format 3"
            warnings.simplefilter("ignore")
            ds.to_zarr(path, mode="w", encoding={"sea_ice_conc": {"chunks": (1, n_y, n_x)}})
    else:
        ds.to_netcdf(path, engine="netcdf4", encoding={
            "sea_ice_conc": {"zlib": True, "chunksizes": (1, n_y, n_x)}})
    return path


@pytest.fixture(scope="module")
def sic():
    return np.random.default_rng(7).random((N_DAYS, H, W), dtype=np.float32)


@pytest.fixture(scope="module")
def files(sic, tmp_path_factory):
    folder = tmp_path_factory.mktemp("consolidated")
    return {kind: write_consolidated(str(folder / f"sic.{kind}"), sic, missing=MISSING) for kind in ("nc", "zarr")}


def brute_force_samples(start, end, input_length, input_gap, pred_gap, pred_shift, pred_length, samples_gap,
                        missing=(), skip_missing=True):
    """[(input dates, target dates)] by walking the calendar day by day, as YYYYMMDD ints."""
    start = dt.datetime.strptime(str(start), "%Y%m%d").date()
    end = dt.datetime.strptime(str(end), "%Y%m%d").date()
    samples, day = [], start
    while day <= end:
        inputs = [day + dt.timedelta(days=input_gap * j) for j in range(input_length)]
        first_target = inputs[-1] + dt.timedelta(days=pred_shift)
        targets = [first_target + dt.timedelta(days=pred_gap * k) for k in range(pred_length)]
        if targets[-1] <= end:
            used = {yyyymmdd(d) for d in inputs + targets}
            if not (skip_missing and used & set(missing)):
                samples.append(([yyyymmdd(d) for d in inputs], [yyyymmdd(d) for d in targets]))
        day += dt.timedelta(days=samples_gap)
    return samples


def frames_of(sic, dates):
    return sic[[(dt.datetime.strptime(str(d), "%Y%m%d").date() - START).days for d in dates]]


PARAMETER_SETS = [
    dict(start=20240401, end=20240420, input_length=5, input_gap=1, pred_gap=1, pred_shift=1, pred_length=3,
         samples_gap=1),
    dict(start=20240402, end=20240419, input_length=2, input_gap=3, pred_gap=2, pred_shift=4, pred_length=2,
         samples_gap=3),
    dict(start=20240406, end=20240411, input_length=1, input_gap=1, pred_gap=1, pred_shift=1, pred_length=1,
         samples_gap=1),
    dict(start=20240401, end=20240420, input_length=3, input_gap=2, pred_gap=3, pred_shift=2, pred_length=3,
         samples_gap=2),
]


@pytest.mark.parametrize("skip_missing", [True, False])
@pytest.mark.parametrize("setting", PARAMETER_SETS)
def test_samples_match_brute_force(files, sic, setting, skip_missing):
    p = dict(setting)
    start, end = p.pop("start"), p.pop("end")
    expected = brute_force_samples(start, end, **p, missing=MISSING, skip_missing=skip_missing)
    dataset = ConsolidatedSICDataset(files["nc"], start, end, skip_missing=skip_missing, **p)
    assert len(dataset) == len(expected) > 0
    input_times, target_times = dataset.GetTimes()
    assert input_times.tolist() == [e[0] for e in expected]
    assert target_times.tolist() == [e[1] for e in expected]
    for i in (0, len(expected) // 2, len(expected) - 1):
        inputs, targets = dataset[i]
        assert inputs.dtype == torch.float32 and targets.dtype == torch.float32
        assert inputs.shape == (p["input_length"], 1, H, W) and targets.shape == (p["pred_length"], 1, H, W)
        np.testing.assert_array_equal(inputs[:, 0].numpy(), frames_of(sic, expected[i][0]))
        np.testing.assert_array_equal(targets[:, 0].numpy(), frames_of(sic, expected[i][1]))
    dataset.close()


def test_missing_dates_are_skipped_or_kept(files):
    kept = ConsolidatedSICDataset(files["nc"], 20240401, 20240420, input_length=2, pred_length=1,
                                  skip_missing=False)
    skipped = ConsolidatedSICDataset(files["nc"], 20240401, 20240420, input_length=2, pred_length=1)
    assert len(kept) == 18  # starts 0401..0418
    # a sample uses 3 consecutive days: each missing date removes the 3 samples that contain it
    assert len(skipped) == 18 - 6 and kept.n_touching_missing == 6
    used = np.concatenate(skipped.GetTimes(), axis=1)
    assert not np.isin(used, MISSING).any()
    assert np.isin(np.concatenate(kept.GetTimes(), axis=1), MISSING).any()


def test_nc_and_zarr_give_equal_samples(files):
    a = ConsolidatedSICDataset(files["nc"], 20240401, 20240420, input_length=3, pred_length=2, samples_gap=2)
    b = ConsolidatedSICDataset(files["zarr"], 20240401, 20240420, input_length=3, pred_length=2, samples_gap=2)
    assert len(a) == len(b) > 0
    np.testing.assert_array_equal(a.missing_dates, MISSING)
    np.testing.assert_array_equal(b.missing_dates, MISSING)
    for i in range(len(a)):
        for x, y in zip(a[i], b[i]):
            assert torch.equal(x, y)


@pytest.mark.parametrize("kind", ["nc", "zarr"])
def test_preload_equals_lazy(files, kind):
    settings = dict(input_length=2, input_gap=2, pred_shift=2, pred_length=2, samples_gap=1,
                    roi=(2, 9, 1, 7))
    lazy = ConsolidatedSICDataset(files[kind], 20240402, 20240418, **settings)
    loaded = ConsolidatedSICDataset(files[kind], 20240402, 20240418, preload_data=True, **settings)
    assert len(lazy) == len(loaded) > 0
    for i in range(len(lazy)):
        for x, y in zip(lazy[i], loaded[i]):
            assert torch.equal(x, y)
    assert torch.equal(lazy.GetInputs(), loaded.GetInputs())
    assert torch.equal(lazy.GetTargets(), loaded.GetTargets())


def test_get_inputs_targets_stack_items_and_respect_memory_limit(files):
    dataset = ConsolidatedSICDataset(files["nc"], 20240401, 20240420, input_length=4, pred_length=2)
    inputs, targets = dataset.GetInputs(), dataset.GetTargets()
    assert inputs.shape == (len(dataset), 4, 1, H, W) and targets.shape == (len(dataset), 2, 1, H, W)
    for i in range(len(dataset)):
        assert torch.equal(inputs[i], dataset[i][0]) and torch.equal(targets[i], dataset[i][1])
    one_input_stack = len(dataset) * 4 * H * W * 4 / 2 ** 30
    with pytest.raises(UserError, match="max_gib"):
        dataset.GetInputs(max_gib=one_input_stack * 0.99)
    assert dataset.GetInputs(max_gib=one_input_stack).shape == inputs.shape


@pytest.mark.parametrize("kind", ["nc", "zarr"])
def test_dataloader_with_two_workers(files, kind):
    dataset = ConsolidatedSICDataset(files[kind], 20240401, 20240420, input_length=3, pred_length=2)
    first = dataset[0]  # the parent has an open handle before the workers start
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, shuffle=False, num_workers=2)
    batches = list(loader)
    inputs = torch.cat([b[0] for b in batches])
    targets = torch.cat([b[1] for b in batches])
    assert inputs.shape == (len(dataset), 3, 1, H, W)
    assert torch.equal(inputs, dataset.GetInputs()) and torch.equal(targets, dataset.GetTargets())
    assert torch.equal(first[0], inputs[0])
    clone = pickle.loads(pickle.dumps(dataset))  # picklable with a handle open
    assert torch.equal(clone[len(dataset) - 1][1], targets[-1])


def test_roi_crops_every_frame(files, sic):
    dataset = ConsolidatedSICDataset(files["zarr"], 20240401, 20240410, input_length=2, pred_length=1,
                                     roi=(3, 11, 2, 5))
    inputs, targets = dataset[1]
    input_times, target_times = dataset.GetTimes()
    assert inputs.shape == (2, 1, 8, 3)
    np.testing.assert_array_equal(inputs[:, 0].numpy(), frames_of(sic, input_times[1])[:, 3:11, 2:5])
    np.testing.assert_array_equal(targets[:, 0].numpy(), frames_of(sic, target_times[1])[:, 3:11, 2:5])
    np.testing.assert_array_equal(dataset.y, (-5.3e6 + 1e5 * np.arange(H))[3:11])
    np.testing.assert_array_equal(dataset.x, (-3.8e6 + 1e5 * np.arange(W))[2:5])


def write_mask_file(path, land, x=None, y=None):
    """A land-mask NetCDF in the create_mask.py layout."""
    n_y, n_x = land.shape
    xr.Dataset({"land_mask": (("y", "x"), land.astype(np.uint8)),
                "nan_frequency": (("y", "x"), land.astype(np.float32))},
               coords={"y": -5.3e6 + 1e5 * np.arange(n_y) if y is None else y,
                       "x": -3.8e6 + 1e5 * np.arange(n_x) if x is None else x}).to_netcdf(path)
    return path


def test_land_mask_from_file_and_array(files, sic, tmp_path):
    land = np.random.default_rng(1).random((H, W)) < 0.3
    mask_path = write_mask_file(str(tmp_path / "land_mask.nc"), land)
    roi = (1, 10, 2, 9)
    plain = ConsolidatedSICDataset(files["nc"], 20240401, 20240410, input_length=2, pred_length=1, roi=roi,
                                   land_mask=mask_path)
    assert plain.land_mask.dtype == torch.bool
    np.testing.assert_array_equal(plain.land_mask.numpy(), land[1:10, 2:9])
    np.testing.assert_array_equal(plain[0][0][:, 0].numpy(), frames_of(sic, plain.GetTimes()[0][0])[:, 1:10, 2:9])

    masked = ConsolidatedSICDataset(files["nc"], 20240401, 20240410, input_length=2, pred_length=1, roi=roi,
                                    land_mask=torch.from_numpy(land), mask_land=True)
    np.testing.assert_array_equal(masked.land_mask.numpy(), land[1:10, 2:9])
    inputs, targets = masked[0]
    expected = frames_of(sic, masked.GetTimes()[0][0])[:, 1:10, 2:9].copy()
    expected[:, land[1:10, 2:9]] = 0
    np.testing.assert_array_equal(inputs[:, 0].numpy(), expected)
    assert (targets[:, 0][:, masked.land_mask] == 0).all() and (targets[:, 0][:, ~masked.land_mask] > 0).all()

    with pytest.raises(UserError, match="shape"):
        ConsolidatedSICDataset(files["nc"], land_mask=land[:5])
    other_grid = write_mask_file(str(tmp_path / "other.nc"), land, x=np.arange(W) * 3125.0)
    with pytest.raises(UserError, match="coordinates differ"):
        ConsolidatedSICDataset(files["nc"], land_mask=other_grid)


def test_empty_missing_dates_and_defaults(sic, tmp_path):
    path = write_consolidated(str(tmp_path / "full.zarr"), sic)
    dataset = ConsolidatedSICDataset(path)  # the whole file, seed defaults 5 -> 3
    assert dataset.missing_dates.size == 0
    assert len(dataset) == N_DAYS - 8 + 1
    assert (dataset.start_time, dataset.end_time) == (20240401, 20240420)


@pytest.mark.parametrize("kwargs, message", [
    (dict(consolidated_file_path="nowhere.nc"), "not found"),
    (dict(start_time=20240325, end_time=20240410), "outside the file's time range 20240401..20240420"),
    (dict(start_time=20240401, end_time=20240421), "outside"),
    (dict(start_time=20240410, end_time=20240409), "before"),
    (dict(start_time=20240401, end_time=20240406, input_length=5, pred_length=3), "no sample fits"),
    (dict(start_time=20240404, end_time=20240406, input_length=1, pred_length=1), "touch a missing date"),
    (dict(input_gap=0), "input_gap"),
    (dict(roi=(0, 13, 0, 5)), "roi"),
    (dict(roi=(4, 4, 0, 5)), "roi"),
    (dict(mask_land=True), "land_mask"),
])
def test_clear_errors(files, kwargs, message):
    kwargs = {"consolidated_file_path": files["nc"], **kwargs}
    with pytest.raises(UserError, match=message):
        ConsolidatedSICDataset(**kwargs)


def test_time_axis_must_be_daily(sic, tmp_path):
    times = [20240401 + i for i in range(10)] + [20240501 + i for i in range(10)]
    path = write_consolidated(str(tmp_path / "gappy.nc"), sic, times=times)
    with pytest.raises(UserError, match="one frame per day"):
        ConsolidatedSICDataset(path)


# --------------------------------------------------------------------------- max_missing_fraction
def flags_with_gaps():
    """fill_flag (20, 12, 10): land (4) in column 0, the pole hole (5) at two pixels, so 106 pixels count;
    day index 7 has 60 of them Gaussian-filled (60/106 = 0.566), day 9 50 time-linear (0.472)."""
    flag = np.zeros((N_DAYS, H, W), np.uint8)
    flag[:, :, 0] = 4
    flag[:, 5, 5:7] = 5
    counted = np.argwhere(flag[0] == 0)
    for day, n, value in ((7, 60, 2), (9, 50, 1)):
        rows, cols = counted[:n].T
        flag[day, rows, cols] = value
    return flag


@pytest.mark.parametrize("limit, dropped_days", [(0.5, [20240408]), (0.47, [20240408, 20240410]),
                                                 (0.6, []), (1.0, [])])
def test_max_missing_fraction_drops_samples_with_a_poorly_observed_day(sic, tmp_path, limit, dropped_days):
    path = write_consolidated(str(tmp_path / "gaps.nc"), sic, flag=flags_with_gaps())
    p = dict(input_length=3, input_gap=1, pred_gap=1, pred_shift=1, pred_length=2, samples_gap=1)
    dataset = ConsolidatedSICDataset(path, 20240401, 20240420, max_missing_fraction=limit, **p)
    expected = [s for s in brute_force_samples(20240401, 20240420, **p)
                if not set(s[0] + s[1]) & set(dropped_days)]
    inputs, targets = dataset.GetTimes()
    assert [(list(i), list(t)) for i, t in zip(inputs.tolist(), targets.tolist())] == expected
    assert dataset.n_too_unobserved == len(brute_force_samples(20240401, 20240420, **p)) - len(expected)
    if limit < 1:
        assert dataset.unobserved_fraction[7] == pytest.approx(60 / 106) and dataset.unobserved_fraction[9] == \
            pytest.approx(50 / 106) and dataset.unobserved_fraction[0] == 0.0


def test_max_missing_fraction_leaves_out_land_of_the_mask_and_checks_its_value(sic, tmp_path):
    flag = flags_with_gaps()
    path = write_consolidated(str(tmp_path / "gaps.nc"), sic, flag=flag)
    land = np.zeros((H, W), bool)
    land[:, 9] = True  # 12 more land pixels from the mask: day 7 has 60 of 94 -> 0.638 (60 - the ones on land)
    unobserved_on_land = int(((flag[7] == 2) & land).sum())
    dataset = ConsolidatedSICDataset(path, land_mask=land, max_missing_fraction=0.5, input_length=2, pred_length=1)
    assert dataset.unobserved_fraction[7] == pytest.approx((60 - unobserved_on_land) / 94)
    for bad in (-0.1, 1.5, "0.5", True):
        with pytest.raises(UserError, match="max_missing_fraction: expected a fraction between 0 and 1"):
            ConsolidatedSICDataset(path, max_missing_fraction=bad)
    with pytest.raises(UserError, match="raise max_missing_fraction"):
        everything = flags_with_gaps()
        everything[:, 1:, 1:] = 2
        ConsolidatedSICDataset(write_consolidated(str(tmp_path / "all.nc"), sic, flag=everything),
                               max_missing_fraction=0.5)


def test_readme_dataset_snippet_defines_every_name_it_uses():
    import ast
    import builtins
    import os
    import re
    from conftest import ROOT
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        text = fh.read()
    section = text[text.index("### `utils.ConsolidatedSICDataset`"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    tree = ast.parse(code)
    defined = set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            defined.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    assert used - defined == set()
