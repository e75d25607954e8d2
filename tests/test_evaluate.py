"""evaluate.py: exact whole-split scores, the metrics.json layout, the table, --predict, errors."""
import csv
import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

import config
import evaluate
import metrics
from conftest import ROOT
from normalization import denormalize, denormalize_target, load_stats


@pytest.fixture(scope="module")
def evaluated(trained):
    assert evaluate.main(["--config", trained["config"], "--checkpoint", trained["checkpoint"],
                          "--methods", "model,persistence,extrapolation"]) == 0
    params = config.load_params(trained["config"])
    out = os.path.join(params["paths"]["outputs"], "eval", "test")
    with open(os.path.join(out, "metrics.json")) as fh:
        return {"report": json.load(fh), "params": params, "out": out}


def test_metrics_json_layout(evaluated):
    report, params = evaluated["report"], evaluated["params"]
    data = params["data"]
    assert report["thresholds"] == [float(t) for t in params["evaluation"]["thresholds"]]
    assert report["lead_minutes"] == [5 * (data["lead_steps"] + k) for k in range(data["output_steps"])]
    assert set(report["methods"]) == {"model", "persistence", "extrapolation"}
    keys = {str(float(t)) for t in params["evaluation"]["thresholds"]}
    for scores in report["methods"].values():
        for score in ("csi", "pod", "far", "hss"):
            assert set(scores[score]) == keys and all(len(v) == data["output_steps"] for v in scores[score].values())
        assert set(scores["fss"]) == keys
        assert set(scores["fss"]["1.0"]) == {str(w) for w in params["evaluation"]["fss_windows"]}
        assert len(scores["mse"]) == len(scores["mae"]) == data["output_steps"]


def test_persistence_scores_equal_a_whole_split_brute_force(evaluated):
    """Rebuild every test window from the stores with plain numpy and score the concatenation."""
    report, params = evaluated["report"], evaluated["params"]
    data = params["data"]
    stats = load_stats(params["paths"]["processed_data"])
    c = list(zip(stats["sources"], stats["channels"])).index((stats["target"]["source"], stats["target"]["channel"]))
    forecasts, observed, covered = [], [], []
    for path in sorted(glob.glob(os.path.join(params["paths"]["processed_data"], "test", "*.zarr"))):
        store = zarr.open_group(path, mode="r")
        valid, inputs = store["valid"][:], store["inputs"][:]
        target, coverage = store["target"][:], store["coverage"][:]
        for s in range(len(valid)):
            t0 = s + data["input_steps"] - 1
            targets = [t0 + data["lead_steps"] + k for k in range(data["output_steps"])]
            if targets[-1] >= len(valid) or not valid[s:t0 + 1].all() or not valid[targets].all():
                continue
            last = denormalize(inputs[t0, c], stats["min"][c], stats["max"][c], stats["transform"][c])
            forecasts.append(np.stack([last] * data["output_steps"]))
            observed.append(denormalize_target(target[targets], stats))
            covered.append(coverage[targets])
    assert len(forecasts) == report["n_windows"] > 0
    fc, ob, cov = np.stack(forecasts), np.stack(observed), np.stack(covered)
    scores = report["methods"]["persistence"]
    for lead in range(data["output_steps"]):
        for threshold in params["evaluation"]["thresholds"]:
            expected = metrics.categorical(fc[:, lead], ob[:, lead], threshold, cov[:, lead])
            assert scores["csi"][str(float(threshold))][lead] == pytest.approx(expected["csi"], nan_ok=True)
            assert scores["hss"][str(float(threshold))][lead] == pytest.approx(expected["hss"], nan_ok=True)
        assert scores["mse"][lead] == pytest.approx(metrics.mse(fc[:, lead], ob[:, lead], cov[:, lead]), rel=1e-6)


def test_table_and_plots(evaluated):
    with open(os.path.join(evaluated["out"], "table.csv")) as fh:
        rows = list(csv.DictReader(fh))
    n_thresholds = len(evaluated["params"]["evaluation"]["thresholds"])
    assert len(rows) == 3 * n_thresholds
    row = next(r for r in rows if r["method"] == "persistence" and r["threshold_mm_h"] == "1.0")
    csi = [v for v in evaluated["report"]["methods"]["persistence"]["csi"]["1.0"] if v is not None]
    assert float(row["csi"]) == pytest.approx(np.mean(csi), abs=1e-4)
    for score in evaluate.PLOTTED:
        assert os.path.getsize(os.path.join(evaluated["out"], f"{score}.png")) > 1000


def test_table_columns_follow_the_seed_and_give_both_hss(evaluated):
    with open(os.path.join(evaluated["out"], "table.csv")) as fh:
        rows = list(csv.DictReader(fh))
    # seed 004: pMSE, Accuracy, Precision, Recall, F1, CSI, FAR, HSS (SmaAt-UNet's half value)
    assert list(rows[0])[:10] == ["method", "threshold_mm_h", "pmse", "accuracy", "precision", "recall", "f1",
                                  "csi", "far", "hss_half"]
    for row in rows:
        if row["hss"] not in ("", "nan"):
            assert float(row["hss_half"]) == pytest.approx(float(row["hss"]) / 2, abs=1e-4)


def test_predict_writes_a_forecast_file(trained, raw_cases, tmp_path):
    case = sorted(raw_cases["cases"])[1]
    out = tmp_path / "forecast.nc"
    assert evaluate.main(["--config", trained["config"], "--checkpoint", trained["checkpoint"],
                          "--predict", os.path.join(raw_cases["dir"], case), "--output", str(out)]) == 0
    params = config.load_params(trained["config"])
    with xr.open_dataset(out) as ds:
        assert ds.rain_rate.dims == ("lead", "y", "x") and ds.rain_rate.attrs["units"] == "mm h-1"
        assert ds.rain_rate.shape == (params["data"]["output_steps"], 48, 40)
        assert list(ds.lead.values) == [5 * (params["data"]["lead_steps"] + k)
                                        for k in range(params["data"]["output_steps"])]
        # the last step at which every input source has data: the last NWP file (hourly) or radar file
        last = min(max(os.listdir(os.path.join(raw_cases["dir"], case, source))) for source in ("radar", "nwp"))
        assert ds.attrs["forecast_reference_time"] == f"{last[:4]}-{last[4:6]}-{last[6:8]}T{last[8:10]}:{last[10:12]}Z"
        covered = ds.coverage.values.astype(bool)
        assert covered.any() and np.array_equal(np.isfinite(ds.rain_rate.values), np.broadcast_to(covered, ds.rain_rate.shape))
        assert (ds.rain_rate.values[:, covered] >= 0).all()
    assert os.path.exists(tmp_path / "forecast.png")
    # the same forecast as a Zarr store
    store = tmp_path / "forecast.zarr"
    assert evaluate.main(["--config", trained["config"], "--checkpoint", trained["checkpoint"],
                          "--predict", os.path.join(raw_cases["dir"], case), "--output", str(store)]) == 0
    with xr.open_dataset(out) as nc, xr.open_zarr(store) as zr:
        assert np.array_equal(nc.rain_rate.values, zr.rain_rate.values, equal_nan=True)
        assert np.array_equal(nc.time.values, zr.time.values)


@pytest.mark.parametrize("extra, message", [
    (["--methods", "model,rover"], "error: --methods: evaluation.methods[1]: expected one of model, persistence, "
                                   "extrapolation, got 'rover'"),
    (["--methods", "model,model"], "error: --methods: evaluation.methods: expected each value once, got 'model' "
                                   "twice in ['model', 'model']"),
    (["--methods", ""], "error: --methods: evaluation.methods[0]: expected one of model, persistence, "
                        "extrapolation, got ''"),
    (["--stride", "0"], "error: --stride 0: expected an integer >= 1"),
    (["--batch_size", "0"], "error: --batch_size 0: expected an integer >= 1"),
    (["--t0", "202406011200"], "error: --t0 202406011200: only used with --predict RAW_CASE_DIR"),
    (["--output", "f.nc"], "error: --output f.nc: only used with --predict RAW_CASE_DIR"),
    (["--predict", "/nonexistent/case", "--output", "f.png"], "error: --output f.png: expected a name ending in "
                                                             ".nc or .zarr"),
    (["--split", "val", "--predict", "/nonexistent/case"], "error: /nonexistent/case: raw case folder not found"),
])
def test_user_errors(trained, extra, message):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), "--config", trained["config"],
                           "--checkpoint", trained["checkpoint"], *extra], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith(message)


def test_missing_checkpoint_is_one_line(trained):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), "--config", trained["config"],
                           "--checkpoint", "nope.pt"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: nope.pt: checkpoint not found"


def test_predict_writes_nan_outside_radar_coverage(trained, raw_cases, tmp_path):
    """Radar NaN (outside the radar range) in a corner at every step: the forecast is NaN there, and says so."""
    case = sorted(raw_cases["cases"])[1]
    raw = tmp_path / "raw"
    shutil.copytree(os.path.join(raw_cases["dir"], case), raw / case)
    for name in os.listdir(raw / case / "radar"):
        frame = np.load(raw / case / "radar" / name)
        frame[..., :10, :7] = np.nan
        np.save(raw / case / "radar" / name, frame)
    original, cut = tmp_path / "original.nc", tmp_path / "cut.nc"
    for folder, out in ((os.path.join(raw_cases["dir"], case), original), (raw / case, cut)):
        assert evaluate.main(["--config", trained["config"], "--checkpoint", trained["checkpoint"],
                              "--predict", str(folder), "--output", str(out)]) == 0
    with xr.open_dataset(original) as before, xr.open_dataset(cut) as ds:
        corner = np.zeros(ds.coverage.shape, bool)
        corner[:10, :7] = True
        expected = before.coverage.values.astype(bool) & ~corner  # the generated radar range, minus the corner
        assert np.array_equal(ds.coverage.values.astype(bool), expected) and (~expected).sum() > corner.sum()
        assert np.isnan(ds.rain_rate.values[:, ~expected]).all() and np.isfinite(ds.rain_rate.values[:, expected]).all()


def test_stores_normalised_by_another_preproc_run_are_refused(trained, raw_cases, tmp_path, capsys):
    """Re-running preproc.py with another split changes the statistics: the checkpoint no longer matches."""
    import preproc
    params = config.load_params(trained["config"])
    params["paths"].update(raw_dataset=raw_cases["dir"], processed_data=str(tmp_path / "processed"))
    params["data"]["split"]["seed"] = params["data"]["split"]["seed"] + 1
    cfg = tmp_path / "params.json"
    cfg.write_text(json.dumps(params))
    assert preproc.main(["--config", str(cfg)]) == 0
    capsys.readouterr()  # preproc's progress bars
    old, new = load_stats(config.load_params(trained["config"])["paths"]["processed_data"]), \
        load_stats(str(tmp_path / "processed"))
    assert old["target"]["max"] != new["target"]["max"]  # the premise: other training cases, other range
    with pytest.raises(SystemExit) as info:
        config.run_main(evaluate.main, ["--config", str(cfg), "--checkpoint", trained["checkpoint"]])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "\n" not in err
    assert err.startswith(f"error: {tmp_path / 'processed' / 'test'}/") and \
        f"normalised with target range [{new['target']['min']:.6g}, {new['target']['max']:.6g}], but checkpoint " \
        f"best.pt has [{old['target']['min']:.6g}, {old['target']['max']:.6g}]" in err
    import dataset  # training reads the same stores with its own stats.json: refused the same way
    (tmp_path / "processed" / "stats.json").write_text(json.dumps(old))
    with pytest.raises(config.UserError, match="but stats.json has"):
        dataset.make_datasets(params)


@pytest.mark.parametrize("t0", ["abc", "202406010000", "2024060100"])
def test_bad_t0_is_one_line(trained, raw_cases, t0, capsys):
    case = os.path.join(raw_cases["dir"], sorted(raw_cases["cases"])[1])
    with pytest.raises(SystemExit) as info:
        config.run_main(evaluate.main, ["--config", trained["config"], "--checkpoint", trained["checkpoint"],
                                        "--predict", case, "--t0", t0])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "\n" not in err and err.startswith("error: --t0 ")
    if t0 == "abc" or len(t0) != 12:
        assert err == f"error: --t0 {t0!r}: expected a time as YYYYmmddHHMM (12 digits, UTC)"
    else:
        assert "no valid input window ends then" in err


def test_a_file_that_is_not_a_checkpoint_is_one_line(trained, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(torch.zeros(3), path)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), "--config", trained["config"],
                           "--checkpoint", str(path)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.strip() == \
        f"error: {path}: not a training.py checkpoint (expected a dict with 'model', got Tensor)"


def test_outputs_under_a_file_are_refused_before_any_work(trained, raw_cases, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    params = config.load_params(trained["config"])
    params["paths"]["outputs"] = str(blocker / "out")
    cfg = tmp_path / "params.json"
    cfg.write_text(json.dumps(params))
    case = os.path.join(raw_cases["dir"], sorted(raw_cases["cases"])[1])
    for extra, folder, what in (([], blocker / "out" / "eval" / "test", "paths.outputs"),
                                (["--predict", case, "--output", str(blocker / "f.nc")], blocker, "--output folder")):
        with pytest.raises(SystemExit) as info:
            config.run_main(evaluate.main, ["--config", str(cfg), "--checkpoint", trained["checkpoint"], *extra])
        assert info.value.code == 2
        assert capsys.readouterr().err == f"error: {what} {folder}: {blocker} is a file, expected a folder\n"


def test_checkpoint_whose_weights_do_not_fit_is_one_line(trained, tmp_path):
    state = torch.load(trained["checkpoint"], weights_only=False)
    name = next(iter(state["model"]))
    del state["model"][name]
    path = tmp_path / "damaged.pt"
    torch.save(state, path)
    del state["params"]
    no_params = tmp_path / "no_params.pt"
    torch.save(state, no_params)
    for checkpoint, message in ((path, f"its weights do not fit the ConvLSTM_UNet of the config (1 missing, 0 "
                                       f"unexpected, 0 of another shape; first: {name})"),
                                (no_params, "not a training.py checkpoint (no 'params')")):
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), "--config", trained["config"],
                               "--checkpoint", str(checkpoint)], capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 2 and proc.stderr == f"error: {checkpoint}: {message}\n"


@pytest.mark.parametrize("extra, message", [
    (["--set", "training.lr"], "--set 'training.lr': expected KEY=VALUE, e.g. training.loss.name=mse"),
    (["--set", "training.lr=-1"], "--set: training.lr: expected a value >= 0, got -1"),
    (["--stride", "0"], "--stride 0: expected a number >= 1"),
    (["--name", "a/b"], "--name 'a/b': expected a folder name without '/'"),
    (["--out", "{blocker}/real"], "--out {blocker}/real/default: {blocker} is a file, expected a folder"),
    (["--skip_training"], "--skip_training: {out}/default/checkpoints/best.pt not found (train this run first)"),
    (["--radar", "{blocker}"], "--radar {blocker}: not a folder (expected the events' .npz files)"),
])
def test_real_data_bench_flags_are_checked_before_any_work(tmp_path, extra, message):
    if not os.path.isdir(os.path.join(os.path.dirname(ROOT), "shared", "data", "radar")):
        pytest.skip("the real radar events ship with the shared data only")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    out = tmp_path / "real"
    args = [a.format(blocker=blocker) for a in extra]
    if "--out" not in extra:
        args += ["--out", str(out)]
    proc = subprocess.run([sys.executable, os.path.join("bench", "real_data.py"), *args], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr == f"error: {message.format(blocker=blocker, out=out)}\n"
    assert not (out / "raw").exists()


def test_model_rain_rates_are_clipped_to_a_physical_range(trained):
    class Wild(torch.nn.Module):  # normalised outputs far outside 0..1, as an extrapolating network gives
        def forward(self, x):
            return torch.tensor([-3.0, 0.5, 40.0]).reshape(1, 3, 1, 1, 1).expand(x.shape[0], 3, 1, 4, 4)
    params = config.load_params(trained["config"])
    stats = load_stats(params["paths"]["processed_data"])
    assert stats["target"]["transform"] == "log1p"
    forecaster = evaluate.Forecaster(Wild(), stats, params, torch.device("cpu"))
    out = forecaster.model_forecast(np.zeros((2, 3, 1, 4, 4), np.float32))
    middle = float(denormalize_target(np.float64(0.5), stats))
    assert out.shape == (2, 3, 4, 4)
    np.testing.assert_allclose(out[:, 0], 0.0)
    np.testing.assert_allclose(out[:, 1], middle, rtol=1e-5)
    np.testing.assert_allclose(out[:, 2], config.RAIN_RATE_MAX)


def test_table_cells_stay_in_their_column():
    assert evaluate.table_cell(0.12345) == "0.1235"
    assert evaluate.table_cell(12345678.9) == "1.235e+07"
    assert all(len(evaluate.table_cell(v)) <= 10 for v in (-99999.99999, 1e30, float("nan"), -1e-30))
