"""create_mask.py: NaN frequency and land mask on generated and hand-made days."""
import datetime as dt
import os
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

import create_mask
import generate_data
from conftest import ROOT

PARAMS = os.path.join(ROOT, "params.json")


def run_mask(source_dir, output_file, start="20240401", end="20240410", extra=(), config=PARAMS):
    return create_mask.main(["--config", config, "--source_dir", source_dir, "--start_date", start,
                             "--end_date", end, "--output_file", output_file, *extra])


def test_mask_of_generated_days(asi_days, tmp_path, capsys):
    out = str(tmp_path / "masks" / "land_mask.nc")
    assert run_mask(asi_days["dir"], out, extra=["--threshold", "0.85"]) == 0
    printed = capsys.readouterr().out
    assert "2 of 10 days missing" in printed and "20240405, 20240406" in printed
    assert f"wrote {out}" in printed and "from 8 of 10 days" in printed
    assert os.listdir(tmp_path / "masks") == ["land_mask.nc"]  # no temporary file left

    # brute force: read every available day and count NaN per pixel
    counts = sum(np.isnan(xr.open_dataset(f)["z"].values).astype(int) for f in asi_days["files"])
    with xr.open_dataset(out) as ds:
        assert ds["land_mask"].dtype == np.uint8 and ds["nan_frequency"].dtype == np.float32
        assert ds["land_mask"].dims == ("y", "x") and ds["land_mask"].shape == (112, 76)
        np.testing.assert_array_equal(np.round(ds["nan_frequency"].values * 8), counts)
        np.testing.assert_allclose(ds["nan_frequency"].values, counts / 8, rtol=1e-7)
        mask = ds["land_mask"].values.astype(bool)
        np.testing.assert_array_equal(ds["x"].values, asi_days["x"])
        np.testing.assert_array_equal(ds["y"].values, asi_days["y"])
        assert ds["x"].attrs["units"] == "m" and ds["y"].attrs["standard_name"] == "projection_y_coordinate"
        assert ds["polar_stereographic"].attrs["grid_mapping_name"] == "polar_stereographic"
        assert ds["land_mask"].attrs["grid_mapping"] == "polar_stereographic"
        assert ds.attrs["days_used"] == 8 and ds.attrs["threshold"] == 0.85
        assert (ds.attrs["first_date"], ds.attrs["last_date"]) == ("20240401", "20240410")
        assert ds.attrs["missing_dates"] == "20240405,20240406"

    # the generator's own model: a pixel is NaN on land, in the pole hole and in that day's swath gaps;
    # NaN on at least 85 % of the days: land, except the always-NaN region at the pole (its own flag)
    world = generate_data.SyntheticArctic(3, (112, 76))
    days = [d for d in asi_days["dates"] if d not in asi_days["absent"]]
    always_nan = np.mean([world.land | world.gaps(d) for d in days], axis=0) >= 0.85
    generator_pole = world.r < world.pole_hole_m
    with xr.open_dataset(out) as ds:
        pole = ds["pole_hole"].values.astype(bool)
        assert ds["pole_hole"].dtype == np.uint8
    np.testing.assert_array_equal(pole, always_nan & generator_pole)
    np.testing.assert_array_equal(mask, always_nan & ~generator_pole)
    assert 1 <= pole.sum() <= 4 and not (mask & pole).any()
    np.testing.assert_array_equal(mask, world.land)  # all land is land, and nothing else is


def write_pattern_days(folder, nan_counts, n_days=4, start=dt.date(2024, 4, 1)):
    """n_days files on a small grid; pixel (i, j) is NaN on its first nan_counts[i, j] days."""
    os.makedirs(folder, exist_ok=True)
    x, y = generate_data.asi_grid(nan_counts.shape)
    for k in range(n_days):
        day = start + dt.timedelta(days=k)
        z = np.full(nan_counts.shape, 50.0, np.float32)
        z[nan_counts > k] = np.nan
        generate_data.write_asi_day(os.path.join(folder, generate_data.asi_filename(day)), z, x, y, day)
    return str(folder)


NAN_COUNTS = np.array([[0, 1, 2], [3, 4, 2]])  # of 4 days: frequencies 0, .25, .5 / .75, 1, .5


@pytest.mark.parametrize("threshold, land", [
    ("0.5", [[0, 0, 1], [1, 1, 1]]),    # at least the threshold, as in the seed: 0.5 itself is land
    ("0.49", [[0, 0, 1], [1, 1, 1]]),
    ("0.75", [[0, 0, 0], [1, 1, 0]]),
    ("0", [[1, 1, 1], [1, 1, 1]]),
    ("1", [[0, 0, 0], [0, 1, 0]]),      # NaN every day is land (the README's rule), even at threshold 1
])
def test_threshold_is_at_least(tmp_path, threshold, land):
    folder = write_pattern_days(tmp_path / "days", NAN_COUNTS)
    out = str(tmp_path / "mask.nc")
    run_mask(folder, out, end="20240404", extra=["--threshold", threshold])
    with xr.open_dataset(out) as ds:
        np.testing.assert_array_equal(ds["nan_frequency"].values, NAN_COUNTS / 4)
        np.testing.assert_array_equal(ds["land_mask"].values, land)
        assert not ds["pole_hole"].values.any()  # 3.5 Mm pixels: nothing near the pole is a pole hole


def test_frequency_equal_to_threshold_is_land(tmp_path):
    counts = np.array([[16, 17, 18], [0, 20, 17]])  # of 20 days: 17/20 = 0.85 exactly in decimal
    folder = write_pattern_days(tmp_path / "days", counts, n_days=20)
    out = str(tmp_path / "mask.nc")
    run_mask(folder, out, end="20240420", extra=["--threshold", "0.85"])
    with xr.open_dataset(out) as ds:
        np.testing.assert_array_equal(ds["land_mask"].values, [[0, 1, 1], [0, 1, 1]])
        np.testing.assert_array_equal(ds["nan_frequency"].values, (counts / 20).astype(np.float32))


def test_threshold_and_dates_default_to_params(tmp_path, params, params_file):
    folder = write_pattern_days(tmp_path / "days", NAN_COUNTS)
    params["paths"]["sea_ice_data"] = folder
    params["sea_ice"].update(start_date=20240401, end_date=20240404, mask_threshold=0.3)
    config = params_file(params)
    out = str(tmp_path / "mask.nc")
    assert create_mask.main(["--config", config, "--output_file", out]) == 0
    with xr.open_dataset(out) as ds:
        np.testing.assert_array_equal(ds["land_mask"].values, [[0, 0, 1], [1, 1, 1]])
        assert ds.attrs["threshold"] == 0.3 and ds.attrs["days_used"] == 4


def test_missing_and_unreadable_days_are_skipped(tmp_path, capsys):
    folder = write_pattern_days(tmp_path / "days", NAN_COUNTS)
    with open(os.path.join(folder, generate_data.asi_filename(20240406)), "wb") as fh:
        fh.write(b"<html>not a NetCDF file</html>")  # a damaged download
    out = str(tmp_path / "mask.nc")
    run_mask(folder, out, end="20240406", extra=["--threshold", "0.5"])
    captured = capsys.readouterr()
    assert "warning:" in captured.err and "asi-AMSR2-n3125-20240406-v5.4.nc" in captured.err
    assert "1 of 6 days missing (skipped): 20240405" in captured.out
    with xr.open_dataset(out) as ds:
        assert ds.attrs["days_used"] == 4
        assert ds.attrs["missing_dates"] == "20240405" and ds.attrs["unreadable_dates"] == "20240406"
        np.testing.assert_array_equal(ds["nan_frequency"].values, NAN_COUNTS / 4)


def run_script(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "create_mask.py"), "--config", PARAMS, *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_bad_inputs_exit_2_with_one_line(tmp_path):
    folder = write_pattern_days(tmp_path / "days", NAN_COUNTS)
    odd = os.path.join(folder, generate_data.asi_filename(20240405))
    x, y = generate_data.asi_grid((3, 3))
    generate_data.write_asi_day(odd, np.zeros((3, 3), np.float32), x, y, 20240405)
    result = run_script("--source_dir", folder, "--start_date", "20240401", "--end_date", "20240405",
                        "--output_file", str(tmp_path / "mask.nc"))
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and odd in error and "expected 2x3" in error
    assert "Traceback" not in result.stderr
    assert not os.path.exists(tmp_path / "mask.nc")

    result = run_script("--source_dir", folder, "--start_date", "20250101", "--end_date", "20250103",
                        "--output_file", str(tmp_path / "mask.nc"))
    assert result.returncode == 2 and "no readable asi-AMSR2-n3125-*-v5.4.nc file" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--threshold", "1.5"], "expected a fraction between 0 and 1"),
    (["--start_date", "2024-04-01"], "--start_date '2024-04-01': expected a calendar day as YYYYMMDD"),
    (["--source_dir", "/nonexistent/folder"], "folder not found"),
])
def test_bad_flags(asi_days, tmp_path, capsys, args, message):
    argv = ["--config", PARAMS, "--source_dir", asi_days["dir"], "--output_file", str(tmp_path / "m.nc"), *args]
    with pytest.raises(SystemExit) as exit_info:
        create_mask.run_main(create_mask.main, argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
