"""training.py: loss weighting, checkpoint/resume equality, NaN stop, DDP, the sea-ice task."""
import csv
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import xarray as xr

import config
import training
from conftest import ROOT, tiny_params, write_tiny_params


def test_intensity_weights_by_hand():
    target = torch.tensor([0.0, 1.99, 2.0, 4.0, 5.0, 10.0, 29.0, 30.0, 80.0])
    w = training.intensity_weights(target, [2.0, 5.0, 10.0, 30.0], [1.0, 2.0, 5.0, 10.0, 30.0])
    assert w.tolist() == [1.0, 1.0, 2.0, 2.0, 5.0, 10.0, 10.0, 30.0, 30.0]


def test_masked_loss_by_hand():
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 1, 2, 2)
    target = torch.tensor([0.0, 0.0, float("nan"), 1.0]).reshape(1, 1, 1, 2, 2)
    mask = torch.tensor([True, True, False, True]).reshape(1, 1, 1, 2, 2)
    weights = torch.tensor([1.0, 2.0, 100.0, 3.0]).reshape(1, 1, 1, 2, 2)
    # covered pixels: errors 1, 2, 3 -> mse (1 + 4 + 9) / 3; weighted (1 + 8 + 27) / 3; mae (1 + 2 + 3) / 3
    assert training.masked_loss(pred, target, mask, "mse").item() == pytest.approx(14 / 3)
    assert training.masked_loss(pred, target, mask, "mse", weights).item() == pytest.approx(36 / 3)
    assert training.masked_loss(pred, target, mask, "mae").item() == pytest.approx(2.0)


def read_state(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def test_resume_gives_the_same_weights_bit_for_bit(processed, tmp_path):
    straight, resumed = tmp_path / "a", tmp_path / "b"
    straight.mkdir(), resumed.mkdir()
    cfg_a = write_tiny_params(straight, processed)
    assert training.main(["--config", cfg_a, "--skip_test"]) == 0
    cfg_b = write_tiny_params(resumed, processed)
    assert training.main(["--config", cfg_b, "--skip_test", "--epochs", "1"]) == 0
    first = read_state(resumed / "ckpt" / "last.pt")
    assert first["epoch"] == 1 and first["step"] == 3
    assert training.main(["--config", cfg_b, "--skip_test", "--resume"]) == 0
    a, b = read_state(straight / "ckpt" / "last.pt"), read_state(resumed / "ckpt" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"] == 6
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert not all(torch.equal(t, first["model"][n]) for n, t in a["model"].items())  # epoch 2 did train
    for key in ("model", "optimizer", "scheduler", "epoch", "step", "rng", "params", "stats"):
        assert key in a
    with open(resumed / "out" / "train_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == ["1", "2"] and list(rows[0]) == list(training.LOG_COLUMNS)


def test_non_finite_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(processed, tmp_path, monkeypatch,
                                                                                   capsys):
    cfg = write_tiny_params(tmp_path, processed, epochs=3)
    calls = {"n": 0}
    real_loss = training.masked_loss

    def loss_that_breaks(*args, **kwargs):
        calls["n"] += 1
        value = real_loss(*args, **kwargs)
        return value * float("nan") if calls["n"] == 7 else value  # 2nd step of epoch 2 (3 train + 2 val before)
    monkeypatch.setattr(training, "masked_loss", loss_that_breaks)
    assert training.main(["--config", cfg, "--skip_test"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: training stopped: loss is nan at epoch 2, step 5; the last good checkpoint is")
    state = read_state(tmp_path / "ckpt" / "last.pt")
    assert state["epoch"] == 1 and all(torch.isfinite(t).all() for t in state["model"].values())


def test_test_report_scores_persistence_and_model(processed, tmp_path):
    cfg = write_tiny_params(tmp_path, processed, epochs=1)
    assert training.main(["--config", cfg]) == 0
    with open(tmp_path / "out" / "test_metrics.json") as fh:
        report = json.load(fh)
    assert report["lead_minutes"] == [5 * 2, 5 * 3]
    assert set(report["methods"]) == {"model", "persistence"}
    for scores in report["methods"].values():
        assert len(scores["mse"]) == 2 and all(np.isfinite(scores["mse"]))
        assert set(scores["csi"]) == {str(float(t)) for t in config.load_params(cfg)["evaluation"]["thresholds"]}


def test_user_errors_are_one_line(processed, tmp_path):
    cfg = write_tiny_params(tmp_path, processed)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "training.py"), "--config", cfg, "--resume"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"error: {tmp_path / 'ckpt' / 'last.pt'}: checkpoint not found"


@pytest.mark.parametrize("key", ["checkpoints", "outputs"])
def test_output_folders_under_a_file_are_refused_before_any_work(processed, tmp_path, capsys, key):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    params = tiny_params(tmp_path)
    params["paths"].update(processed_data=processed, **{key: str(blocker / key)})
    cfg = tmp_path / "params.json"
    cfg.write_text(json.dumps(params))
    with pytest.raises(SystemExit) as info:
        config.run_main(training.main, ["--config", str(cfg)])
    assert info.value.code == 2
    assert capsys.readouterr() == ("", f"error: paths.{key} {blocker / key}: {blocker} is a file, expected a folder\n")


def test_ddp_two_cpu_ranks_and_the_whole_test_split_scored_once(processed, tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if torchrun is None:
        pytest.skip("torchrun not installed")
    (tmp_path / "ddp").mkdir(), (tmp_path / "one").mkdir()
    cfg = write_tiny_params(tmp_path / "ddp", processed, epochs=1)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", os.path.join(ROOT, "training.py"),
                           "--config", cfg], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "x 2 ranks" in proc.stdout
    state = read_state(tmp_path / "ddp" / "ckpt" / "last.pt")
    assert state["epoch"] == 1 and state["step"] == 3
    # persistence does not depend on the weights: its test scores must equal one process's, exactly
    assert training.main(["--config", write_tiny_params(tmp_path / "one", processed, epochs=1)]) == 0
    ddp, one = (json.loads((tmp_path / d / "out" / "test_metrics.json").read_text()) for d in ("ddp", "one"))
    assert ddp["methods"]["persistence"] == one["methods"]["persistence"]


def test_resume_with_other_settings_is_one_line(processed, tmp_path, capsys):
    cfg = write_tiny_params(tmp_path, processed)
    assert training.main(["--config", cfg, "--skip_test"]) == 0  # 2 epochs
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        config.run_main(training.main, ["--config", cfg, "--resume", "--epochs", "1"])
    assert info.value.code == 2 and capsys.readouterr().err.strip() == \
        f"error: training.epochs 1: {tmp_path / 'ckpt' / 'last.pt'} already holds 2 epochs; ask for more epochs " \
        "(--epochs N) to continue"
    with pytest.raises(SystemExit) as info:
        config.run_main(training.main, ["--config", cfg, "--resume", "--epochs", "3", "--model", "encoder_forecaster"])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "\n" not in err
    assert err == f"error: {tmp_path / 'ckpt' / 'last.pt'}: made with model.name = \"convlstm_unet\", but the " \
        "config has \"encoder_forecaster\"; use the same settings or start without --resume"
    # the optimiser and its schedule continue from last.pt: a new learning rate would be ignored, so it is refused
    with pytest.raises(SystemExit) as info:
        config.run_main(training.main, ["--config", cfg, "--resume", "--epochs", "3", "--lr", "0.01"])
    assert info.value.code == 2 and capsys.readouterr().err.strip() == \
        f"error: {tmp_path / 'ckpt' / 'last.pt'}: made with training.lr = 0.001, but the config has 0.01; use the " \
        "same settings or start without --resume"


def test_damaged_log_or_checkpoint_on_resume_is_one_line(processed, tmp_path, capsys):
    cfg = write_tiny_params(tmp_path, processed, epochs=1)
    assert training.main(["--config", cfg, "--skip_test"]) == 0
    capsys.readouterr()
    log, last = tmp_path / "out" / "train_log.csv", tmp_path / "ckpt" / "last.pt"
    good_log = log.read_bytes()
    log.write_bytes(b"\x85\xff\x00binary")
    with pytest.raises(SystemExit) as info:
        config.run_main(training.main, ["--config", cfg, "--resume", "--epochs", "2"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {log}: cannot read the training log (UnicodeDecodeError")
    log.write_bytes(good_log)
    state = torch.load(last, weights_only=False)
    name = next(iter(state["model"]))
    state["model"][name] = torch.zeros(3)
    torch.save(state, last)
    with pytest.raises(SystemExit) as info:
        config.run_main(training.main, ["--config", cfg, "--resume", "--epochs", "2"])
    assert info.value.code == 2 and capsys.readouterr().err == \
        f"error: {last}: its weights do not fit the ConvLSTM_UNet of the config (0 missing, 0 unexpected, 1 of " \
        f"another shape; first: {name})\n"


def write_consolidated(path, days, shape=(24, 20), seed=0):
    """A small consolidated file in consolidate_data.py's layout, with a moving ice edge."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    frames = np.stack([np.clip((xx - 5 - 0.3 * t + rng.normal(0, 0.3, shape)) / 6, 0, 1)
                       for t in range(len(days))]).astype(np.float32)
    land = np.zeros(shape, np.uint8)
    land[:3, :] = 1
    frames[:, land == 1] = 0
    ds = xr.Dataset({"sea_ice_conc": (("time", "y", "x"), frames),
                     "fill_flag": (("time", "y", "x"), np.zeros(frames.shape, np.uint8)),
                     "missing_dates": (("missing",), np.zeros(0, np.int32))},
                    coords={"time": np.array(days, np.int32), "x": 25000.0 * np.arange(shape[1]),
                            "y": 25000.0 * np.arange(shape[0])})
    ds.to_netcdf(path)
    mask = xr.Dataset({"land_mask": (("y", "x"), land),
                       "nan_frequency": (("y", "x"), land.astype(np.float32))},
                      coords={"x": ds.x, "y": ds.y})
    mask.to_netcdf(str(path).replace(".nc", "_mask.nc"))


def test_sea_ice_task_trains_and_tests(tmp_path):
    days = [20240101 + i for i in range(30)]
    write_consolidated(tmp_path / "sic.nc", days)
    params = tiny_params(tmp_path, epochs=1)
    params["task"] = "sea_ice"
    params["sea_ice"].update(consolidated_file=str(tmp_path / "sic.nc"), start_date=days[0], end_date=days[-1],
                             land_mask_file=str(tmp_path / "sic_mask.nc"), input_length=3, pred_length=2)
    params["data"]["split"] = {"train": 0.6, "val": 0.2, "test": 0.2, "seed": 0}
    cfg = tmp_path / "params.json"
    cfg.write_text(json.dumps(params))
    assert training.main(["--config", str(cfg)]) == 0
    with open(tmp_path / "out" / "test_metrics.json") as fh:
        report = json.load(fh)
    assert report["lead_minutes"] == [1440, 2880] and report["thresholds"] == [0.15]
    model = report["methods"]["model"]
    assert len(model["mse"]) == 2 and len(model["iiee_km2"]) == 2
    # land carries no weight: a model trained with it masked is scored only on ocean pixels
    task = training.SeaIceTask(config.load_params(str(cfg)))
    x, y, mask = task.unpack(next(iter(torch.utils.data.DataLoader(task.datasets["train"], batch_size=1))), "cpu")
    assert not mask[0, 0, 0, :3].any() and mask[0, 0, 0, 3:].all()
    # the pole hole (create_mask.py's pole_hole: no data, its values filled) carries no weight either
    with xr.open_dataset(tmp_path / "sic_mask.nc") as ds:
        mask_ds = ds.load()
    pole = np.zeros(mask_ds.land_mask.shape, np.uint8)
    pole[10:13, 8:11] = 1
    mask_ds["pole_hole"] = (("y", "x"), pole)
    mask_ds.to_netcdf(tmp_path / "sic_mask.nc")
    task = training.SeaIceTask(config.load_params(str(cfg)))
    x, y, mask = task.unpack(next(iter(torch.utils.data.DataLoader(task.datasets["train"], batch_size=1))), "cpu")
    assert not mask[0, 0, 0, 10:13, 8:11].any() and mask[0, 0, 0, 3:].sum() == (24 - 3) * 20 - 9


def test_lagrangian_model_trains_evaluates_and_masks_inflow(processed, tmp_path, capsys):
    import evaluate
    params = json.loads(open(write_tiny_params(tmp_path, processed, epochs=1)).read())
    params["model"]["convlstm_unet"].update(lagrangian=True, smoothing=True)
    cfg = tmp_path / "params.json"
    cfg.write_text(json.dumps(params))
    assert training.main(["--config", str(cfg)]) == 0
    state = read_state(tmp_path / "ckpt" / "best.pt")
    assert any(k.startswith("network.") for k in state["model"])  # the wrapped U-Net
    assert state["model"]["smoothing.weight"].abs().min() > 0  # every lead's width moved off "none"
    assert evaluate.main(["--config", str(cfg), "--checkpoint", str(tmp_path / "ckpt" / "best.pt"),
                          "--methods", "model,extrapolation"]) == 0
    widths = capsys.readouterr().out.split("per lead: ")[1].split("\n")[0].split()
    assert len(widths) == params["data"]["output_steps"] and min(map(float, widths)) > 0
    # the loss ignores pixels whose trajectory starts outside the crop: a uniform flow of +3 px/step
    # along x leaves 3 * lead columns at the left edge without a source
    task = training.NowcastTask(config.load_params(str(cfg)))
    batch = next(iter(torch.utils.data.DataLoader(task.datasets["val"], batch_size=2,
                                                  collate_fn=task.collate)))
    batch["motion"] = torch.zeros_like(batch["motion"])
    batch["motion"][:, 0] = 3.0
    (x, motion), y, mask = task.unpack(batch, "cpu")
    for k, lead in enumerate(task.leads):
        assert not mask[:, k, 0, :, :3 * lead].any()
        assert torch.equal(mask[:, k, 0, :, 3 * lead:], batch["coverage"][:, k, 0, :, 3 * lead:])


def test_lagrangian_model_needs_motion_in_the_stores(processed, tmp_path, capsys):
    params = json.loads(open(write_tiny_params(tmp_path, processed, epochs=1)).read())
    params["model"]["convlstm_unet"]["lagrangian"] = True
    params["paths"]["processed_data"] = str(tmp_path / "copy")
    shutil.copytree(processed, tmp_path / "copy")
    for split in ("train", "val", "test"):
        for store in os.listdir(tmp_path / "copy" / split):
            shutil.rmtree(tmp_path / "copy" / split / store / "motion")
    cfg = tmp_path / "params.json"
    cfg.write_text(json.dumps(params))
    with pytest.raises(SystemExit):
        config.run_main(training.main, ["--config", str(cfg)])
    assert capsys.readouterr().err.strip() == (
        f"error: model.convlstm_unet.lagrangian needs the motion field in the stores of {tmp_path / 'copy'}: "
        "re-run preproc.py with data.motion true")


def test_early_stopping_and_cpu_budget(processed, tmp_path, monkeypatch, capsys):
    cfg = write_tiny_params(tmp_path, processed, epochs=6, early_stop_patience=1)
    losses = iter([0.5, 0.4, 0.45, 0.3])  # epoch 3 does not improve: stop there
    monkeypatch.setattr(training, "validate", lambda *a, **k: (next(losses), float("nan")))
    assert training.main(["--config", cfg, "--skip_test"]) == 0
    out = capsys.readouterr().out
    assert "stopped after epoch 3: no better validation loss for 1 epochs (training.early_stop_patience)" in out
    assert read_state(tmp_path / "ckpt" / "last.pt")["epoch"] == 3
    assert read_state(tmp_path / "ckpt" / "best.pt")["epoch"] == 2
    (tmp_path / "b").mkdir()
    cfg = write_tiny_params(tmp_path / "b", processed, epochs=6, cpu_minutes=0.001)  # 0.06 s: one epoch
    assert training.main(["--config", cfg, "--skip_test"]) == 0
    assert "stopped after epoch 1: " in capsys.readouterr().out
    assert read_state(tmp_path / "b" / "ckpt" / "last.pt")["epoch"] == 1


def test_selection_on_validation_csi(processed, tmp_path, monkeypatch, capsys):
    """select_on csi: best.pt, early stopping and the log follow the validation CSI, not the loss."""
    cfg = write_tiny_params(tmp_path, processed, epochs=6, early_stop_patience=2, select_on="csi")
    scores = iter([(0.5, 0.20), (0.4, 0.50), (0.3, 0.30), (0.2, float("nan")), (0.1, 0.6)])  # loss keeps falling
    monkeypatch.setattr(training, "validate", lambda *a, **k: next(scores))
    assert training.main(["--config", cfg, "--skip_test"]) == 0
    assert "stopped after epoch 4: no better validation csi for 2 epochs" in capsys.readouterr().out
    assert read_state(tmp_path / "ckpt" / "best.pt")["epoch"] == 2
    with open(tmp_path / "out" / "train_log.csv") as fh:
        assert [r["val_csi"] for r in csv.DictReader(fh)] == ["0.2000", "0.5000", "0.3000", "nan"]


def test_event_counts_equal_the_contingency_table():
    """Reference: metrics.contingency_table (numpy) on the same fields."""
    import metrics
    rng = np.random.default_rng(5)
    pred, obs = rng.gamma(0.5, 2.0, (3, 4, 1, 9, 9)), rng.gamma(0.5, 2.0, (3, 4, 1, 9, 9))
    mask = rng.random(pred.shape) < 0.8
    counts = training.event_counts(torch.from_numpy(pred), torch.from_numpy(obs), torch.from_numpy(mask), 1.0)
    table = metrics.contingency_table(pred, obs, 1.0, mask)
    assert counts.tolist() == [table["hits"], table["misses"], table["false_alarms"]]


def test_soft_csi_loss_tends_to_the_csi_of_metrics():
    """1 - soft CSI -> metrics.csi as the sigmoid sharpens; by hand: pred 1.5, 0.5, 3 (the events 1, 0, 1)
    against obs 2, 2, 0 (1, 1, 0): hits 1, misses 1, false alarms 1, CSI 1/3."""
    import metrics
    pred = torch.tensor([1.5, 0.5, 3.0])
    obs = torch.tensor([2.0, 2.0, 0.0])
    everything = torch.ones(3, dtype=torch.bool)
    assert training.soft_csi_loss(pred, obs, everything, 1.0, sharpness=1e-4).item() == pytest.approx(1 - 1 / 3)
    rng = np.random.default_rng(3)
    p, o = rng.gamma(0.5, 2.0, (2, 6, 1, 16, 16)), rng.gamma(0.5, 2.0, (2, 6, 1, 16, 16))
    mask = rng.random(p.shape) > 0.2
    expected = metrics.categorical(p, o, 1.0, mask=mask)["csi"]
    got = training.soft_csi_loss(torch.from_numpy(p), torch.from_numpy(o), torch.from_numpy(mask), 1.0, sharpness=1e-6)
    assert 1 - got.item() == pytest.approx(expected, abs=1e-3)
    soft = torch.from_numpy(p).requires_grad_()
    training.soft_csi_loss(soft, torch.from_numpy(o), torch.from_numpy(mask), 1.0).backward()
    assert torch.isfinite(soft.grad).all() and soft.grad.abs().sum() > 0
    nothing = torch.zeros(3, dtype=torch.bool)
    assert training.soft_csi_loss(pred, obs, nothing, 1.0).item() == 0.0


def test_validation_csi_of_a_real_run(processed, tmp_path):
    cfg = write_tiny_params(tmp_path, processed, epochs=1, select_on="csi", select_threshold=0.1)
    assert training.main(["--config", cfg, "--skip_test"]) == 0
    state = read_state(tmp_path / "ckpt" / "best.pt")
    assert 0.0 <= state["val_csi"] <= 1.0 and state["best_val"] == -state["val_csi"]


def test_loss_options_by_hand():
    pred = torch.tensor([1.0, 2.0, 3.0]).reshape(1, 1, 1, 1, 3)
    target = torch.tensor([0.0, 0.0, 5.0]).reshape(1, 1, 1, 1, 3)
    mask = torch.ones_like(pred, dtype=torch.bool)

    class Task:
        stats = {"target": {"min": 0.0, "max": 1.0, "transform": "none"}}

        def to_physical(self, y):
            return y
    cfg = {"thresholds": [2.0], "weights": [1.0, 3.0]}
    # errors 1, 2, -2; weights 1, 1, 3 (the last target is >= 2 mm/h)
    assert training.task_loss(pred, target, mask, Task(), {**cfg, "name": "mse"}).item() == pytest.approx(9 / 3)
    assert training.task_loss(pred, target, mask, Task(), {**cfg, "name": "weighted_mse"}).item() == \
        pytest.approx((1 + 4 + 12) / 3)
    assert training.task_loss(pred, target, mask, Task(), {**cfg, "name": "weighted_mse_mae"}).item() == \
        pytest.approx((1 + 4 + 12) / 3 + (1 + 2 + 6) / 3)
    # + 0.5 x (1 - soft CSI at 2.5 mm/h): forecast events f = sigmoid((pred - 2.5) / 0.25) against 0, 0, 1
    f = [1 / (1 + math.exp(-(v - 2.5) / 0.25)) for v in (1.0, 2.0, 3.0)]
    with_csi = {**cfg, "name": "mse", "csi_weight": 0.5, "csi_threshold": 2.5}
    assert training.task_loss(pred, target, mask, Task(), with_csi).item() == \
        pytest.approx(9 / 3 + 0.5 * (1 - f[2] / (f[0] + f[1] + 1)))


def test_reuse_cpu_memory_serves_large_blocks_from_the_heap_then_restores_glibc():
    """Inside the block a 128 MB array takes no mmap of its own (glibc's mallinfo2 counts mmapped
    bytes); before and after, glibc's default gives it one. The forward is the same bit for bit."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                         "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("no glibc >= 2.33 (mallinfo2)")
    libc.mallinfo2.restype = MallInfo2

    def mmapped_growth():
        before = libc.mallinfo2().hblkhd
        block = np.ones(2 ** 24)  # 128 MB, above glibc's largest mmap threshold (32 MB)
        grown = libc.mallinfo2().hblkhd - before
        del block
        return grown

    assert mmapped_growth() >= 2 ** 27
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 1, 3))
    x = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outside = net(x)
        with training.reuse_cpu_memory():
            assert mmapped_growth() == 0
            inside = net(x)
    assert mmapped_growth() >= 2 ** 27
    assert torch.equal(inside, outside)
