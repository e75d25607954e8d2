"""consolidate_data.py on generated Bremen-layout days: the calendar axis, missing and unreadable days,
batch independence, the brute-force oracle, land, outputs, the seed's commands and user errors."""
import os
import shutil
import subprocess
import sys

import netCDF4
import numpy as np
import pytest
import xarray as xr

import consolidate_data
import generate_data
from conftest import ROOT
from config import UserError
from interpolation import fill_gaussian_bruteforce, fill_time_linear

START, END = 20240301, 20240409  # 40 days
ABSENT = [20240310, 20240320, 20240321]
GARBAGE, NO_Z = 20240315, 20240401  # a file that is not NetCDF, and a NetCDF file without `z`
SHAPE = (64, 48)
DEFAULTS = dict(time_window=3, space_window=10, alpha=25.0, sigma=5.0, max_time_gap=5)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """40 days on a 64 x 48 grid: three absent, one garbage file, one file without z."""
    folder = tmp_path_factory.mktemp("asi40")
    result = generate_data.write_asi_days(str(folder), START, END, shape=SHAPE, seed=11, absent=ABSENT,
                                          return_truth=True)
    with open(os.path.join(folder, generate_data.asi_filename(GARBAGE)), "wb") as fh:
        fh.write(b"<html>502 Bad Gateway</html>" * 10)
    no_z = os.path.join(folder, generate_data.asi_filename(NO_Z))
    os.remove(no_z)
    with netCDF4.Dataset(no_z, "w") as nc:
        nc.createDimension("y", SHAPE[0])
        nc.createVariable("other", "f4", ("y",))[:] = 1.0
    result["dir"] = str(folder)
    result["missing"] = sorted(ABSENT + [GARBAGE, NO_Z])
    return result


def run(source_dir, output, *extra, start=START, end=END):
    argv = ["--config", os.path.join(ROOT, "params.json"), "--source_dir", source_dir, "--start_date", str(start),
            "--end_date", str(end), "--output_file", str(output), *map(str, extra)]
    assert consolidate_data.main(argv) == 0
    return output


def load(path):
    opener = xr.open_zarr if str(path).endswith(".zarr") else xr.open_dataset
    with opener(path) as ds:
        return ds.load()


def reference(source_dir, days, land=None, time_window=3, space_window=10, alpha=25.0, sigma=5.0, max_time_gap=5):
    """The whole range in one piece with the brute-force oracle: (conc fraction, flags)."""
    frames = []
    for day in days:
        frame = np.full(SHAPE, np.nan, np.float32)
        try:
            with netCDF4.Dataset(os.path.join(source_dir, generate_data.asi_filename(day))) as nc:
                frame = np.ma.filled(nc.variables["z"][:].astype(np.float32), np.nan)
        except (OSError, KeyError):
            pass
        frames.append(frame)
    stack = np.ascontiguousarray(np.stack(frames))
    if land is not None:
        stack[:, land] = np.nan
    stage1 = fill_time_linear(stack, max_time_gap)
    fillable = None if land is None else ~land
    filled, no_neighbour = fill_gaussian_bruteforce(stack, fillable, None, time_window, space_window, alpha, sigma)
    flags = np.zeros(stack.shape, np.uint8)
    flags[stage1] = 1
    flags[np.isnan(stack)] = 2
    flags[no_neighbour] = 3
    conc = filled / np.float32(100)
    if land is not None:
        flags[:, land] = 4
        conc[:, land] = 0
    return conc, flags


def dates(first, last):
    return [int(f"{d:%Y%m%d}") for d in generate_data.date_range(first, last)]


# --------------------------------------------------------------------------- batches, oracle, formats
def test_bit_identical_for_every_batch_size_and_format_and_equal_to_oracle(source, tmp_path):
    outputs = [load(run(source["dir"], tmp_path / f"b{b}{ext}", "--batch_size", b))
               for ext in (".nc", ".zarr") for b in (1, 7, 30)]
    for other in outputs[1:]:
        for name in ("sea_ice_conc", "fill_flag", "time", "missing_dates", "x", "y"):
            np.testing.assert_array_equal(other[name].values, outputs[0][name].values, err_msg=name)
            assert other[name].dtype == outputs[0][name].dtype
    ds = outputs[0]
    conc, flags = reference(source["dir"], source["dates"])
    np.testing.assert_array_equal(ds.fill_flag.values, flags)
    np.testing.assert_allclose(ds.sea_ice_conc.values, conc, rtol=0, atol=1e-5)
    assert set(np.unique(flags)) == {0, 1, 2, 3}  # every stage is exercised
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b1.nc", "b1.zarr", "b30.nc", "b30.zarr",
                                                          "b7.nc", "b7.zarr"]  # no temporary left


# --------------------------------------------------------------------------- calendar, missing days
def test_calendar_axis_missing_and_unreadable_days(source, tmp_path, capsys):
    ds = load(run(source["dir"], tmp_path / "out.nc", "--batch_size", 5))
    err = capsys.readouterr().err
    assert ds.time.dtype == np.int32 and ds.time.values.tolist() == dates(START, END)
    assert ds.missing_dates.dtype == np.int32 and ds.missing_dates.values.tolist() == source["missing"]
    assert generate_data.asi_filename(GARBAGE) in err and generate_data.asi_filename(NO_Z) in err
    assert "3 of 40 days have no file" in err
    conc, flags = ds.sea_ice_conc.values, ds.fill_flag.values
    assert conc.dtype == np.float32 and flags.dtype == np.uint8
    assert not np.isnan(conc).any() and conc.min() >= 0 and conc.max() <= 1
    for day in source["missing"]:  # all-NaN input frames: nothing observed, everything filled
        i = ds.time.values.tolist().index(day)
        assert not (flags[i] == 0).any() and (flags[i] == 1).mean() > 0.3
    observed = flags == 0
    truth_with_gaps = np.stack([generate_data.SyntheticArctic(11, SHAPE).observed(d) for d in
                                generate_data.date_range(START, END)]) / np.float32(100)
    np.testing.assert_array_equal(conc[observed], truth_with_gaps[observed])  # observed values kept as-is


def test_read_failure_after_scan_is_a_missing_day(source, tmp_path, monkeypatch):
    """A file whose header opens but whose data cannot be read: warned, all-NaN, listed."""
    broken = os.path.join(source["dir"], generate_data.asi_filename(20240325))
    real_read = consolidate_data.read_day

    def read_frame(path, **kwargs):
        if path == broken:
            raise OSError("HDF5 error: bad chunk")
        return real_read(path, **kwargs)

    monkeypatch.setattr(consolidate_data, "read_day", read_frame)
    ds = load(run(source["dir"], tmp_path / "out.zarr", "--batch_size", 4))
    assert ds.missing_dates.values.tolist() == sorted(source["missing"] + [20240325])
    assert not (ds.fill_flag.values[24] == 0).any()


def test_interrupted_run_leaves_no_output(source, tmp_path, monkeypatch):
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return fill_gaussian_bruteforce(*args, **kwargs)

    monkeypatch.setattr(consolidate_data, "fill_gaussian", failing)
    for name in ("out.nc", "out.zarr"):
        calls.clear()
        with pytest.raises(KeyboardInterrupt):
            run(source["dir"], tmp_path / name)
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- land
def write_mask(path, land, x, y):
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("y", land.shape[0])
        nc.createDimension("x", land.shape[1])
        nc.createVariable("x", "f8", ("x",))[:] = x
        nc.createVariable("y", "f8", ("y",))[:] = y
        nc.createVariable("land_mask", "u1", ("y", "x"))[:] = land.astype(np.uint8)
        nc.createVariable("nan_frequency", "f4", ("y", "x"))[:] = land.astype(np.float32)


def test_land_is_zero_flag_4_and_never_a_neighbour(source, tmp_path):
    land = source["land"].copy()
    land[20:26, 10:40] = True  # an observed ocean strip declared land: its values must not be used
    mask_file = tmp_path / "land_mask.nc"
    write_mask(mask_file, land, source["x"], source["y"])
    changed = tmp_path / "changed"  # the same days with other values on the "land" strip
    shutil.copytree(source["dir"], changed)
    for day in generate_data.date_range(START, END):
        path = changed / generate_data.asi_filename(day)
        if day.strftime("%Y%m%d") in ("20240315", "20240401") or not path.exists():
            continue
        with netCDF4.Dataset(path, "a") as nc:
            z = nc.variables["z"]
            strip = z[20:26, 10:40]
            z[20:26, 10:40] = np.where(np.ma.getmaskarray(strip), 100.0, 0.0)
    a = load(run(source["dir"], tmp_path / "a.nc", "--land_mask_file", mask_file, "--batch_size", 6))
    b = load(run(str(changed), tmp_path / "b.nc", "--land_mask_file", mask_file, "--batch_size", 6))
    np.testing.assert_array_equal(a.sea_ice_conc.values, b.sea_ice_conc.values)
    np.testing.assert_array_equal(a.fill_flag.values, b.fill_flag.values)
    conc, flags = a.sea_ice_conc.values, a.fill_flag.values
    assert (conc[:, land] == 0).all() and (flags[:, land] == 4).all()
    assert not (flags[:, ~land] == 4).any() and not np.isnan(conc).any()
    ref_conc, ref_flags = reference(source["dir"], source["dates"], land=land)
    np.testing.assert_array_equal(flags, ref_flags)
    np.testing.assert_allclose(conc, ref_conc, rtol=0, atol=1e-5)
    assert a.attrs["land_mask_file"] == os.path.abspath(mask_file)


# --------------------------------------------------------------------------- quality, format
def test_interpolation_error_against_truth(asi_days, tmp_path):
    """MAE against the generator's truth on filled ocean pixels.

    Time-linear: the field changes smoothly (its pattern turns over in ~45 days), so a
    linear fill over <= 6 days is off by ~0.5 %; bound 2 %. Gaussian: on this 112 x 76
    grid a pixel is ~100 km, so the +-10-pixel box spans +-1000 km, wider than the 300 km
    marginal ice zone, and gaps that cross the ice edge are smoothed (~14 %); it must still
    be below 20 % and at most half the error of filling with the day's mean observed value.
    """
    ds = load(run(asi_days["dir"], tmp_path / "q.nc", start=20240401, end=20240410))
    conc, flags = ds.sea_ice_conc.values, ds.fill_flag.values
    truth = asi_days["truth"] / np.float32(100)
    ocean = ~np.isnan(truth)
    linear, gaussian = (flags == 1) & ocean, (flags == 2) & ocean
    assert linear.sum() > 1000 and gaussian.sum() > 100
    assert np.abs(conc - truth)[linear].mean() < 0.02
    gaussian_mae = np.abs(conc - truth)[gaussian].mean()
    day_mean = np.array([conc[t][flags[t] == 0].mean() if (flags[t] == 0).any() else np.nan
                         for t in range(len(conc))])
    baseline = np.abs(day_mean[:, None, None] - truth)[gaussian & ~np.isnan(day_mean)[:, None, None]].mean()
    assert gaussian_mae < 0.2 and gaussian_mae < 0.5 * baseline


def test_cf_output_readable_by_xarray(asi_days, tmp_path):
    path = run(asi_days["dir"], tmp_path / "cf.nc", "--batch_size", 4, start=20240401, end=20240410)
    with netCDF4.Dataset(path) as nc:
        conc = nc.variables["sea_ice_conc"]
        assert conc.chunking() == [1, 112, 76] and conc.filters()["zlib"]
        assert "_FillValue" not in conc.ncattrs()
    ds = load(path)
    with netCDF4.Dataset(asi_days["files"][0]) as src:
        source_mapping = {k: src["polar_stereographic"].getncattr(k) for k in src["polar_stereographic"].ncattrs()}
        source_x_attrs = {k: src["x"].getncattr(k) for k in src["x"].ncattrs()}
    assert ds.sea_ice_conc.attrs["grid_mapping"] == "polar_stereographic"
    assert ds.sea_ice_conc.attrs["units"] == "1"
    assert ds.polar_stereographic.attrs == source_mapping
    assert ds.x.attrs == source_x_attrs
    np.testing.assert_array_equal(ds.x.values, asi_days["x"])
    np.testing.assert_array_equal(ds.y.values, asi_days["y"])
    assert ds.fill_flag.attrs["flag_meanings"] == "observed time_linear gaussian no_neighbour land pole_hole"
    for key, value in DEFAULTS.items():
        assert ds.attrs[key] == value
    assert ds.missing_dates.values.tolist() == [20240405, 20240406]
    zarr_ds = load(run(asi_days["dir"], tmp_path / "cf.zarr", start=20240401, end=20240410))
    assert zarr_ds.polar_stereographic.attrs == source_mapping
    assert zarr_ds.sea_ice_conc.encoding["chunks"] == (1, 112, 76)
    rerun = load(run(asi_days["dir"], tmp_path / "cf.zarr", start=20240402, end=20240404))  # replaces the store
    assert rerun.time.values.tolist() == [20240402, 20240403, 20240404]


# --------------------------------------------------------------------------- the seed's commands
def test_seed_readme_commands(asi_days, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the seed runs from the repository root with ./params.json
    out = tmp_path / "sea_ice_concentration_202404.nc"
    assert consolidate_data.main(["--source_dir", asi_days["dir"], "--start_date", "20240401",
                                  "--end_date", "20240410", "--output_file", str(out)]) == 0
    assert load(out).sizes["time"] == 10
    full = tmp_path / "full_sic.nc"
    assert consolidate_data.main(["--source_dir", asi_days["dir"], "--start_date", "20240402",
                                  "--end_date", "20240408", "--output_file", str(full), "--batch_size", "30",
                                  "--time_window", "3", "--space_window", "7", "--alpha", "15.0",
                                  "--sigma", "7.0"]) == 0
    attrs = load(full).attrs
    assert (attrs["space_window"], attrs["alpha"], attrs["sigma"], attrs["time_window"]) == (7, 15.0, 7.0, 3)


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        consolidate_data.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in list(consolidate_data.FLAG_KEYS) + ["--config"]:
        assert flag in text
    assert text.count("(default:") >= len(consolidate_data.FLAG_KEYS) + 1
    assert "30 days" in text and "10 pixels" in text


# --------------------------------------------------------------------------- user errors
def test_errors_exit_2_without_traceback(tmp_path):
    for argv, expected in (
            (["--source_dir", str(tmp_path / "nope")], "--source_dir"),
            (["--output_file", str(tmp_path / "out.txt")], "expected a name ending in .nc"),
    ):
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "consolidate_data.py"), *argv],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("error: ") and expected in proc.stderr
        assert "Traceback" not in proc.stderr


def test_user_errors(source, asi_days, tmp_path):
    out = tmp_path / "out.nc"
    cases = [
        ((source["dir"], out), {"start": "2024031x"}, r"--start_date '2024031x': expected a calendar day as YYYYMMDD"),
        ((source["dir"], out), {"start": 20240410, "end": 20240401}, "before start date"),
        ((source["dir"], out), {"start": 20200101, "end": 20200110}, "no readable asi-AMSR2-n3125-"),
        ((source["dir"], out, "--batch_size", 0), {}, r"--batch_size: sea_ice.batch_size: expected a value >= 1"),
        ((source["dir"], out, "--land_mask_file", tmp_path / "none.nc"), {}, "file not found"),
    ]
    for args, dates_, message in cases:
        with pytest.raises(UserError, match=message):
            run(*args, **dates_)
    # a well-formed day on another grid is a mix-up, named
    mixed = tmp_path / "mixed"
    shutil.copytree(asi_days["dir"], mixed)
    other = generate_data.SyntheticArctic(0, (56, 38))
    generate_data.write_asi_day(str(mixed / generate_data.asi_filename(20240403)),
                                other.observed(20240403), other.x, other.y, 20240403)
    with pytest.raises(UserError, match=r"asi-AMSR2-n3125-20240403-v5.4.nc: z is 56x38, expected 112x76"):
        run(str(mixed), out, start=20240401, end=20240410)
    # a land mask on another grid
    bad_mask = tmp_path / "bad_mask.nc"
    write_mask(bad_mask, np.zeros((10, 12), bool), np.arange(12.0), np.arange(10.0))
    with pytest.raises(UserError, match=r"land_mask is 10x12, expected 64x48"):
        run(source["dir"], out, "--land_mask_file", bad_mask)
    assert not out.exists()
    # an output name that exists and is not an older output is not replaced
    folder = tmp_path / "keep.zarr"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="exists and is not a Zarr store"):
        run(source["dir"], folder)
    assert (folder / "notes.txt").read_text() == "mine"


# --------------------------------------------------------------------------- the pole hole
def pole_days(folder, n_days=4, hole=1, size=15):
    """size x size days centred on the pole: a (2 hole + 1)^2 pole hole NaN every day, land in one corner,
    ice values that differ by pixel and day. Returns (x, y, land, hole mask, values (T, H, W) in %)."""
    x = y = (np.arange(size) - size // 2) * 25e3  # the pole at the centre pixel
    rng = np.random.default_rng(1)
    values = rng.uniform(85, 99, (n_days, size, size)).astype(np.float32)
    land = np.zeros((size, size), bool)
    land[:3, :4] = True
    centre = size // 2
    pole = np.zeros((size, size), bool)
    pole[centre - hole:centre + hole + 1, centre - hole:centre + hole + 1] = True
    values[:, land | pole] = np.nan
    for k, day in enumerate(generate_data.date_range(20240401, 20240400 + n_days)):
        generate_data.write_asi_day(os.path.join(folder, generate_data.asi_filename(day)), values[k], x, y, day)
    return x, y, land, pole, values


def test_pole_hole_has_its_own_flag_and_is_filled_from_its_rim(tmp_path):
    os.makedirs(tmp_path / "days")
    x, y, land, pole, values = pole_days(str(tmp_path / "days"))
    import create_mask
    mask_file = str(tmp_path / "mask.nc")
    assert create_mask.main(["--config", os.path.join(ROOT, "params.json"), "--source_dir", str(tmp_path / "days"),
                             "--start_date", "20240401", "--end_date", "20240404", "--output_file", mask_file]) == 0
    with xr.open_dataset(mask_file) as ds:
        np.testing.assert_array_equal(ds.pole_hole.values.astype(bool), pole)
        np.testing.assert_array_equal(ds.land_mask.values.astype(bool), land)
    out = run(str(tmp_path / "days"), tmp_path / "c.nc", "--land_mask_file", mask_file, start=20240401, end=20240404)
    ds = load(out)
    flags, conc = ds.fill_flag.values, ds.sea_ice_conc.values
    assert (flags[:, pole] == 5).all() and (flags[:, land] == 4).all() and (flags[:, ~pole & ~land] == 0).all()
    assert (conc[:, land] == 0).all()
    # brute force: the mean of the observed values within Manhattan distance 3 of the hole (not land)
    rows, cols = np.nonzero(pole)
    for t in range(4):
        ring = [values[t, i, j] for i in range(15) for j in range(15)
                if not pole[i, j] and not land[i, j] and np.min(np.abs(rows - i) + np.abs(cols - j)) <= 3]
        np.testing.assert_allclose(conc[t, pole], np.mean(ring) / 100, rtol=1e-6)
        assert conc[t, pole].min() > 0.85  # surrounded by ice: never 0 %
    assert ds.fill_flag.attrs["flag_meanings"].split()[5] == "pole_hole"


def test_pole_hole_without_a_rim_value_stays_missing(tmp_path, capsys):
    """One day whose only value is far from the pole, space_window 1: no rim value -> NaN (missing), not 0."""
    os.makedirs(tmp_path / "days")
    size = 15
    x = y = (np.arange(size) - size // 2) * 25e3
    z = np.full((size, size), np.nan, np.float32)
    z[0, size - 1] = 50.0
    generate_data.write_asi_day(str(tmp_path / "days" / generate_data.asi_filename(20240401)), z, x, y, 20240401)
    pole = np.zeros((size, size), bool)
    pole[6:9, 6:9] = True
    mask_file = str(tmp_path / "mask.nc")
    with netCDF4.Dataset(mask_file, "w") as nc:
        nc.createDimension("y", size)
        nc.createDimension("x", size)
        nc.createVariable("x", "f8", ("x",))[:] = x
        nc.createVariable("y", "f8", ("y",))[:] = y
        nc.createVariable("land_mask", "u1", ("y", "x"))[:] = 0
        nc.createVariable("pole_hole", "u1", ("y", "x"))[:] = pole.astype(np.uint8)
    ds = load(run(str(tmp_path / "days"), tmp_path / "c.nc", "--land_mask_file", mask_file, "--space_window", 1,
                  start=20240401, end=20240401))
    assert np.isnan(ds.sea_ice_conc.values[0][pole]).all() and (ds.fill_flag.values[0][pole] == 5).all()
    assert not np.isnan(ds.sea_ice_conc.values[0][~pole]).any()
    assert "pole hole (NaN on 1 days: no value on its rim)" in capsys.readouterr().out
