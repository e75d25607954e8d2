"""LR-HR data (make_downscaling_data.py), scores (metrics.DownscalingAccumulator, SSIM, MS-SSIM) and
downscaling.py runs on small event files the tests write themselves."""
import json
import os

import numpy as np
import pytest
import torch
import zarr
from numpy.lib.stride_tricks import sliding_window_view
from skimage.metrics import structural_similarity

import config
import downscaling
import make_downscaling_data
import metrics
from conftest import ROOT

EVENTS = ("bom-x", "knmi-x", "fmi-20170509", "fmi-20160928")


def rain_frames(rng, n_frames, shape):
    """Smooth positive rain fields (mm/h) with dry parts: (T, H, W) float32."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    frames = []
    for t in range(n_frames):
        field = np.zeros(shape)
        for _ in range(6):
            cy, cx, s = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(4, 12)
            field += rng.uniform(1, 30) * np.exp(-((yy - cy - t) ** 2 + (xx - cx) ** 2) / (2 * s * s))
        field[field < 0.3] = 0.0
        frames.append(field)
    return np.asarray(frames, dtype=np.float32)


@pytest.fixture(scope="module")
def radar_dir(tmp_path_factory):
    """Four events (4 frames of 96 x 96): one with a NaN stripe (no coverage) and one negative value."""
    folder = tmp_path_factory.mktemp("radar")
    rng = np.random.default_rng(0)
    for i, name in enumerate(EVENTS):
        rain = rain_frames(rng, 4, (96, 96))
        if i == 1:
            rain[:, :10, :] = np.nan  # the top crops of this event have no coverage
        if i == 0:
            rain[0, 60, 60] = -0.5
        np.savez(folder / f"{name}.npz", rain_rate=rain, time=np.array([f"20200101{h:02d}00" for h in range(4)]))
    return str(folder)


def small_params(tmp, radar_dir, **down):
    params = config.load_params(os.path.join(ROOT, "params.json"))
    params["downscaling"].update(radar_dir=radar_dir, data_dir=str(tmp / "data"), outputs=str(tmp / "out"),
                                 crop_size=48, min_wet_fraction=0.05, number_channels=4, number_residual_blocks=1,
                                 epochs=2, batch_size=4, ensemble_members=3, panels=1)
    params["downscaling"]["max_crops"].update(train=64, val=8, test=8)
    params["downscaling"].update(down)
    params["training"]["device"] = "cpu"
    return config.validate(params)


def write_config(tmp, params):
    path = tmp / "params.json"
    path.write_text(json.dumps(params))
    return str(path)


@pytest.fixture(scope="module")
def rr4(tmp_path_factory, radar_dir):
    tmp = tmp_path_factory.mktemp("rr4")
    params = small_params(tmp, radar_dir)
    path, summary = make_downscaling_data.make_dataset(params, factor=4, progress=False)
    return {"tmp": tmp, "params": params, "path": path, "summary": summary}


# --------------------------------------------------------------------------- data
def test_lr_is_the_block_mean_of_hr_and_splits_are_by_event(rr4, radar_dir):
    root = zarr.open_group(rr4["path"], mode="r")
    assert root.attrs["events"] == {"train": ["bom-x", "knmi-x"], "val": ["fmi-20170509"], "test": ["fmi-20160928"]}
    names = root.attrs["event_names"]
    for split in ("train", "val", "test"):
        hr, lr, origin = root[split]["hr"][:], root[split]["lr"][:], root[split]["origin"][:]
        assert hr.shape[1:] == (1, 1, 48, 48) and lr.shape[1:] == (1, 1, 12, 12)
        expected = hr.astype(np.float64).reshape(-1, 1, 1, 12, 4, 12, 4).mean(axis=(4, 6))
        assert np.allclose(lr, expected, rtol=1e-6, atol=1e-6)
        for k, (event, t, y, x) in enumerate(origin):
            assert names[event] in root.attrs["events"][split]
            source = np.load(os.path.join(radar_dir, names[event] + ".npz"))["rain_rate"][t, y:y + 48, x:x + 48]
            assert np.array_equal(hr[k, 0, 0], np.maximum(source, 0))  # NaN-free crops, negatives set to 0
            assert np.mean(source >= 0.1) >= 0.05
    train = root["train"]["hr"][:]
    assert root.attrs["normalisation"] == {"min": float(train.min()), "max": float(train.max())}
    assert rr4["summary"]["negatives"] == 1
    # the event with a NaN stripe contributes only its lower crops (the grid is centred: rows 0 and 48)
    knmi = root["train"]["origin"][:][root["train"]["origin"][:, 0] == names.index("knmi-x")]
    assert len(knmi) > 0 and set(knmi[:, 2]) == {48}


def test_temporal_set_and_evenly_chosen_crops(tmp_path, radar_dir):
    params = small_params(tmp_path, radar_dir)
    params["downscaling"]["max_crops"]["train"] = 5
    path, summary = make_downscaling_data.make_dataset(params, factor=8, frames=3, progress=False)
    assert os.path.basename(path) == "rr8t3.zarr"
    root = zarr.open_group(path, mode="r")
    hr, lr = root["train"]["hr"][:], root["train"]["lr"][:]
    assert hr.shape == (5, 3, 1, 48, 48) and lr.shape == (5, 3, 1, 6, 6)
    assert summary["candidates"]["train"] > 5
    origin = root["train"]["origin"][:]
    event = np.load(os.path.join(radar_dir, root.attrs["event_names"][origin[0, 0]] + ".npz"))["rain_rate"]
    t, y, x = origin[0, 1:]
    assert np.array_equal(hr[0, :, 0], np.maximum(event[t:t + 3, y:y + 48, x:x + 48], 0))
    assert make_downscaling_data.evenly(list(range(10)), 4) == [0, 3, 6, 9]


def test_missing_radar_dir_falls_back_to_generated_cases(tmp_path, capsys):
    params = small_params(tmp_path, str(tmp_path / "absent"))
    params["downscaling"]["max_crops"].update(train=4, val=2, test=2)
    path, summary = make_downscaling_data.make_dataset(params, factor=4, progress=False)
    assert summary["source"] == "generated" and "not found" in capsys.readouterr().out
    root = zarr.open_group(path, mode="r")
    assert root["test"]["hr"].shape == (2, 1, 1, 48, 48) and root.attrs["source"] == "generated"
    assert len(root.attrs["event_names"]) == 4 and root.attrs["events"]["test"] == root.attrs["event_names"][-1:]


# --------------------------------------------------------------------------- scores
def brute_force_ssim_terms(p, o, data_range, sigma=1.5, radius=5):
    """Mean luminance-contrast-structure (SSIM) and contrast-structure over all full windows, by windows."""
    offsets = np.arange(-radius, radius + 1)
    w = np.exp(-(offsets[:, None] ** 2 + offsets[None] ** 2) / (2 * sigma ** 2))
    w /= w.sum()
    pw, ow = sliding_window_view(p, w.shape), sliding_window_view(o, w.shape)
    mu_p, mu_o = (np.einsum("ijkl,kl->ij", a, w) for a in (pw, ow))
    var_p = np.einsum("ijkl,kl->ij", pw ** 2, w) - mu_p ** 2
    var_o = np.einsum("ijkl,kl->ij", ow ** 2, w) - mu_o ** 2
    cov = np.einsum("ijkl,kl->ij", pw * ow, w) - mu_p * mu_o
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    cs = (2 * cov + c2) / (var_p + var_o + c2)
    lum = (2 * mu_p * mu_o + c1) / (mu_p ** 2 + mu_o ** 2 + c1)
    return float(np.mean(lum * cs)), float(np.mean(cs))


def test_ssim_and_ms_ssim_against_scikit_image_and_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(3):
        obs = rng.gamma(0.6, 4.0, (96, 96))
        pred = np.clip(obs + rng.normal(0, 1.5, obs.shape), 0, None)
        width = float(obs.max() - obs.min())
        reference = structural_similarity(pred, obs, data_range=width, gaussian_weights=True, sigma=1.5,
                                          use_sample_covariance=False)
        assert metrics.ssim(pred, obs, data_range=width) == pytest.approx(reference, rel=1e-10)
        assert metrics.ms_ssim(pred, obs, width, betas=(1.0,)) == pytest.approx(reference, rel=1e-10)
        expected, (p, o) = 1.0, (pred, obs)
        for j, beta in enumerate(metrics.MS_SSIM_BETAS):
            if j:
                p, o = (a.reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2).mean(axis=(1, 3)) for a in (p, o))
            full, cs = brute_force_ssim_terms(p, o, width)
            if j == len(metrics.MS_SSIM_BETAS) - 1:
                full_skimage = structural_similarity(p, o, data_range=width, gaussian_weights=True, sigma=1.5,
                                                     use_sample_covariance=False)
                assert full == pytest.approx(full_skimage, rel=1e-10)
            expected *= max(full if j == len(metrics.MS_SSIM_BETAS) - 1 else cs, 0) ** beta
        assert metrics.ms_ssim(pred, obs, width) == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match="at least 44"):
        metrics.ms_ssim(np.zeros((32, 32)), np.zeros((32, 32)), 1.0)


def test_accumulator_is_exact_over_batches_and_crps_of_one_member_is_mae():
    rng = np.random.default_rng(4)
    obs = rng.gamma(0.5, 3.0, (6, 1, 48, 48))
    pred = obs + rng.normal(0, 0.5, obs.shape)
    lr = obs.reshape(6, 1, 12, 4, 12, 4).mean(axis=(3, 5))
    whole, parts = metrics.DownscalingAccumulator(4, 10.0), metrics.DownscalingAccumulator(4, 10.0)
    whole.update(pred, obs, lr)
    for i in range(0, 6, 4):
        parts.update(pred[i:i + 4], obs[i:i + 4], lr[i:i + 4])
    a, b = whole.scores(), parts.scores()
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-12), key
    assert a["crps"] == pytest.approx(a["mae"], rel=1e-12)
    ens = metrics.DownscalingAccumulator(4, 10.0)
    ens.update(pred, obs, lr, ensemble=pred[None])
    assert ens.scores()["crps"] == pytest.approx(a["mae"], rel=1e-12)
    # by hand: every score against plain numpy
    assert a["mse"] == pytest.approx(np.mean((pred - obs) ** 2))
    assert a["psnr"] == pytest.approx(10 * np.log10(100.0 / np.mean((pred - obs) ** 2)))
    assert a["mass_violation"] == pytest.approx(np.mean(np.abs(pred.reshape(6, 1, 12, 4, 12, 4).mean(axis=(3, 5)) - lr)))
    assert a["neg_num"] == np.count_nonzero(pred < 0)
    assert a["neg_mean"] == pytest.approx(np.minimum(pred, 0).sum() / pred.size)
    assert a["mean_abs_bias"] == pytest.approx(np.mean(np.abs((pred - obs).mean(axis=(-2, -1)))))
    assert a["ms_ssim"] == pytest.approx(np.mean([metrics.ms_ssim(pred[i, 0], obs[i, 0], 10.0) for i in range(6)]))


def test_baselines_nearest_is_a_repeat_and_add_conserves():
    lr = torch.tensor(np.random.default_rng(5).gamma(0.5, 3.0, (2, 1, 1, 6, 6)), dtype=torch.float32)
    nearest = downscaling.baseline("nearest", lr, 4).numpy()
    assert np.array_equal(nearest, np.repeat(np.repeat(lr.numpy(), 4, -2), 4, -1))
    assert np.array_equal(downscaling.baseline("nearest+add", lr, 4).numpy(), nearest)
    bicubic = downscaling.baseline("bicubic+add", lr, 4).numpy()
    assert np.allclose(bicubic.reshape(2, 1, 1, 6, 4, 6, 4).mean(axis=(4, 6)), lr.numpy(), rtol=1e-5, atol=1e-6)
    flat = downscaling.baseline("bicubic", torch.full((1, 1, 1, 4, 4), 2.5), 2)
    assert torch.allclose(flat, torch.full_like(flat, 2.5))


# --------------------------------------------------------------------------- runs
def scores_of(folder, split="test"):
    with open(os.path.join(folder, f"scores_{split}.json")) as fh:
        return json.load(fh)["scores"]


def test_soft_loss_adds_the_alpha_weighted_mass_penalty(rr4):
    params = small_params(rr4["tmp"], "", constraints="soft", alpha=0.7)
    task = downscaling.DownscalingTask(params, rr4["path"])
    pred, y = torch.rand(2, 1, 1, 48, 48), torch.rand(2, 1, 1, 48, 48)
    p, t = pred.double().numpy(), y.double().numpy()
    mass = np.mean((p.reshape(2, 1, 1, 12, 4, 12, 4).mean(axis=(4, 6)) -
                    t.reshape(2, 1, 1, 12, 4, 12, 4).mean(axis=(4, 6))) ** 2)
    expected = 0.3 * np.mean((p - t) ** 2) + 0.7 * mass
    assert task.loss(pred, y).item() == pytest.approx(expected, rel=1e-5)
    plain = downscaling.DownscalingTask(small_params(rr4["tmp"], ""), rr4["path"])
    assert plain.loss(pred, y).item() == pytest.approx(np.mean((p - t) ** 2), rel=1e-5)


def test_gan_step_updates_generator_and_discriminator(rr4):
    # seeded: with another test's random state before it (pytest -n), a freshly drawn discriminator
    # could have a whole ReLU layer silent on this batch, and a silent layer gets no gradient
    torch.manual_seed(0)
    params = small_params(rr4["tmp"], "", model="gan")
    task = downscaling.DownscalingTask(params, rr4["path"])
    model = downscaling.build_model(params["downscaling"], task.stats)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before_g = [p.detach().clone() for p in model.parameters()]
    before_d = [p.detach().clone() for p in task.discriminator.parameters()]
    batch = next(iter(torch.utils.data.DataLoader(task.datasets["train"], batch_size=4)))
    loss, samples = task.train_step(model, batch, optimizer, torch.device("cpu"), False)
    assert np.isfinite(loss) and samples == 4
    assert all(not torch.equal(a, b) for a, b in zip(before_g, model.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(before_d, task.discriminator.parameters()))
    assert set(task.extra_state()) == {"discriminator", "d_optimizer"}


@pytest.mark.parametrize("model,constraints", [("cnn", "softmax"), ("gan", "add")])
def test_evalonly_reproduces_the_training_run_scores(rr4, model, constraints, capsys):
    params = small_params(rr4["tmp"], "", model=model, constraints=constraints, model_id=f"run_{model}", epochs=1)
    cfg = write_config(rr4["tmp"], params)
    assert downscaling.main(["--config", cfg]) == 0
    folder = os.path.join(params["downscaling"]["outputs"], f"run_{model}")
    trained = scores_of(folder)
    assert os.path.isfile(os.path.join(folder, "best.pt")) and os.path.isfile(os.path.join(folder, "train_log.csv"))
    assert os.path.isfile(os.path.join(folder, "panels_test.png"))
    assert trained["max_rel_mass_violation"] <= 1e-5  # the hard constraint holds on every test block
    if constraints == "softmax":
        assert trained["neg_num"] == 0
    assert trained["crps"] <= trained["mae"] + 1e-12 or model == "cnn"
    os.remove(os.path.join(folder, "scores_test.json"))
    assert downscaling.main(["--config", cfg, "--training_evalonly", "evalonly"]) == 0
    assert scores_of(folder) == trained
    assert "evaluated run_" in capsys.readouterr().out.strip().splitlines()[-1]


def test_experiments_make_the_table(tmp_path, radar_dir):
    params = small_params(tmp_path, radar_dir, experiment_budget=1, epochs=1)
    cfg = write_config(tmp_path, params)
    assert downscaling.main(["--config", cfg, "--experiments", "E3,E4"]) == 0
    out = params["downscaling"]["outputs"]
    text = open(os.path.join(out, "experiments.md")).read()
    assert "| E3 | E3_rr4_cnn_none |" in text and "| E4 | E4_rr4_cnn_softmax |" in text
    assert "rr4 bicubic" in text and os.path.isfile(os.path.join(out, "panels_E3_E4.png"))
    rows = open(os.path.join(out, "experiments.csv")).read().splitlines()
    assert len(rows) == 1 + 4 + 2  # header, four baselines, two experiments


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        config.run_main(downscaling.main, argv)
    return exit_info.value.code, capsys.readouterr().err.strip().splitlines()


def test_bad_flags_and_missing_dataset_give_one_line(tmp_path, radar_dir, capsys):
    cfg = write_config(tmp_path, small_params(tmp_path, radar_dir))
    code, lines = run_cli(["--config", cfg, "--dataset", "rr3"], capsys)
    expected = os.path.join(str(tmp_path / "data"), "rr3.zarr")
    assert code == 2 and lines == [f"error: {expected}: dataset not found (make it with: python "
                                   f"make_downscaling_data.py --factor 4 --name rr3)"]
    code, lines = run_cli(["--config", cfg, "--constraints", "hard"], capsys)
    assert code == 2 and "--constraints" in lines[-1] and "invalid choice" in lines[-1]
    code, lines = run_cli(["--config", cfg, "--alpha", "1.5"], capsys)
    assert code == 2 and lines == ["error: --alpha: downscaling.alpha: expected a weight between 0 and 1, got 1.5"]
    code, lines = run_cli(["--config", cfg, "--experiments", "E99"], capsys)
    assert code == 2 and len(lines) == 1 and "E99" in lines[0]


def test_sea_ice_source_splits_days_in_time_and_leaves_out_land(tmp_path):
    import xarray as xr
    days = np.arange(20240401, 20240411)
    rng = np.random.default_rng(6)
    conc = np.clip(rng.uniform(0, 1, (10, 96, 96)).astype(np.float32), 0, 1)
    land = np.zeros((96, 96), dtype=np.int8)
    land[:20, :20] = 1  # the top-left crop touches land
    xr.Dataset({"sea_ice_conc": (("time", "y", "x"), conc)},
               coords={"time": days.astype(np.int32), "y": np.arange(96.0), "x": np.arange(96.0)}
               ).to_netcdf(tmp_path / "sic.nc")
    xr.Dataset({"land_mask": (("y", "x"), land)}).to_netcdf(tmp_path / "mask.nc")
    params = small_params(tmp_path, "", source="sea_ice")
    params["sea_ice"].update(consolidated_file=str(tmp_path / "sic.nc"), land_mask_file=str(tmp_path / "mask.nc"))
    path, summary = make_downscaling_data.make_dataset(params, factor=4, progress=False)
    assert os.path.basename(path) == "sic4.zarr" and summary["units"] == "fraction"
    root = zarr.open_group(path, mode="r")
    origin = {s: root[s]["origin"][:] for s in ("train", "val", "test")}
    # data.split 0.7 / 0.15 / 0.15 of 10 days: days 0-6 train, 7-8 (round(1.5) = 2) val, day 9 test;
    # each part is one event whose time index counts from its first day
    assert root.attrs["events"] == {"train": ["sea_ice-train"], "val": ["sea_ice-val"], "test": ["sea_ice-test"]}
    first_day = {"train": 0, "val": 7, "test": 9}
    assert set(origin["train"][:, 1]) == set(range(7)) and set(origin["test"][:, 1]) == {0}
    for s in origin:
        assert not np.any((origin[s][:, 2] == 0) & (origin[s][:, 3] == 0))  # no crop with land
        hr = root[s]["hr"][:]
        for k, (_, t, y, x) in enumerate(origin[s]):
            assert np.array_equal(hr[k, 0, 0], conc[first_day[s] + t, y:y + 48, x:x + 48])


def test_panel_figure_size_and_bad_shapes(tmp_path):
    import matplotlib.image
    import plotting
    rng = np.random.default_rng(7)
    hr = rng.gamma(0.5, 3.0, (2, 32, 32))
    lr = hr.reshape(2, 8, 4, 8, 4).mean(axis=(2, 4))
    path = plotting.plot_downscaling_panels(lr, hr, {"none": hr * 0.9, "softmax": hr}, str(tmp_path / "p.png"))
    width, height = plotting.FIGSIZE["downscaling_panel"]
    assert matplotlib.image.imread(path).shape[:2] == (round((height * 2 + 0.7) * plotting.DPI),
                                                       round((width * 5 + 1.4) * plotting.DPI))
    with pytest.raises(ValueError, match="expected lr"):
        plotting.plot_downscaling_panels(lr, hr, {"none": hr[:, :16]}, str(tmp_path / "q.png"))


def test_cpu_budget_stops_before_an_epoch_that_would_pass_it(rr4):
    import time
    task = downscaling.DownscalingTask(small_params(rr4["tmp"], ""), rr4["path"])
    task.budget, task._epochs_run = (time.process_time() - 10.0, 18.0), 0
    task.set_epoch(0)  # the first epoch always runs, whatever was spent
    task._epochs_run = 1  # one epoch took ~10 s: a second would end near 20 s > 18 s
    with pytest.raises(downscaling.BudgetSpent, match="budget of 18"):
        task.set_epoch(1)
    task.budget, task._epochs_run = (time.process_time() - 10.0, 25.0), 1
    task.set_epoch(1)  # 20 s < 25 s: goes on
    assert task._epochs_run == 2
