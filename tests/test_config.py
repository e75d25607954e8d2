"""config.py: schema validation, clear one-line errors, CLI overrides, params.json in sync."""
import datetime
import json
import os
import subprocess
import sys

import pytest

import config
from conftest import ROOT


def minimal():
    return {"paths": {}, "sea_ice": {}, "data": {}, "model": {"name": "convlstm_unet"}, "training": {},
            "evaluation": {}}


def error_of(params):
    with pytest.raises(config.UserError) as info:
        config.validate(params)
    return str(info.value)


def test_params_json_validates_and_lists_every_key():
    with open(os.path.join(ROOT, "params.json")) as fh:
        raw = json.load(fh)
    # the file spells out every key with its default, so a user sees all of them
    assert config.validate(raw) == raw
    assert config.validate(minimal()) == raw


def test_unknown_key_names_path_and_suggests_closest():
    params = minimal()
    params["data"]["input_stesp"] = 6
    assert error_of(params) == "data.input_stesp: unknown key; did you mean data.input_steps?"
    params = minimal()
    params["training"]["loss"] = {"nme": "mse"}
    assert error_of(params) == "training.loss.nme: unknown key; did you mean training.loss.name?"


def test_unknown_key_without_close_match_lists_valid_keys():
    params = minimal()
    params["zzz"] = 1
    message = error_of(params)
    assert message.startswith("zzz: unknown key; valid keys: task, paths,")


def test_wrong_type_names_key_expected_type_and_value():
    params = minimal()
    params["data"]["input_steps"] = "6"
    assert error_of(params) == "data.input_steps: expected int, got str '6'"
    params = minimal()
    params["training"]["compile"] = "yes"
    assert error_of(params) == "training.compile: expected bool, got str 'yes'"


def test_bool_is_not_accepted_as_a_number():
    params = minimal()
    params["sea_ice"]["batch_size"] = True
    assert error_of(params) == "sea_ice.batch_size: expected int, got bool True"


def test_float_key_accepts_int_and_list_items_are_checked():
    params = minimal()
    params["sea_ice"]["sigma"] = 5
    assert config.validate(params)["sea_ice"]["sigma"] == 5
    params["evaluation"]["thresholds"] = [0.5, "1"]
    assert error_of(params) == "evaluation.thresholds[1]: expected int or float, got str '1'"


def test_choices_and_minimum():
    params = minimal()
    params["training"]["device"] = "gpu"
    assert error_of(params) == "training.device: expected one of auto, cpu, cuda, got 'gpu'"
    params = minimal()
    params["sea_ice"]["batch_size"] = 0
    assert error_of(params) == "sea_ice.batch_size: expected a value >= 1, got 0"


def test_missing_required_key_and_section_are_named():
    params = minimal()
    del params["model"]["name"]
    assert error_of(params) == "model.name: required key missing"
    params = minimal()
    del params["training"]
    assert error_of(params) == "training: required section missing"


def test_free_keyed_maps_validate_their_values():
    params = minimal()
    params["data"]["inputs"] = {"radar": ["rain_rate"], "satellite": "ir108"}
    assert error_of(params) == "data.inputs.satellite: expected list, got str 'ir108'"
    params["data"]["inputs"] = {"radar": ["rain_rate"], "satellite": ["ir108"]}
    assert config.validate(params)["data"]["inputs"]["satellite"] == ["ir108"]


def test_consistency_rules():
    params = minimal()
    params["data"]["split"] = {"train": 0.7, "val": 0.2, "test": 0.2}
    assert error_of(params).startswith("data.split: ratios must be >= 0 and sum to 1")
    params = minimal()
    params["data"]["split"] = {"train": ["a"], "val": 0.5, "test": ["c"]}
    assert error_of(params).startswith("data.split: give train, val and test all as ratios or all as lists")
    params = minimal()
    params["training"]["loss"] = {"thresholds": [1.0], "weights": [1.0]}
    assert error_of(params).startswith("training.loss.weights: expected 2 weights")


def test_overrides_beat_the_file(params_file):
    raw = minimal()
    raw["sea_ice"]["batch_size"] = 12
    path = params_file(raw)
    assert config.load_params(path)["sea_ice"]["batch_size"] == 12
    assert config.load_params(path, {"sea_ice.batch_size": 7})["sea_ice"]["batch_size"] == 7
    # a flag that was not given (None) leaves the file's value
    assert config.load_params(path, {"sea_ice.batch_size": None})["sea_ice"]["batch_size"] == 12
    with pytest.raises(config.UserError, match=r"^sea_ice.batch_size: expected int, got str 'x'$"):
        config.load_params(path, {"sea_ice.batch_size": "x"})


def test_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(config.UserError, match="nope.json: config file not found"):
        config.load_params(str(missing))
    bad = tmp_path / "bad.json"
    bad.write_text('{"data": {"input_steps": 6,}}')
    with pytest.raises(config.UserError, match=r"bad.json: not valid JSON \(line 1"):
        config.load_params(str(bad))
    typo = tmp_path / "typo.json"
    raw = minimal()
    raw["data"]["input_stesp"] = 6
    typo.write_text(json.dumps(raw))
    with pytest.raises(config.UserError, match=r"typo.json: data.input_stesp: unknown key; did you mean"):
        config.load_params(str(typo))


def test_user_error_exits_2_with_one_line_and_no_traceback(params_file):
    raw = minimal()
    raw["data"]["input_stesp"] = 6
    path = params_file(raw)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "config.py"), "--config", path],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0] == f"error: {path}: data.input_stesp: unknown key; did you mean data.input_steps?"


def test_readme_documents_every_key():
    with open(os.path.join(ROOT, "README.md")) as fh:
        readme = fh.read()
    missing = [key for key, *_ in config.reference_rows() if f"`{key}`" not in readme]
    assert not missing, f"README.md lacks these params.json keys: {missing}"


# --------------------------------------------------------------------------- dates and override flags
@pytest.mark.parametrize("value", [20240431, 202441, 2024041, 20240231, 120240401])
def test_dates_must_be_real_calendar_days_of_eight_digits(value):
    params = minimal()
    params["sea_ice"]["start_date"] = value
    assert error_of(params).startswith("sea_ice.start_date: expected a calendar day as YYYYMMDD")


def test_parse_date_by_hand():
    import datetime
    assert config.parse_date(20240229) == datetime.date(2024, 2, 29)  # leap day
    assert config.parse_date("20230229") is None
    assert config.parse_date("202441") is None  # strptime alone would read 2024-04-01


def override_parser():
    import argparse
    parser = config.add_config_arg(argparse.ArgumentParser(prog="x"))
    return config.add_override_flags(parser, [
        ("--batch_size", "training.batch_size"), ("--start_date", "sea_ice.start_date"),
        ("--compile", "training.compile"), ("--thresholds", "evaluation.thresholds"),
        (("-o", "--output_dir"), "paths.sea_ice_data", {"metavar": "DIR"}), ("--model", "model.name")])


def test_override_flags_take_type_choices_and_default_from_the_schema(capsys):
    parser = override_parser()
    parser.print_help()
    text = " ".join(capsys.readouterr().out.split())
    assert "samples per step (default: training.batch_size in params.json, 8)" in text
    assert "--batch_size BATCH_SIZE, --batch-size BATCH_SIZE" in text  # the hyphenated alias too
    assert "{convlstm_unet,encoder_forecaster,smaat_unet,spark_unet}" in text and "--compile, --no-compile" in text
    args = parser.parse_args(["--batch-size", "3", "--compile", "--thresholds", "1", "2", "-o", "d"])
    overrides = config.overrides_from(args)
    assert overrides == {"training.batch_size": 3, "sea_ice.start_date": None, "training.compile": True,
                         "evaluation.thresholds": [1.0, 2.0], "paths.sea_ice_data": "d", "model.name": None}
    params = config.load_params(os.path.join(ROOT, "params.json"), overrides)
    assert params["training"]["batch_size"] == 3 and params["evaluation"]["thresholds"] == [1.0, 2.0]
    assert params["sea_ice"]["start_date"] == 20240401  # not given: the file's value


def test_bad_override_values_name_the_flag(capsys):
    parser = override_parser()
    with pytest.raises(config.UserError) as info:
        config.load_params(os.path.join(ROOT, "params.json"),
                           config.overrides_from(parser.parse_args(["--batch_size", "0"])))
    assert str(info.value) == "--batch_size: training.batch_size: expected a value >= 1, got 0"
    with pytest.raises(SystemExit):
        parser.parse_args(["--start_date", "202441"])
    assert "expected a calendar day as YYYYMMDD, got '202441'" in capsys.readouterr().err


# --------------------------------------------------------------------------- atomic writes
def test_atomic_path_renames_on_success_and_leaves_nothing_on_failure(tmp_path):
    from atomic import atomic_path
    final = tmp_path / "sub" / "out.json"
    with atomic_path(str(final)) as tmp:
        with open(tmp, "w") as fh:
            fh.write("new")
        assert not final.exists()  # not there before the block ends
    assert final.read_text() == "new"
    with pytest.raises(RuntimeError):
        with atomic_path(str(final)) as tmp:
            with open(tmp, "w") as fh:
                fh.write("half")
            raise RuntimeError("interrupted")
    assert final.read_text() == "new" and sorted(os.listdir(final.parent)) == ["out.json"]
    store = tmp_path / "a.zarr"  # folders (Zarr stores) replace an older folder
    store.mkdir()
    (store / "old").write_text("x")
    with atomic_path(str(store)) as tmp:
        os.makedirs(tmp)
        open(os.path.join(tmp, "new"), "w").close()
    assert sorted(os.listdir(store)) == ["new"]


def test_atomic_path_bad_places_are_one_line(tmp_path, monkeypatch):
    from atomic import atomic_path
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(config.UserError, match=f"^output folder {blocker / 'sub'}: {blocker} is a file, "
                                               "expected a folder$"):
        with atomic_path(str(blocker / "sub" / "out.json")):
            pass
    folder = tmp_path / "a_folder"
    folder.mkdir()
    with pytest.raises(config.UserError, match=f"^{folder}: is a folder, expected a file there$"):
        with atomic_path(str(folder)) as tmp, open(tmp, "w") as fh:
            fh.write("x")
    assert os.listdir(folder) == [] and sorted(os.listdir(tmp_path)) == ["a_file", "a_folder"]
    final = tmp_path / "out.json"
    with pytest.raises(config.UserError, match=f"^{final}: cannot write it \\(Permission denied\\)$"):
        with atomic_path(str(final)) as tmp:
            raise PermissionError(13, "Permission denied", tmp)  # what open(tmp, "w") raises there
    with pytest.raises(FileNotFoundError):  # an OSError about another file is no output problem
        with atomic_path(str(final)):
            open(tmp_path / "missing_input")
    monkeypatch.setattr(os, "access", lambda *a: False)  # a folder without write permission (we run as root)
    with pytest.raises(config.UserError, match=f"^output folder {tmp_path}: no permission to write there$"):
        with atomic_path(str(final)):
            pass


def test_radar_example_config_is_valid_and_names_the_real_events():
    from conftest import RADAR_DIR
    params = config.load_params(os.path.join(ROOT, "params_radar.json"))
    assert params["data"]["inputs"] == {"radar": ["rain_rate"]}  # the real events have no NWP source
    split = params["data"]["split"]
    assert split["test"] == ["fmi-20160928"]  # the held-out event of every real-data result
    if os.path.isdir(RADAR_DIR):
        events = sorted(n[:-4] for n in os.listdir(RADAR_DIR) if n.endswith(".npz"))
        assert sorted(split["train"] + split["val"] + split["test"]) == events


def test_a_bad_date_in_params_json_is_named_by_every_sea_ice_script(params, params_file):
    """20240431 in params.json: the key is named (before: accepted by config.py, then rejected by a script
    without naming the key)."""
    import consolidate_data
    import create_mask
    import download
    import find_several_data_in_target_area
    params["sea_ice"]["start_date"] = 20240431
    path = params_file(params)
    for main in (consolidate_data.main, create_mask.main, download.main, find_several_data_in_target_area.main):
        with pytest.raises(config.UserError, match=r"sea_ice.start_date: expected a calendar day as YYYYMMDD "
                                                   r"\(8 digits\), got 20240431"):
            main(["--config", path])


@pytest.mark.parametrize("text", ["202441", "2024041", "20240431", "2024-04-01", "", "abcdefgh"])
def test_short_or_impossible_dates_are_refused_by_asi_files(text):
    import asi_files
    with pytest.raises(config.UserError, match="expected a calendar day as YYYYMMDD"):
        asi_files.to_date(text)
    with pytest.raises(config.UserError, match=f"^--start_date '{text}': expected a calendar day"):
        asi_files.date_flag("--start_date", text)
    assert asi_files.to_date("20240401") == datetime.date(2024, 4, 1)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_numbers_must_be_finite(params, value):
    params["sea_ice"]["alpha"] = value
    assert error_of(params) == f"sea_ice.alpha: expected a finite number, got {value!r}"
    params["sea_ice"]["alpha"] = 25.0
    params["evaluation"]["thresholds"] = [0.5, value]
    assert error_of(params).startswith("evaluation.thresholds[1]: expected a finite")


@pytest.mark.parametrize("dotted, value, message", [
    ("evaluation.thresholds", [], "evaluation.thresholds: expected at least 1 item, got []"),
    ("evaluation.thresholds", [1.0, 0.5], "evaluation.thresholds: expected values in strictly ascending order, "
                                          "got [1.0, 0.5]"),
    ("evaluation.thresholds", [0.5, 1e30], "evaluation.thresholds[1]: expected a value <= 1000 (mm/h), got 1e+30"),
    ("evaluation.fss_windows", [0], "evaluation.fss_windows[0]: expected a value >= 1, got 0"),
    ("evaluation.methods", [], "evaluation.methods: expected at least 1 item, got []"),
    ("evaluation.methods", ["model", "model"], "evaluation.methods: expected each value once, got 'model' twice "
                                               "in ['model', 'model']"),
    ("evaluation.methods", ["modle"], "evaluation.methods[0]: expected one of model, persistence, extrapolation, "
                                      "got 'modle'"),
    ("training.loss.thresholds", [5.0, 2.0, 10.0, 30.0], "training.loss.thresholds: expected values in strictly "
                                                        "ascending order, got [5.0, 2.0, 10.0, 30.0]"),
    ("training.lr_factor", 1.0, "training.lr_factor: expected a value below 1, got 1.0"),
    ("training.seed", -1, "training.seed: expected a value >= 0, got -1"),
    ("training.seed", 2**64, f"training.seed: expected a value <= {2**32 - 1}, got {2**64}"),
    ("data.split.seed", -5, "data.split.seed: expected a value >= 0, got -5"),
    ("data.patch_size", 10**9, "data.patch_size: expected a value <= 4096 (pixels), got 1000000000"),
    ("data.rain_patch_prob", 1.5, "data.rain_patch_prob: expected a value <= 1 (fraction), got 1.5"),
    ("data.rain_threshold", 1e30, "data.rain_threshold: expected a value <= 1000 (mm/h), got 1e+30"),
    ("data.inputs", {"radar": []}, "data.inputs.radar: expected at least 1 item, got []"),
    ("data.inputs", {"radar": ["rain_rate", "rain_rate"]},
     "data.inputs.radar: expected each value once, got 'rain_rate' twice in ['rain_rate', 'rain_rate']"),
    ("data.inputs", {"radar": ["rain_rate"], "nwp": ["rain_rate"]},
     "data.inputs.nwp: channel 'rain_rate' is also in data.inputs.radar; expected each channel name once "
     "(data.transform is keyed by channel)"),
    ("model.convlstm_unet.kernel_size", 4, "model.convlstm_unet.kernel_size: expected an odd size (the padding "
                                           "keeps the frame size), got 4"),
    ("model.encoder_forecaster.hidden_channels", [], "model.encoder_forecaster.hidden_channels: expected at least "
                                                     "1 item, got []"),
])
def test_value_checks_name_the_key_and_what_was_expected(dotted, value, message):
    params = minimal()
    config.set_dotted(params, dotted, value)
    assert error_of(params) == message
