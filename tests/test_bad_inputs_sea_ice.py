"""Every sea-ice script fed bad paths and values: one line naming the flag/file/value and exit status 2
(or 1 for a download that failed), never a traceback, never a silent default. In-process (run_main)."""
import json
import os

import pytest

import config
import generate_data
from conftest import ROOT

PARAMS = os.path.join(ROOT, "params.json")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two tiny days, a consolidated file and a mask made from them, and some files that are not inputs."""
    import consolidate_data
    import create_mask
    tmp = tmp_path_factory.mktemp("bad")
    days = str(tmp / "days")
    generate_data.write_asi_days(days, 20240401, 20240402, shape=(40, 30), seed=1)
    f = {"T": str(tmp), "days": days, "day": os.path.join(days, generate_data.asi_filename(20240401))}
    f["afile"] = str(tmp / "afile.txt")
    open(f["afile"], "w").write("x")
    f["garbage"] = str(tmp / "garbage.nc")
    open(f["garbage"], "w").write("<html>")
    f["badjson"] = str(tmp / "bad.json")
    open(f["badjson"], "w").write("{")
    f["nanjson"] = str(tmp / "nan.json")
    params = json.load(open(PARAMS))
    params["sea_ice"]["sigma"] = float("nan")
    open(f["nanjson"], "w").write(json.dumps(params))  # Python's json writes NaN, and reads it back
    common = ["--config", PARAMS, "--source_dir", days, "--start_date", "20240401", "--end_date", "20240402"]
    f["cons"] = str(tmp / "c.nc")
    assert consolidate_data.main(common + ["--output_file", f["cons"]]) == 0
    f["mask"] = str(tmp / "m.nc")
    assert create_mask.main(common + ["--output_file", f["mask"]]) == 0
    return f


RANGE = ["--source_dir", "{days}", "--start_date", "20240401", "--end_date", "20240402"]
ROI = ["--ymin", "0", "--ymax", "5", "--xmin", "0", "--xmax", "5"]
CASES = [  # (script, arguments, words of the one-line error)
    ("download", ["-o", "{afile}/x"], "{afile} is a file, expected a folder"),
    ("download", ["-o", "{afile}"], "exists and is not a folder"),
    ("download", ["--start_date", "202441"], "--start_date '202441': expected a calendar day as YYYYMMDD"),
    ("download", ["--end_date", "20240431"], "--end_date '20240431': expected a calendar day"),
    ("download", ["--timeout", "nan"], "--timeout: expected a finite number"),
    ("download", ["--backoff", "inf"], "--backoff: expected a finite number"),
    ("download", ["--base_url", "http://a b"], "--base_url 'http://a b': not a valid URL"),
    ("download", ["--base_url", "http://127.0.0.1:99999/x"], "not a valid URL"),
    ("download", ["--config", "{T}"], "is a folder, expected a params.json file"),
    ("download", ["--config", "{badjson}"], "not valid JSON"),
    ("consolidate_data", RANGE + ["--output_file", "{afile}/x.nc"], "{afile} is a file, expected a folder"),
    ("consolidate_data", RANGE + ["--output_file", "{T}"], "expected a name ending in .nc"),
    ("consolidate_data", RANGE + ["--output_file", "{T}/o.nc", "--sigma", "nan"], "sea_ice.sigma: expected a finite"),
    ("consolidate_data", RANGE + ["--output_file", "{T}/o.nc", "--alpha", "inf"], "sea_ice.alpha: expected a finite"),
    ("consolidate_data", RANGE + ["--output_file", "{T}/o.nc", "--land_mask_file", "{garbage}"],
     "cannot read the land mask"),
    ("consolidate_data", RANGE + ["--output_file", "{T}/o.nc", "--land_mask_file", "{day}"], "no variable 'land_mask'"),
    ("consolidate_data", RANGE + ["--output_file", "{T}/o.nc", "--config", "{nanjson}"], "sea_ice.sigma: expected a finite"),
    ("create_mask", RANGE + ["--output_file", "{afile}/x.nc"], "{afile} is a file, expected a folder"),
    ("create_mask", RANGE + ["--output_file", "{T}"], "is a folder, expected a NetCDF file name"),
    ("create_mask", RANGE + ["--output_file", ""], "--output_file: expected a path, got an empty string"),
    ("create_mask", RANGE + ["--threshold", "nan"], "--threshold: sea_ice.mask_threshold: expected a finite number"),
    ("create_mask", RANGE + ["--threshold", "1.5"], "expected a fraction between 0 and 1"),
    ("get_dims", ["--source_dir", "{afile}"], "folder not found"),
    ("get_dims", ["--source_dir", "{T}"], "none of its 3 .nc files is a Bremen ASI day"),
    ("find_several_data_in_target_area", RANGE + ["--ymin", "-5", "--ymax", "5", "--xmin", "0", "--xmax", "5"],
     "expected 0 <= ymin < ymax <= 40"),
    ("find_several_data_in_target_area", RANGE + ROI + ["--output_file", "{afile}/r.png"], "is a file, expected a folder"),
    ("find_several_data_in_target_area", RANGE + ROI + ["--output_file", "{T}"], "is a folder, expected a PNG file"),
    ("visualization", ["--input_file", "{garbage}", "--output_file", "{T}/v.png"], "cannot open as NetCDF/Zarr"),
    ("visualization", ["--input_file", "{mask}", "--output_file", "{T}/v.png"], "neither a Bremen ASI day"),
    ("visualization", ["--input_file", "{day}", "--output_file", "{afile}/v.png"], "is a file, expected a folder"),
    ("visualization", ["--input_file", "{cons}", "--date", "20250101", "--output_file", "{T}/v.png"],
     "date 20250101 not in the file"),
    ("visualization", ["--forecast", "{cons}", "--output_file", "{T}/v.png"], "no variable 'rain_rate'"),
    ("visualization", ["--forecast", "{afile}", "--output_file", "{T}/v.png"], "not an .npz file"),
    ("visualization", ["--input_file", ""], "--input_file: expected a path, got an empty string"),
    ("visualization", ["--input_file", "{cons}", "--date", "2024041"], "--date '2024041': expected a calendar day"),
    ("visualize_mask", ["--input_file", "{cons}", "--output_file", "{T}/v.png"], "no variable 'land_mask'"),
    ("visualize_mask", ["--input_file", "{mask}", "--output_file", ""], "expected a path, got an empty string"),
    ("visualization_compare_between_full_sic",
     ["--original_file", "{cons}", "--consolidated_file", "{cons}", "--date", "20240401", "--output_file", "{T}/x.png"],
     "a consolidated file, expected one Bremen ASI day"),
    ("visualization_compare_between_full_sic",
     ["--original_file", "{day}", "--consolidated_file", "{day}", "--date", "20240401", "--output_file", "{T}/x.png"],
     "no variable 'sea_ice_conc'"),
    ("visualization_compare_between_full_sic",
     ["--original_file", "{day}", "--consolidated_file", "{cons}", "--date", "2024041", "--output_file", "{T}/x.png"],
     "--date '2024041': expected a calendar day"),
    ("generate_data", ["sea_ice", "--out", "{afile}/x", "--size", "16x16", "--start", "20240401", "--end", "20240401"],
     "--out {afile}/x: {afile} is a file, expected a folder"),
    ("generate_data", ["sea_ice", "--out", "{T}/g", "--size", "100000x100000"], "expected at most 3584x2432"),
    ("generate_data", ["sea_ice", "--out", "{T}/g", "--seed", "-1"], "--seed: expected an integer >= 0"),
    ("generate_data", ["nowcast", "--out", "{afile}/x", "--cases", "1", "--size", "16x16", "--steps", "3"],
     "{afile} is a file, expected a folder"),
    ("mirror_server", ["--root", "{afile}"], "mirror root folder not found"),
    ("mirror_server", ["--root", "{T}", "--port", "99999"], "--port: expected a port 0..65535"),
]


@pytest.mark.parametrize("script, args, words", CASES, ids=[f"{c[0]}:{' '.join(c[1])[-40:]}" for c in CASES])
def test_one_line_error(files, capsys, monkeypatch, tmp_path, script, args, words):
    monkeypatch.chdir(tmp_path)  # anything written to a default place would land here
    module = __import__(script)
    args = [a.format(**files) for a in args]
    if script == "download" and "--config" not in args:
        args = ["--config", PARAMS, "--base_url", "http://127.0.0.1:9", "-o", str(tmp_path / "dl"), *args]
    with pytest.raises(SystemExit) as exit_info:
        config.run_main(module.main, args)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert exit_info.value.code == 2, err
    assert lines and (lines[-1].startswith("error: ") or ": error: " in lines[-1]), err  # ours, or argparse's
    assert words.format(**files) in lines[-1], err
    assert "Traceback" not in err
    assert not [p for p in os.listdir(tmp_path) if p != "dl"], "something was written to the working folder"


def test_no_params_json_uses_builtin_defaults_but_explicit_config_must_exist(files, tmp_path, monkeypatch, capsys):
    """Seed 001's tools run from any folder: no ./params.json -> built-in defaults (said once); an explicit
    --config that is missing stays an error."""
    import get_dims
    monkeypatch.chdir(tmp_path)
    assert get_dims.main(["--source_dir", files["days"]]) == 0
    captured = capsys.readouterr()
    assert "H=40 rows x W=30 columns" in captured.out and "using the built-in defaults" in captured.err
    with pytest.raises(config.UserError, match="params.json: config file not found$"):
        get_dims.main(["--config", "params.json", "--source_dir", files["days"]])
    assert config.load_params(builtin_defaults=True) == config.builtin_params()
    with pytest.raises(config.UserError, match="config file not found"):
        config.load_params()  # the nowcasting scripts: a params.json is needed


def test_mirror_server_bad_host_is_one_line(files, capsys):
    import mirror_server
    with pytest.raises(SystemExit) as exit_info:
        config.run_main(mirror_server.main, ["--root", files["T"], "--host", "192.0.2.1", "--port", "0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().startswith("error: --host 192.0.2.1 --port 0: cannot listen there")


def test_broken_pipe_is_not_a_traceback(files, tmp_path):
    import subprocess
    import sys
    proc = subprocess.run(f"{sys.executable} {os.path.join(ROOT, 'config.py')} --dump | head -1", shell=True,
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.stdout.strip() == "{" and "Traceback" not in proc.stderr
