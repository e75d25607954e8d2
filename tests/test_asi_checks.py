"""Sea-ice day files are checked against the Bremen ASI format (asi_files) wherever they are read:
corrected when the fix is unambiguous (and said), otherwise a missing day; on 448 x 304 generated days."""
import os
import shutil
import subprocess
import sys

import netCDF4
import numpy as np
import pytest
import xarray as xr

import asi_files
import consolidate_data
import create_mask
import find_several_data_in_target_area as roi_scan
import generate_data
import get_dims
from conftest import ROOT

PARAMS = os.path.join(ROOT, "params.json")
SHAPE = (448, 304)
START, END = 20240401, 20240408
FLIPPED, FRACTION, ALL_NAN, TOO_BIG, TRANSPOSED = 20240402, 20240403, 20240404, 20240405, 20240406


def day_path(folder, day):
    return os.path.join(str(folder), generate_data.asi_filename(day))


def rewrite(path, z=None, x=None, y=None, dims=("y", "x"), units="%", xy_units="m", fmt="NETCDF4"):
    """Rewrite a day file with other values, coordinates, dims or units (the rest as generate_data writes)."""
    with netCDF4.Dataset(path) as nc:
        z = np.ma.filled(nc["z"][:], np.nan) if z is None else z
        x = nc["x"][:] if x is None else x
        y = nc["y"][:] if y is None else y
    os.remove(path)
    with netCDF4.Dataset(path, "w", format=fmt) as nc:
        nc.createDimension("y", len(y))
        nc.createDimension("x", len(x))
        for name, values in (("x", x), ("y", y)):
            var = nc.createVariable(name, "f8", (name,))
            var.units = xy_units
            var[:] = values
        var = nc.createVariable("z", "f4", dims, fill_value=np.float32(np.nan))
        var.units = units
        var[:] = z


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """'good': eight generated days; 'odd': the same days, five of them rewritten the ways the issue lists."""
    base = tmp_path_factory.mktemp("checks")
    good, odd = base / "good", base / "odd"
    generate_data.write_asi_days(str(good), START, END, shape=SHAPE, seed=4)
    shutil.copytree(good, odd)
    with netCDF4.Dataset(day_path(good, FLIPPED)) as nc:
        z, y = np.ma.filled(nc["z"][:], np.nan), nc["y"][:]
    rewrite(day_path(odd, FLIPPED), z=z[::-1], y=y[::-1])  # y descending: row 0 is the northern edge
    with netCDF4.Dataset(day_path(good, FRACTION)) as nc:
        rewrite(day_path(odd, FRACTION), z=np.ma.filled(nc["z"][:], np.nan) / 100)  # fraction, units still "%"
    rewrite(day_path(odd, ALL_NAN), z=np.full(SHAPE, np.nan, np.float32))
    with netCDF4.Dataset(day_path(good, TOO_BIG)) as nc:
        rewrite(day_path(odd, TOO_BIG), z=np.ma.filled(nc["z"][:], np.nan) * 2)  # up to 200 %
    with netCDF4.Dataset(day_path(good, TRANSPOSED)) as nc:
        rewrite(day_path(odd, TRANSPOSED), z=np.ma.filled(nc["z"][:], np.nan).T, dims=("x", "y"))
    return {"good": str(good), "odd": str(odd), "base": base}


def without(folder, days, dest):
    """A copy of `folder` without the files of `days` (what the odd folder must be equivalent to)."""
    shutil.copytree(folder, dest)
    for day in days:
        os.remove(day_path(dest, day))
    return str(dest)


# --------------------------------------------------------------------------- the check itself
def test_read_day_corrects_what_is_unambiguous(folders):
    for day in (FLIPPED, FRACTION, TRANSPOSED):
        notes = []
        good = asi_files.read_day(day_path(folders["good"], day))
        odd = asi_files.read_day(day_path(folders["odd"], day), note=lambda path, text: notes.append(text))
        np.testing.assert_allclose(odd, good, rtol=1e-6, atol=1e-5, equal_nan=True)
        assert len(notes) == 1
    window = (slice(100, 180), slice(20, 90))  # a window of a flipped file is the same part of the grid
    np.testing.assert_array_equal(asi_files.read_day(day_path(folders["odd"], FLIPPED), window, note=print),
                                  asi_files.read_day(day_path(folders["good"], FLIPPED))[100:180, 20:90])
    header = asi_files.DayFile(day_path(folders["odd"], FLIPPED))
    assert (np.diff(header.y) > 0).all() and header.corrections == [
        "y descending: flipped to ascending y (row 0 = southern edge)"]
    grid = asi_files.read_grid(day_path(folders["odd"], FLIPPED))
    np.testing.assert_array_equal(grid["y"][0], asi_files.read_grid(day_path(folders["good"], FLIPPED))["y"][0])


def test_x_descending_units_and_km(tmp_path):
    x, y = generate_data.asi_grid((6, 5))
    z = np.arange(30, dtype=np.float32).reshape(6, 5)
    rewrite_path = str(tmp_path / "d.nc")
    generate_data.write_asi_day(rewrite_path, z, x, y, 20240401)
    rewrite(rewrite_path, z=z[:, ::-1], x=x[::-1])
    np.testing.assert_array_equal(asi_files.read_day(rewrite_path, note=print), z)
    rewrite(rewrite_path, z=z / 100, x=x / 1000, y=y / 1000, units="1", xy_units="km")
    day = asi_files.DayFile(rewrite_path)
    np.testing.assert_allclose(day.read(), z, rtol=1e-6)
    np.testing.assert_allclose(day.x, x)
    assert any("units '1'" in c for c in day.corrections) and any("km" in c for c in day.corrections)


@pytest.mark.parametrize("change, error, reason", [
    (dict(z=np.full((6, 5), 50.0, np.float32), units="K"), asi_files.BadDay, "z units 'k'"),
    (dict(z=np.full((6, 5), -5.0, np.float32)), asi_files.BadValues, "30 values of z outside 0..100 %"),
    (dict(z=np.full((6, 5), np.inf, np.float32)), asi_files.BadValues, "outside 0..100 %"),
    (dict(z=np.full((6, 5), np.nan, np.float32)), asi_files.NoData, "no valid value"),
    (dict(y=np.array([0.0, 1.0, 3.0, 2.0, 5.0, 6.0])), asi_files.BadDay, "y is not evenly spaced and monotonic"),
    (dict(z=np.full((6, 5), 50.0, np.float32), dims=("y", "y2")), asi_files.BadDay, "expected (y, x)"),
    (dict(fmt="NETCDF3_CLASSIC"), asi_files.BadDay, "NetCDF-4 (HDF5)"),
])
def test_files_that_do_not_match_the_format_are_bad_days(tmp_path, change, error, reason):
    x, y = generate_data.asi_grid((6, 5))
    path = str(tmp_path / "d.nc")
    generate_data.write_asi_day(path, np.full((6, 5), 50.0, np.float32), x, y, 20240401)
    dims = change.pop("dims", ("y", "x"))
    if dims != ("y", "x"):  # a second y-like dimension instead of x
        with netCDF4.Dataset(path, "a") as nc:
            nc.createDimension("y2", 5)
            nc.renameVariable("z", "z_old")
            nc.createVariable("z", "f4", dims)[:] = change["z"]
    else:
        rewrite(path, **change)
    with pytest.raises(error, match=reason.replace("(", r"\(").replace(")", r"\)")):
        asi_files.read_day(path)


def test_missing_coordinate_and_truncated_file(tmp_path):
    x, y = generate_data.asi_grid((60, 50))
    path = str(tmp_path / "d.nc")
    generate_data.write_asi_day(path, np.random.default_rng(0).uniform(0, 100, (60, 50)).astype(np.float32),
                                x, y, 20240401)
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) - 200])
    with pytest.raises(asi_files.Unreadable):
        asi_files.read_day(path)
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("y", 2)
        nc.createDimension("x", 2)
        nc.createVariable("x", "f8", ("x",))[:] = [0.0, 1.0]
        nc.createVariable("z", "f4", ("y", "x"))[:] = 1.0
    with pytest.raises(asi_files.BadDay, match="no coordinate variable 'y'"):
        asi_files.DayFile(path)


# --------------------------------------------------------------------------- the scripts
def test_consolidate_corrects_and_reports(folders, capsys):
    """Flipped, fraction and transposed days merge as their originals would; the all-NaN and the 200 %
    day are missing days, exactly as if they had no file."""
    reference = without(folders["good"], [ALL_NAN, TOO_BIG], folders["base"] / "ref")
    outputs = {}
    for name, folder in (("odd", folders["odd"]), ("ref", reference)):
        out = str(folders["base"] / f"{name}.nc")
        assert consolidate_data.main(["--config", PARAMS, "--source_dir", folder, "--start_date", str(START),
                                      "--end_date", str(END), "--output_file", out]) == 0
        outputs[name] = xr.load_dataset(out)
    err = capsys.readouterr().err
    odd, ref = outputs["odd"], outputs["ref"]
    assert odd.missing_dates.values.tolist() == [ALL_NAN, TOO_BIG] == ref.missing_dates.values.tolist()
    np.testing.assert_array_equal(odd.fill_flag.values, ref.fill_flag.values)
    difference = np.abs(odd.sea_ice_conc.values - ref.sea_ice_conc.values).max()
    assert difference < 1e-6  # before the check: up to 0.98 over ocean (flipped day)
    for day, words in ((FLIPPED, "y descending: flipped"), (FRACTION, "a fraction, multiplied by 100"),
                       (TRANSPOSED, "transposed"), (ALL_NAN, "no valid value"), (TOO_BIG, "values of z outside")):
        assert any(str(day) in line and words in line for line in err.splitlines()), (day, words)
    assert "y descending" in odd.attrs["corrections"] and str(FLIPPED) in odd.attrs["corrections"]


def test_create_mask_corrects_and_skips(folders, capsys):
    reference = without(folders["good"], [ALL_NAN, TOO_BIG], folders["base"] / "ref_mask")
    masks = {}
    for name, folder in (("odd", folders["odd"]), ("ref", reference)):
        out = str(folders["base"] / f"mask_{name}.nc")
        assert create_mask.main(["--config", PARAMS, "--source_dir", folder, "--start_date", str(START),
                                 "--end_date", str(END), "--output_file", out]) == 0
        masks[name] = xr.load_dataset(out)
    printed = capsys.readouterr()
    np.testing.assert_array_equal(masks["odd"].nan_frequency.values, masks["ref"].nan_frequency.values)
    np.testing.assert_array_equal(masks["odd"].land_mask.values, masks["ref"].land_mask.values)
    assert masks["odd"].attrs["days_used"] == 6  # the all-NaN day does not count in the NaN frequency
    assert masks["odd"].attrs["unreadable_dates"] == f"{ALL_NAN},{TOO_BIG}"
    assert "2 of 8 days unusable" in printed.out and "y descending" in printed.err


def test_roi_scan_and_get_dims_read_the_corrected_grid(folders, tmp_path, capsys):
    ymin, ymax, xmin, xmax = 300, 400, 100, 200  # northern half: a flipped day read as stored would differ
    counts = {}
    for name in ("odd", "good"):
        assert roi_scan.main(["--config", PARAMS, "--source_dir", folders[name], "--start_date", str(START),
                              "--end_date", str(END), "--ymin", str(ymin), "--ymax", str(ymax), "--xmin", str(xmin),
                              "--xmax", str(xmax), "--output_file", str(tmp_path / f"{name}.png")]) == 0
        counts[name] = capsys.readouterr().out
    good_lines = {l[:8]: l for l in counts["good"].splitlines() if "ROI pixels missing" in l}
    for day in (FLIPPED, FRACTION, TRANSPOSED):
        if str(day) in good_lines:
            assert good_lines[str(day)] in counts["odd"]
    assert f"{ALL_NAN}  no data at all" in counts["odd"]
    assert "2 unusable" in counts["odd"]
    only = tmp_path / "only"
    os.makedirs(only)
    shutil.copy(day_path(folders["odd"], TRANSPOSED), only)
    assert get_dims.main(["--config", PARAMS, "--source_dir", str(only)]) == 0
    captured = capsys.readouterr()
    assert f"H={SHAPE[0]} rows x W={SHAPE[1]} columns" in captured.out and "transposed" in captured.err


def test_get_dims_skips_files_that_are_not_asi_days(folders, tmp_path, capsys):
    folder = tmp_path / "mixed"
    os.makedirs(folder)
    (folder / "asi-AMSR2-n3125-20240101-v5.4.nc").write_bytes(b"<html>not found</html>")
    shutil.copy(day_path(folders["good"], START), folder)
    assert get_dims.main(["--config", PARAMS, "--source_dir", str(folder)]) == 0
    captured = capsys.readouterr()
    assert "20240101" in captured.err and "skipped" in captured.err
    assert str(START) in captured.out and f"H={SHAPE[0]} rows" in captured.out
    os.remove(day_path(folder, START))
    result = subprocess.run([sys.executable, os.path.join(ROOT, "get_dims.py"), "--source_dir", str(folder)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: --source_dir {folder}: none of its 1 .nc files")
