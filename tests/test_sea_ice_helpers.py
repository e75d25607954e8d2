"""get_dims.py and find_several_data_in_target_area.py on generated ASI days."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

import find_several_data_in_target_area as roi_scan
import get_dims
from conftest import ROOT

PARAMS = os.path.join(ROOT, "params.json")


def test_get_dims_prints_height_and_width(asi_days):
    result = subprocess.run([sys.executable, "get_dims.py", "--source_dir", asi_days["dir"]],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    first = sorted(os.listdir(asi_days["dir"]))[0]
    assert first in result.stdout and "H=112 rows x W=76 columns" in result.stdout


def test_get_dims_errors(tmp_path, capsys):
    for argv, message in ((["--source_dir", str(tmp_path)], "no .nc file"),
                          (["--source_dir", str(tmp_path / "absent")], "folder not found")):
        with pytest.raises(SystemExit) as exit_info:
            get_dims.run_main(get_dims.main, ["--config", PARAMS, *argv])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_roi_report_matches_brute_force(asi_days, tmp_path, capsys):
    ymin, ymax, xmin, xmax = 30, 70, 5, 45
    figure = str(tmp_path / "plots" / "roi.png")
    assert roi_scan.main(["--config", PARAMS, "--source_dir", asi_days["dir"], "--start_date", "20240401",
                          "--end_date", "20240410", "--ymin", str(ymin), "--ymax", str(ymax),
                          "--xmin", str(xmin), "--xmax", str(xmax), "--output_file", figure]) == 0
    printed = capsys.readouterr().out
    reported = {int(m[0]): (int(m[1]), int(m[2]), float(m[3]))
                for m in re.findall(r"^(\d{8})  (\d+) of (\d+) ROI pixels missing \(([\d.]+)%\)", printed, re.M)}
    expected = {}
    for path in asi_days["files"]:
        with xr.open_dataset(path) as ds:
            n_nan = int(np.isnan(ds["z"].values[ymin:ymax, xmin:xmax]).sum())
            if n_nan:
                expected[int(ds.attrs["date"])] = n_nan
    assert expected, "the ROI should contain gaps on some days"
    assert {d: v[0] for d, v in reported.items()} == expected
    for n_nan, n_pixels, percent in reported.values():
        assert n_pixels == 40 * 40 and percent == pytest.approx(100 * n_nan / 1600, abs=0.0051)
    for day in ("20240405", "20240406"):
        assert re.search(rf"^{day}  file missing", printed, re.M)
    assert f"{len(expected)} with missing pixels, 2 files missing" in printed and figure in printed

    import matplotlib.image
    image = matplotlib.image.imread(figure)
    assert image.shape[0] > 300 and image.shape[1] > 300
    rgb = image[..., :3]
    assert rgb.std() > 0.1  # not blank
    red = (rgb[..., 0] > 0.8) & (rgb[..., 1] < 0.2) & (rgb[..., 2] < 0.2)
    rows, cols = np.nonzero(red)
    assert red.sum() > 100
    # the outline is taller than wide in the image exactly when the ROI is (40x40 here: square)
    assert (rows.max() - rows.min()) == pytest.approx(cols.max() - cols.min(), rel=0.1)


def test_roi_clean_region_and_default_output(asi_days, tmp_path, params, params_file, capsys):
    params["paths"]["outputs"] = str(tmp_path / "out")
    params["sea_ice"]["roi"] = [50, 56, 35, 41]  # around the pole hole: NaN every day
    config = params_file(params)
    roi_scan.main(["--config", config, "--source_dir", asi_days["dir"], "--start_date", "20240407",
                   "--end_date", "20240408"])
    printed = capsys.readouterr().out
    expected_figure = os.path.join(str(tmp_path / "out"), "plots", "roi_20240407_20240408_y50-56_x35-41.png")
    assert os.path.isfile(expected_figure) and expected_figure in printed
    counts = [int(np.isnan(xr.open_dataset(os.path.join(asi_days["dir"], f"asi-AMSR2-n3125-{d}-v5.4.nc"))["z"]
                                .values[50:56, 35:41]).sum()) for d in (20240407, 20240408)]
    assert all(counts) and "2 with missing pixels, 0 files missing" in printed
    for day, count in zip((20240407, 20240408), counts):
        assert f"{day}  {count} of 36 ROI pixels missing" in printed


@pytest.mark.parametrize("args, message", [
    (["--ymin", "10", "--ymax", "200", "--xmin", "0", "--xmax", "5"], "0 <= ymin < ymax <= 112"),
    (["--ymin", "10", "--ymax", "5", "--xmin", "0", "--xmax", "5"], "ROI"),
    (["--ymin", "10", "--ymax", "20"], "--xmin --xmax"),
])
def test_roi_errors(asi_days, tmp_path, capsys, args, message):
    argv = ["--config", PARAMS, "--source_dir", asi_days["dir"], "--start_date", "20240401",
            "--end_date", "20240403", "--output_file", str(tmp_path / "r.png"), *args]
    with pytest.raises(SystemExit) as exit_info:
        roi_scan.run_main(roi_scan.main, argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "r.png")


def test_roi_script_exit_status_2_without_files(tmp_path):
    result = subprocess.run([sys.executable, "find_several_data_in_target_area.py", "--source_dir", str(tmp_path),
                             "--start_date", "20240401", "--end_date", "20240402", "--ymin", "0", "--ymax", "2",
                             "--xmin", "0", "--xmax", "2", "--output_file", str(tmp_path / "r.png")],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "no readable asi-AMSR2-n3125-*-v5.4.nc file for 20240401..20240402" in result.stderr
