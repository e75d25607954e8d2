"""generate_data.py: the stand-in data matches the format docs and is deterministic."""
import datetime as dt
import filecmp
import os

import netCDF4
import numpy as np
import pytest
import xarray as xr

import generate_data as gd


def test_full_grids_match_the_format_doc():
    # bremen-asi-format.md: n3125 3584 x 2432, 3125 m; n6250 1792 x 1216, 6250 m
    x, y = gd.asi_grid((3584, 2432))
    assert (x[0], x[-1], y[0], y[-1]) == (-3848437.5, 3748437.5, -5348437.5, 5848437.5)
    assert np.allclose(np.diff(x), 3125.0) and np.allclose(np.diff(y), 3125.0)
    x, y = gd.asi_grid((1792, 1216))
    assert (x[0], x[-1], y[0], y[-1]) == (-3846875.0, 3746875.0, -5346875.0, 5846875.0)


def test_file_layout_matches_the_format_doc(asi_days):
    path = asi_days["files"][0]
    assert os.path.basename(path) == "asi-AMSR2-n3125-20240401-v5.4.nc"
    with netCDF4.Dataset(path) as nc:
        assert nc.data_model == "NETCDF4"
        z = nc.variables["z"]
        assert z.dimensions == ("y", "x") and z.dtype == np.float32
        assert np.isnan(z.getncattr("_FillValue")) and z.units == "%"
        assert z.grid_mapping == "polar_stereographic"
        gm = nc.variables["polar_stereographic"]
        assert gm.grid_mapping_name == "polar_stereographic"
        assert (gm.latitude_of_projection_origin, gm.standard_parallel,
                gm.straight_vertical_longitude_from_pole) == (90.0, 70.0, -45.0)
        assert gm.semi_major_axis == 6378137.0  # WGS 84 (EPSG:3413) from 2018-11-02 on
        assert nc.variables["x"].units == "m" and nc.variables["y"].units == "m"
    with xr.open_dataset(path) as ds:
        assert ds.z.dims == ("y", "x") and ds.z.dtype == np.float32
        assert np.all(np.diff(ds.x.values) > 0) and np.all(np.diff(ds.y.values) > 0)
        z = ds.z.values
    assert np.isnan(z).any() and np.nanmin(z) >= 0 and np.nanmax(z) <= 100
    assert 0.2 < np.isnan(z).mean() < 0.8  # "about half of the grid is NaN"


def test_wgs84_declared_from_2018_11_02(tmp_path):
    result = gd.write_asi_days(str(tmp_path), 20181101, 20181102, shape=(32, 24))
    axes = []
    for path in result["files"]:
        with netCDF4.Dataset(path) as nc:
            axes.append(nc.variables["polar_stereographic"].semi_major_axis)
    assert axes == [6378273.0, 6378137.0]


def test_land_pole_hole_and_swath_gaps(asi_days):
    land, truth = asi_days["land"], asi_days["truth"]
    present = [i for i, d in enumerate(asi_days["dates"]) if d not in asi_days["absent"]]
    observed = []
    for path in asi_days["files"]:
        with xr.open_dataset(path) as ds:
            observed.append(ds.z.values)
    observed = np.stack(observed)
    assert land.any() and not land.all()
    assert np.isnan(observed[:, land]).all()  # land is NaN every day
    assert not np.isnan(truth[:, ~land]).any()  # the truth is gap-free off land
    valid = ~np.isnan(observed)
    assert np.array_equal(observed[valid], truth[present][valid])  # observed = truth where present
    gaps = np.isnan(observed) & ~land
    pole = np.hypot(asi_days["x"][None, :], asi_days["y"][:, None]) < gd.SyntheticArctic.pole_hole_m
    assert pole.any() and gaps[:, pole].all()  # the pole hole is NaN every day
    assert not np.array_equal(gaps[0], gaps[1])  # swath gaps change daily
    ice = (truth[:, ~land] > 15).mean(axis=1)
    assert 0.05 < ice.min() and np.abs(np.diff(ice)).max() < 0.02  # the ice edge moves slowly


def test_absent_days_are_absent(asi_days):
    names = sorted(os.listdir(asi_days["dir"]))
    assert len(names) == 8
    assert "asi-AMSR2-n3125-20240405-v5.4.nc" not in names
    assert asi_days["absent"] == [dt.date(2024, 4, 5), dt.date(2024, 4, 6)]


def test_same_seed_same_bytes_other_seed_other_field(tmp_path):
    a = gd.write_asi_days(str(tmp_path / "a"), 20240101, 20240102, shape=(40, 30), seed=7)
    b = gd.write_asi_days(str(tmp_path / "b"), 20240101, 20240102, shape=(40, 30), seed=7)
    c = gd.write_asi_days(str(tmp_path / "c"), 20240101, 20240101, shape=(40, 30), seed=8)
    for fa, fb in zip(a["files"], b["files"]):
        assert filecmp.cmp(fa, fb, shallow=False)
    assert not filecmp.cmp(a["files"][0], c["files"][0], shallow=False)
    # one day does not depend on which other days are generated
    d = gd.write_asi_days(str(tmp_path / "d"), 20240102, 20240102, shape=(40, 30), seed=7)
    assert filecmp.cmp(a["files"][1], d["files"][0], shallow=False)


def test_bad_dates_are_user_errors():
    with pytest.raises(gd.UserError, match="'2024-04-01': expected a calendar day as YYYYMMDD"):
        gd.to_date("2024-04-01")
    with pytest.raises(gd.UserError, match="end date 20240101 is before start date 20240102"):
        gd.date_range(20240102, 20240101)


def test_raw_cases_match_the_layout_doc(raw_cases):
    root = raw_cases["dir"]
    cases = sorted(os.listdir(root))
    assert cases == sorted(raw_cases["cases"]) and len(cases) == 4
    for case in cases:
        assert sorted(os.listdir(os.path.join(root, case))) == ["label", "nwp", "radar"]
        info = raw_cases["cases"][case]
        stamps = {s: sorted(n[:-4] for n in os.listdir(os.path.join(root, case, s))) for s in ("radar", "nwp", "label")}
        times = {s: [dt.datetime.strptime(t, "%Y%m%d%H%M") for t in v] for s, v in stamps.items()}
        expected_radar = [t for t in info["times"] if t not in info["missing"]["radar"]]
        assert times["radar"] == expected_radar
        assert len(info["missing"]["radar"]) >= 1 and len(info["missing"]["label"]) >= 1
        assert all(b - a == dt.timedelta(hours=1) for a, b in zip(times["nwp"], times["nwp"][1:]))
        radar = np.load(os.path.join(root, case, "radar", stamps["radar"][0] + ".npy"))
        nwp = np.load(os.path.join(root, case, "nwp", stamps["nwp"][0] + ".npy"))
        label = np.load(os.path.join(root, case, "label", stamps["label"][0] + ".npy"))
        assert radar.shape == label.shape == (48, 40) and nwp.shape == (3, 48, 40)
        assert radar.dtype == nwp.dtype == label.dtype == np.float32
        assert np.isnan(radar[0, 0]) and not np.isnan(radar[24, 20])  # corners outside radar range
        assert np.nanmin(radar) >= 0 and not np.isnan(nwp).any()
    first = sorted(raw_cases["cases"])[0]
    assert len(raw_cases["cases"][first]["missing"]["radar"]) >= 5  # one run longer than max_gap_steps


def test_rain_cells_move():
    """The rain centroid moves between frames far apart: cells are advected."""
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        summary = gd.write_raw_cases(folder, n_cases=1, shape=(64, 64), n_steps=30, seed=1, missing=False)
        case = next(iter(summary))
        frames = [np.nan_to_num(np.load(os.path.join(folder, case, "radar", f"{t:%Y%m%d%H%M}.npy")))
                  for t in summary[case]["times"]]
    yy, xx = np.mgrid[:64, :64]
    centroids = [((f * yy).sum() / f.sum(), (f * xx).sum() / f.sum()) for f in frames if f.sum() > 0]
    shift = np.hypot(*np.subtract(centroids[-1], centroids[0]))
    assert shift > 2.0
    assert any(not np.array_equal(a > 0, b > 0) for a, b in zip(frames, frames[1:]))


def test_nowcast_cases_written_again_replace_the_old_ones(tmp_path, capsys):
    out = tmp_path / "raw"
    assert gd.main(["nowcast", "--out", str(out), "--cases", "2", "--steps", "12", "--size", "16x16"]) == 0
    assert gd.main(["nowcast", "--out", str(out), "--cases", "1", "--steps", "5", "--size", "16x16"]) == 0
    case = sorted(os.listdir(out))[0]
    assert len(os.listdir(out / case / "radar")) == 5  # a short case keeps every file; none of the longer run is left
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]
    other = sorted(os.listdir(out))[1]
    assert capsys.readouterr().err == f"note: {out} also holds 1 folder(s) from before that preproc.py will read " \
                                      f"as cases: {other}\n"
