"""Figures: every plotting command writes a PNG of its documented size that is not blank, maps land
where the data is (pyproj's EPSG definitions as the reference), coastlines come from the project's
offline file, and nothing reaches the network."""
import csv
import json
import os
import socket
import subprocess
import sys
import warnings

import numpy as np
import pytest
import xarray as xr
from PIL import Image

from conftest import ROOT

import config
import plotting
import visualization
import visualization_compare_between_full_sic as compare
import visualize_mask

DAY = 20240407  # present in the asi_days fixture (20240405 and 20240406 are absent)


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path):
    """Any connection attempt fails; a cartopy download warning is an error; cartopy's cache is empty."""
    import cartopy
    import cartopy.io

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setitem(cartopy.config, "data_dir", str(tmp_path / "cartopy_cache"))
    monkeypatch.setitem(cartopy.config, "pre_existing_data_dir", str(tmp_path / "cartopy_pre"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", cartopy.io.DownloadWarning)
        yield
    assert not (tmp_path / "cartopy_cache").exists(), "cartopy wrote (downloaded) data"


def png(path):
    """(height, width, channels) uint8 pixels of a PNG."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def expected_px(size_inches):
    return round(size_inches[1] * plotting.DPI), round(size_inches[0] * plotting.DPI)


def assert_figure(path, size_inches):
    pixels = png(path)
    assert pixels.shape[:2] == expected_px(size_inches)
    assert pixels.std() > 10, "blank image"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20, "too few colours for a real figure"
    assert not os.path.exists(path + ".tmp")
    return pixels


def day_file(asi_days, date=DAY):
    return os.path.join(asi_days["dir"], f"asi-AMSR2-n3125-{date}-v5.4.nc")


def write_consolidated(asi_days, path):
    """A consolidated file in consolidate_data.py's layout, built from the fixture's truth."""
    day = xr.open_dataset(day_file(asi_days))
    dates = [int(f"{d:%Y%m%d}") for d in asi_days["dates"]]
    truth = asi_days["truth"]  # (T, H, W) %, NaN on land
    land = asi_days["land"]
    flags, conc = [], []
    for k, date in enumerate(dates):
        name = day_file(asi_days, date)
        observed = xr.open_dataset(name)["z"].values if os.path.exists(name) else np.full(land.shape, np.nan)
        flag = np.where(np.isnan(observed), 2, 0).astype(np.uint8)
        flag[land] = 4
        flags.append(flag)
        conc.append(np.where(land, 0.0, np.where(np.isnan(observed), truth[k], observed)) / 100)
    ds = xr.Dataset(
        {"sea_ice_conc": (("time", "y", "x"), np.array(conc, np.float32),
                          {"units": "1", "grid_mapping": "polar_stereographic"}),
         "fill_flag": (("time", "y", "x"), np.array(flags, np.uint8)),
         "missing_dates": (("missing",), np.array([int(f"{d:%Y%m%d}") for d in asi_days["absent"]], np.int32)),
         "polar_stereographic": ((), np.int32(0), dict(day["polar_stereographic"].attrs))},
        coords={"time": np.array(dates, np.int32), "x": day["x"], "y": day["y"]})
    if path.endswith(".zarr"):
        with warnings.catch_warnings():  # zarr 3: consolidated metadata is not in its spec
            warnings.filterwarnings("ignore", message="Consolidated metadata")
            ds.to_zarr(path, mode="w")
    else:
        ds.to_netcdf(path)
    return path


# --------------------------------------------------------------------------- projection
@pytest.mark.parametrize("date, epsg", [(DAY, 3413), (20150101, 3411)])  # WGS 84 from 2018-11-02
def test_crs_from_file_matches_epsg(asi_days, tmp_path, date, epsg):
    """The CRS built from the file's grid mapping puts lon/lat where pyproj's EPSG definition does."""
    import cartopy.crs as ccrs
    import generate_data
    from pyproj import Transformer

    path = day_file(asi_days) if date == DAY else \
        generate_data.write_asi_days(str(tmp_path), date, date, shape=(16, 12))["files"][0]
    grid = plotting.read_grid(xr.open_dataset(path), "z", path)
    lon = np.array([-45.0, 0.0, 90.0, 135.0, -170.0, 10.0])
    lat = np.array([89.0, 80.0, 70.0, 60.0, 50.0, 40.0])
    ours = grid.crs.transform_points(ccrs.PlateCarree(), lon, lat)[:, :2]
    ref = np.column_stack(Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True).transform(lon, lat))
    np.testing.assert_allclose(ours, ref, atol=1.0)  # metres


def test_file_without_grid_mapping_assumes_bremen_north(asi_days, tmp_path):
    import cartopy.crs as ccrs
    from pyproj import Transformer

    ds = xr.open_dataset(day_file(asi_days)).drop_vars("polar_stereographic")
    del ds["z"].attrs["grid_mapping"]
    with pytest.warns(UserWarning, match="no grid mapping"):
        grid = plotting.read_grid(ds, "z", "plain.nc")
    ours = grid.crs.transform_point(10.0, 75.0, ccrs.PlateCarree())
    ref = Transformer.from_crs("EPSG:4326", "EPSG:3411", always_xy=True).transform(10.0, 75.0)
    np.testing.assert_allclose(ours, ref, atol=1.0)


def test_south_grid_matches_epsg3412():
    import cartopy.crs as ccrs
    from pyproj import Transformer

    attrs = {**plotting.BREMEN_NORTH, "latitude_of_projection_origin": -90.0, "standard_parallel": -70.0,
             "straight_vertical_longitude_from_pole": 0.0}
    crs = plotting.crs_from_grid_mapping(attrs)
    lon, lat = np.array([0.0, 60.0, -120.0]), np.array([-89.0, -70.0, -55.0])
    ours = crs.transform_points(ccrs.PlateCarree(), lon, lat)[:, :2]
    ref = np.column_stack(Transformer.from_crs("EPSG:4326", "EPSG:3412", always_xy=True).transform(lon, lat))
    np.testing.assert_allclose(ours, ref, atol=1.0)


def test_image_extent_is_the_documented_n3125_grid(asi_days, monkeypatch, tmp_path):
    """The map image covers the n3125 cell edges of bremen-asi-format.md, with row 0 at the south."""
    drawn = {}
    real = plotting.draw_map

    def spy(ax, field, grid, extent, *args, **kwargs):
        image, coast = real(ax, field, grid, extent, *args, **kwargs)
        drawn.update(extent=image.get_extent(), origin=image.origin, field=field)
        return image, coast

    monkeypatch.setattr(plotting, "draw_map", spy)
    z, grid, date, kind = visualization.read_sea_ice_field(day_file(asi_days))
    plotting.plot_sea_ice_map(z, grid, str(tmp_path / "m.png"))
    # first/last centres +- half a 3125 m cell (n3125 table), as (west, east, south, north)
    np.testing.assert_allclose(drawn["extent"], (-3850000, 3750000, -5350000, 5850000), atol=1e-3)
    assert drawn["origin"] == "lower"
    np.testing.assert_array_equal(drawn["field"], z)  # small grid: no downsampling, rows as stored
    assert (date, kind) == (DAY, "day")


def test_offline_coastline_file():
    """The project's coastline file: real shorelines where they are on Earth, no artificial seams."""
    lines = [part for geometry in plotting.coastline_geometries() for part in getattr(geometry, "geoms", [geometry])]
    points = np.concatenate([np.asarray(line.coords) for line in lines])
    assert len(lines) > 300 and np.all((points[:, 1] >= 25) | (points[:, 1] <= -30))
    assert np.abs(points[:, 1]).max() < 89.99  # nothing drawn to the pole
    for lon, lat in ((-51.7, 64.2), (18.96, 69.65), (-156.8, 71.3), (-63.0, -64.5)):  # Nuuk, Tromso, Utqiagvik,
        distance = np.hypot((points[:, 0] - lon) * np.cos(np.radians(lat)), points[:, 1] - lat)  # Antarctic Pen.
        assert distance.min() < 0.6, (lon, lat)
    for line in lines:  # no segment runs along the dateline (GSHHS splits polygons there)
        coords = np.asarray(line.coords)
        on_dateline = np.abs(np.abs(coords[:, 0]) - 180) < 1e-6
        assert not np.any(on_dateline[1:] & on_dateline[:-1])


def test_display_stride_keeps_full_frames_small():
    assert plotting.display_stride((3584, 2432)) == 3  # 1195 x 811 shown
    assert plotting.display_stride((1200, 800)) == 1
    assert plotting.display_stride((1201, 10)) == 2


# --------------------------------------------------------------------------- sea-ice commands
def test_visualization_day_map(asi_days, tmp_path, capsys):
    out = tmp_path / "map.png"
    assert visualization.main(["--input_file", day_file(asi_days), "--output_file", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    pixels = assert_figure(str(out), plotting.FIGSIZE["map"])
    grey = np.all(pixels == 158, axis=-1)  # NAN_COLOUR "0.62" -> 158: NaN shown, distinct from water
    assert grey.mean() > 0.05


def test_map_draws_project_coastlines(asi_days, tmp_path, monkeypatch):
    z, grid, _, _ = visualization.read_sea_ice_field(day_file(asi_days))
    with_coast = plotting.plot_sea_ice_map(z, grid, str(tmp_path / "a.png"))
    assert with_coast.coastlines and with_coast.stride == 1
    assert plotting.coastline_geometries() is not None
    assert os.path.abspath(plotting.COASTLINE_FILE).startswith(os.path.join(ROOT, "asset"))
    monkeypatch.setattr(plotting, "_WARNED_NO_COASTLINE", [])
    with pytest.warns(UserWarning, match="none.shp not found"):
        without = plotting.plot_sea_ice_map(z, grid, str(tmp_path / "b.png"),
                                            coastline_path=str(tmp_path / "none.shp"))
    assert not without.coastlines
    diff = np.any(png(with_coast.path) != png(without.path), axis=-1)
    assert diff.sum() > 500, "coastlines changed almost no pixels"


def test_missing_coastline_file_warns_once(asi_days, tmp_path, monkeypatch):
    monkeypatch.setattr(plotting, "COASTLINE_FILE", str(tmp_path / "gone.shp"))
    monkeypatch.setattr(plotting, "_WARNED_NO_COASTLINE", [])
    z, grid, _, _ = visualization.read_sea_ice_field(day_file(asi_days))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = plotting.plot_sea_ice_map(z, grid, str(tmp_path / "a.png"))
        second = plotting.plot_sea_ice_map(z, grid, str(tmp_path / "b.png"))
    messages = [str(w.message) for w in caught if "coastline" in str(w.message)]
    assert len(messages) == 1 and "gone.shp" in messages[0]
    assert not first.coastlines and not second.coastlines
    assert_figure(second.path, plotting.FIGSIZE["map"])


def test_visualization_consolidated_and_default_output(asi_days, tmp_path, params, params_file, capsys):
    params["paths"]["outputs"] = str(tmp_path / "outs")
    cfg = params_file(params)
    store = write_consolidated(asi_days, str(tmp_path / "sic.zarr"))
    assert visualization.main(["--config", cfg, "--input_file", store, "--date", "20240405"]) == 0
    out = tmp_path / "outs" / "plots" / "sic_20240405.png"
    assert f"wrote {out}" in capsys.readouterr().out
    assert_figure(str(out), plotting.FIGSIZE["map"])
    with pytest.raises(config.UserError, match="20240501 not in the file"):
        visualization.main(["--config", cfg, "--input_file", store, "--date", "20240501"])


def test_visualize_mask(asi_days, tmp_path, capsys):
    day = xr.open_dataset(day_file(asi_days))
    stack = np.stack([xr.open_dataset(f)["z"].values for f in asi_days["files"]])
    frequency = np.isnan(stack).mean(axis=0).astype(np.float32)
    mask = xr.Dataset({"land_mask": (("y", "x"), (frequency > 0.85).astype(np.uint8),
                                     {"grid_mapping": "polar_stereographic"}),
                       "nan_frequency": (("y", "x"), frequency, {"grid_mapping": "polar_stereographic"}),
                       "polar_stereographic": ((), np.int32(0), dict(day["polar_stereographic"].attrs))},
                      coords={"x": day["x"], "y": day["y"]}, attrs={"threshold": 0.85, "days_used": len(stack)})
    path = str(tmp_path / "land_mask.nc")
    mask.to_netcdf(path)
    out = tmp_path / "land_mask_visualization.png"
    assert visualize_mask.main(["--input_file", path, "--output_file", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    pixels = assert_figure(str(out), plotting.FIGSIZE["mask"])
    tan = np.all(np.abs(pixels.astype(int) - (0xB8, 0xA2, 0x7A)) <= 2, axis=-1)  # LAND_COLOUR
    assert tan.mean() > 0.02, "land not shown"


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_compare_before_after(asi_days, tmp_path, capsys, suffix):
    store = write_consolidated(asi_days, str(tmp_path / f"sic{suffix}"))
    out = tmp_path / "cmp.png"
    assert compare.main(["--original_file", day_file(asi_days), "--consolidated_file", store,
                         "--date", str(DAY), "--output_file", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    pixels = assert_figure(str(out), plotting.FIGSIZE["comparison"])
    orange = np.all(np.abs(pixels.astype(int) - (0xFF, 0x7F, 0x0E)) <= 2, axis=-1)  # Gaussian-filled flag
    assert orange.sum() > 50, "filled pixels not shown in the fill_flag panel"


def test_compare_user_errors(asi_days, tmp_path):
    store = write_consolidated(asi_days, str(tmp_path / "sic.nc"))
    with pytest.raises(config.UserError, match="holds day 20240407, not --date 20240408"):
        compare.main(["--original_file", day_file(asi_days), "--consolidated_file", store, "--date", "20240408",
                      "--output_file", str(tmp_path / "x.png")])
    with pytest.raises(config.UserError, match="file not found"):
        compare.main(["--original_file", day_file(asi_days), "--consolidated_file", str(tmp_path / "nope.nc"),
                      "--date", str(DAY), "--output_file", str(tmp_path / "x.png")])


def test_roi_map_outlines_region(asi_days, tmp_path):
    z, grid, _, _ = visualization.read_sea_ice_field(day_file(asi_days))
    result = plotting.plot_roi_map(z, grid, (30, 60, 20, 50), str(tmp_path / "roi.png"))
    assert result.coastlines
    pixels = assert_figure(result.path, plotting.FIGSIZE["roi"])
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 40) & (pixels[..., 2] < 40)
    rows, cols = np.nonzero(red[:, : int(0.85 * pixels.shape[1])])  # the map, not the legend
    rows, cols = rows[rows < 0.85 * pixels.shape[0]], cols[rows < 0.85 * pixels.shape[0]]
    # ROI rows 30:60 of 112 (from the south) and cols 20:50 of 76: the box sits left of centre, low-middle
    assert rows.size > 100
    height = pixels.shape[0]
    assert 0.35 < 1 - rows.mean() / height < 0.65
    with pytest.raises(config.UserError, match="outside"):
        plotting.plot_roi_map(z, grid, (100, 200, 0, 10), str(tmp_path / "bad.png"))


# --------------------------------------------------------------------------- nowcasting
def test_forecast_panels(tmp_path, capsys):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:48]
    rain = lambda cx, peak: peak * np.exp(-((yy - 20) ** 2 + (xx - cx) ** 2) / 40.0)  # noqa: E731
    inputs = np.stack([rain(10 + 2 * t, 20) for t in range(6)]).astype(np.float32)
    target = np.stack([rain(26, 25), rain(30, 15)]).astype(np.float32)
    prediction = np.clip(target + rng.normal(0, 1, target.shape), 0, None).astype(np.float32)
    coverage = np.hypot(yy - 20, xx - 24) < 22
    path = tmp_path / "sample.npz"
    np.savez(path, inputs=inputs, target=target, prediction=prediction, lead_minutes=np.array([30, 60]),
             coverage=coverage, input_minutes=np.arange(-25, 1, 5))
    out = tmp_path / "fc.png"
    assert visualization.main(["--forecast", str(path), "--output_file", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    width, height = plotting.FIGSIZE["forecast_panel"]
    pixels = assert_figure(str(out), (width * 4 + 1.2, height * 3 + 0.6))  # 4 inputs; 2 leads + input row
    grey = np.all(pixels == 158, axis=-1)
    white = np.all(pixels == 255, axis=-1)
    assert grey.sum() > 200, "outside coverage not shown"
    assert white.mean() > 0.2  # 0 mm/h is white (below 0.1 mm/h), not the NaN grey
    with pytest.raises(ValueError, match="lead times"):
        plotting.plot_forecast_panels(inputs, target, prediction, [30], str(tmp_path / "bad.png"))


def test_training_curves(tmp_path, params, params_file, capsys):
    log = tmp_path / "train_log.csv"
    with open(log, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["epoch", "train_loss", "val_loss", "lr", "seconds", "samples_per_s"])
        for epoch in range(1, 9):
            writer.writerow([epoch, 1 / epoch, 1.2 / epoch + 0.05, 1e-3 * 0.5 ** (epoch // 3), 10.0, 50.0])
    params["paths"]["outputs"] = str(tmp_path / "o")
    assert visualization.main(["--config", params_file(params), "--train_log", str(log)]) == 0
    out = tmp_path / "o" / "plots" / "train_curves.png"
    assert f"wrote {out}" in capsys.readouterr().out
    assert_figure(str(out), plotting.FIGSIZE["curves"])
    bad = tmp_path / "bad.csv"
    bad.write_text("epoch,train_loss\n1,0.5\n")
    with pytest.raises(config.UserError, match="missing column"):
        visualization.main(["--train_log", str(bad), "--output_file", str(tmp_path / "x.png")])


def make_metrics():
    thresholds, leads = [0.5, 1.0, 2.0, 5.0, 10.0], [5, 10, 15, 20]
    methods = {}
    for m, (name, base) in enumerate((("model", 0.8), ("persistence", 0.6), ("extrapolation", 0.7))):
        per_threshold = {str(float(t)): [round(base - 0.05 * k - 0.03 * i, 3) for k in range(len(leads))]
                         for i, t in enumerate(thresholds)}
        methods[name] = {"csi": per_threshold, "pod": per_threshold, "far": per_threshold, "hss": per_threshold,
                         "fss": {key: {"1": v, "5": [x + 0.05 for x in v]} for key, v in per_threshold.items()},
                         "mse": [1.0 + m + k for k in range(len(leads))], "mae": [0.5 + m for _ in leads]}
    return {"thresholds": thresholds, "lead_minutes": leads, "methods": methods}


def test_verification_lines_match_metrics(tmp_path, monkeypatch):
    metrics = make_metrics()
    figures = []
    real_save = plotting.save_figure
    monkeypatch.setattr(plotting, "save_figure", lambda fig, path: figures.append(fig) or real_save(fig, path))
    out = plotting.plot_verification(metrics, "csi", str(tmp_path / "csi.png"))
    panels = [ax for ax in figures[0].axes if ax.get_lines()]
    assert len(panels) == 5
    for ax, threshold in zip(panels, metrics["thresholds"]):
        assert ax.get_title() == f"threshold {threshold:g} mm/h"
        lines = ax.get_lines()
        assert len(lines) == 3
        for line, method in zip(lines, ("model", "persistence", "extrapolation")):
            np.testing.assert_allclose(line.get_xdata(), metrics["lead_minutes"])
            np.testing.assert_allclose(line.get_ydata(), metrics["methods"][method]["csi"][str(threshold)])
    width, height = plotting.FIGSIZE["verification_panel"]
    assert_figure(out, (width * 3, height * 2 + 0.9))  # 5 thresholds -> 3 x 2 panels

    # one lead time: the score against the threshold, one line per method, in one panel
    single = {**metrics, "lead_minutes": [30]}
    single["methods"] = {m: {"csi": {k: v[:1] for k, v in s["csi"].items()}} for m, s in metrics["methods"].items()}
    figures.clear()
    plotting.plot_verification(single, "csi", str(tmp_path / "single.png"))
    (ax,) = [ax for ax in figures[0].axes if ax.get_lines()]
    for line, method in zip(ax.get_lines(), ("model", "persistence", "extrapolation")):
        np.testing.assert_allclose(line.get_xdata(), metrics["thresholds"])
        np.testing.assert_allclose(line.get_ydata(), [metrics["methods"][method]["csi"][str(t)][0]
                                                      for t in metrics["thresholds"]])


@pytest.mark.parametrize("score, n_lines", [("mse", 3), ("fss", 6)])
def test_verification_cli(tmp_path, capsys, score, n_lines):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(make_metrics()))
    out = tmp_path / f"{score}.png"
    assert visualization.main(["--metrics", str(path), "--score", score, "--output_file", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    width, height = plotting.FIGSIZE["verification_panel"]
    size = (max(width, 6.5), height + 0.9) if score == "mse" else (width * 3, height * 2 + 0.9)
    assert_figure(str(out), size)


def test_verification_unknown_score_is_a_user_error(tmp_path):
    metrics = make_metrics()
    for scores in metrics["methods"].values():
        del scores["hss"]
    with pytest.raises(config.UserError, match="score 'hss' not in the metrics"):
        plotting.plot_verification(metrics, "hss", str(tmp_path / "x.png"))


def test_cli_bad_input_exits_2_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "visualization.py", "--input_file", str(tmp_path / "nope.nc"),
                           "--output_file", str(tmp_path / "x.png")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {tmp_path / 'nope.nc'}: file not found"


@pytest.mark.parametrize("module", [visualization, visualize_mask, compare])
def test_help_documents_output_file(module, capsys):
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--output_file" in text and "default" in text and "--config" in text


@pytest.mark.slow
def test_make_readme_figures(tmp_path):
    """The README figure script runs the sea-ice scripts on its own data and plots a finished run."""
    run = tmp_path / "run"
    (run / "eval" / "test").mkdir(parents=True)
    (run / "eval" / "test" / "metrics.json").write_text(json.dumps(make_metrics()))
    (run / "train_log.csv").write_text("epoch,train_loss,val_loss,lr,seconds,samples_per_s\n"
                                       "1,0.5,0.6,0.001,3,10\n2,0.3,0.4,0.001,3,10\n")
    assets = tmp_path / "asset"
    proc = subprocess.run([sys.executable, "make_readme_figures.py", "--work_dir", str(tmp_path / "work"),
                           "--run_dir", str(run), "--size", "224x152", "--asset_dir", str(assets)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("sea_ice_20240417.png", "train_curves.png", "verification_csi.png", "interpolation_comparison.png"):
        pixels = png(str(assets / name))
        assert pixels.shape[1] <= 1100 and pixels.std() > 10
    assert "figures to" in proc.stdout.splitlines()[-1]
    # the headline before/after figure shows the core (Gaussian) fill, not only the time-linear stage
    assert "the most Gaussian-filled pixels" in proc.stdout
    pixels = png(str(assets / "interpolation_comparison.png")).astype(int)
    orange = np.all(np.abs(pixels - (0xFF, 0x7F, 0x0E)) <= 12, axis=-1)  # fill_flag 2, after the palette
    assert orange.sum() > 200


# --------------------------------------------------------------------------- land, no data, missing days
def test_consolidated_map_draws_land_and_no_data_distinctly(asi_days, tmp_path, monkeypatch, capsys):
    """Land (fill_flag 4, stored 0) is drawn as land, no neighbour (3) and the pole hole (5) as no data, never
    as open water; the title says when the day had no file."""
    store = write_consolidated(asi_days, str(tmp_path / "sic.nc"))
    with xr.open_dataset(store) as ds:
        ds = ds.load()
    flag = ds.fill_flag.values.copy()
    flag[:, 50:52, 36:40] = 5  # pole hole
    flag[:, 0:3, 70:76] = 3  # no neighbour
    ds["fill_flag"] = (("time", "y", "x"), flag)
    ds.to_netcdf(str(tmp_path / "flags.nc"))
    seen = {}
    real = plotting.plot_sea_ice_map

    def spy(z, grid, out_path, **kwargs):
        seen.update(z=np.array(z), **kwargs)
        return real(z, grid, out_path, **kwargs)

    monkeypatch.setattr(plotting, "plot_sea_ice_map", spy)
    for date, missing in ((20240407, False), (20240405, True)):
        out = tmp_path / f"{date}.png"
        assert visualization.main(["--input_file", str(tmp_path / "flags.nc"), "--date", str(date),
                                   "--output_file", str(out)]) == 0
        index = ds.time.values.tolist().index(date)
        np.testing.assert_array_equal(seen["land"], flag[index] == 4)
        np.testing.assert_array_equal(np.isnan(seen["z"]), (flag[index] == 3) | (flag[index] == 5))
        assert ("MISSING" in seen["title"]) == missing
        pixels = png(str(out))
        tan = np.all(np.abs(pixels.astype(int) - (0xB8, 0xA2, 0x7A)) <= 2, axis=-1)  # LAND_COLOUR
        assert tan.mean() > 0.02


def test_day_map_reads_corrected_files(asi_days, tmp_path, capsys):
    """A day stored with y descending is drawn the right way up (and said); one with no value is all grey."""
    import netCDF4
    src = day_file(asi_days)
    with netCDF4.Dataset(src) as nc:
        z, x, y = np.ma.filled(nc["z"][:], np.nan), nc["x"][:], nc["y"][:]
    flipped = str(tmp_path / os.path.basename(src))
    import generate_data
    generate_data.write_asi_day(flipped, z[::-1], x, y[::-1], DAY)
    z_read, grid, _, _ = visualization.read_sea_ice_field(flipped)
    np.testing.assert_array_equal(z_read, z)
    assert (np.diff(grid.y) > 0).all() and "y descending" in capsys.readouterr().err
    generate_data.write_asi_day(flipped, np.full(z.shape, np.nan, np.float32), x, y, DAY)
    assert visualization.main(["--input_file", flipped, "--output_file", str(tmp_path / "empty.png")]) == 0
    generate_data.write_asi_day(flipped, z * 3, x, y, DAY)
    with pytest.raises(config.UserError, match="not usable as a Bremen ASI day .*outside 0..100 %"):
        visualization.main(["--input_file", flipped, "--output_file", str(tmp_path / "bad.png")])


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_forecast_file_of_evaluate_predict(tmp_path, capsys, suffix):
    """The file evaluate.py --predict writes, with NaN outside coverage and a coverage variable."""
    import datetime as dt
    import evaluate
    yy, xx = np.mgrid[0:40, 0:48]
    forecast = np.stack([8.0 * np.exp(-((yy - 20) ** 2 + (xx - 10 - 4 * k) ** 2) / 30.0) for k in range(8)])
    coverage = np.hypot(yy - 20, xx - 24) < 22
    forecast[:, ~coverage] = np.nan
    t0 = dt.datetime(2024, 6, 1, 12, 0)
    path = str(tmp_path / f"case_x{suffix}")
    evaluate.write_forecast(path, forecast.astype(np.float32), [t0 + dt.timedelta(minutes=5 * k) for k in range(1, 9)],
                            t0, np.arange(1, 9) * 5, "case_x", coverage)
    out = tmp_path / "maps.png"
    assert visualization.main(["--forecast", path, "--output_file", str(out)]) == 0
    assert f"wrote {out}: forecast maps of {path}" in capsys.readouterr().out
    width, height = plotting.FIGSIZE["forecast_panel"]
    pixels = assert_figure(str(out), (width * 6 + 1.2, height + 0.9))  # 6 of the 8 lead times
    grey = np.all(pixels == 158, axis=-1)  # outside coverage: no forecast
    assert grey.mean() > 0.05
    bad = str(tmp_path / "bad.nc")
    xr.Dataset({"rain": (("y", "x"), np.zeros((4, 4)))}).to_netcdf(bad)
    with pytest.raises(config.UserError, match="no variable 'rain_rate'"):
        visualization.main(["--forecast", bad, "--output_file", str(tmp_path / "x.png")])


def run_visualization(*args):
    """visualization.py as a script (the module's top-level order matters there): (returncode, stderr)."""
    proc = subprocess.run([sys.executable, "visualization.py", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True)
    return proc.returncode, proc.stderr


def test_forecast_file_from_the_command_line(tmp_path):
    import xarray as xr
    path = tmp_path / "f.nc"
    xr.Dataset({"rain_rate": (("lead", "y", "x"), np.ones((2, 8, 8), np.float32))}, coords={"lead": [5, 10]}) \
        .to_netcdf(path)
    code, err = run_visualization("--forecast", path, "--output_file", tmp_path / "maps.png")
    assert code == 0, err
    assert (tmp_path / "maps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_figure_format_follows_the_suffix_or_is_refused(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(make_metrics()))
    assert visualization.main(["--metrics", str(path), "--output_file", str(tmp_path / "csi.pdf")]) == 0
    assert (tmp_path / "csi.pdf").read_bytes()[:5] == b"%PDF-"
    bad = tmp_path / "csi.jpeg2"
    code, err = run_visualization("--metrics", path, "--output_file", bad)
    assert code == 2 and err.strip() == f"error: {bad}: expected a figure file name ending in .png, .pdf, .svg"
    assert not bad.exists()


@pytest.mark.parametrize("flag", ["--train_log", "--metrics"])
def test_binary_log_or_metrics_file_is_one_line(tmp_path, flag):
    path = tmp_path / "binary.dat"
    path.write_bytes(bytes([0x85, 0xff, 0x00, 0x10]) * 8)
    code, err = run_visualization(flag, path, "--output_file", tmp_path / "x.png")
    kind = "CSV" if flag == "--train_log" else "JSON"
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: {path}: cannot read as a {kind} text file (UnicodeDecodeError")


def test_verification_without_thresholds_is_a_user_error(tmp_path):
    metrics = make_metrics()
    metrics["thresholds"] = []
    for scores in metrics["methods"].values():
        scores["csi"] = {}
    with pytest.raises(config.UserError, match="score 'csi': no threshold to draw"):
        plotting.plot_verification(metrics, "csi", str(tmp_path / "x.png"))
