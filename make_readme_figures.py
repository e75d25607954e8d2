"""Regenerate the small PNGs under asset/ that the README shows.

    python make_readme_figures.py [--work_dir outputs/readme_figures] [--run_dir RUN]

Sea ice: generates 20 Bremen-layout days (20240401..20240420, 896 x 608 on the
n3125 extent, 20240405 absent) with generate_data.py, then runs the pipeline
scripts that exist, as a user would: create_mask.py, consolidate_data.py,
visualization.py, visualize_mask.py, visualization_compare_between_full_sic.py (on
the day with the most Gaussian-filled pixels, so that the figure shows the core fill and
not only the time-linear stage) and find_several_data_in_target_area.py. Nowcasting: runs the demo's short pipeline on
8 generated cases (generate_data.py nowcast, preproc.py, training.py with demo.py's
params, evaluate.py, evaluate.py --predict) into <work_dir>/run, or takes a finished
run from --run_dir, and plots its train_log.csv, eval/<split>/metrics.json and the
forecast panels of `evaluate.py --predict` (forecasts/*.png; or a forecast*.npz
sample through `visualization.py --forecast`). Downscaling: takes the none-vs-softmax SR-CNN panels
(panels_E3_E4.png, else the first panels_*.png) of a finished `downscaling.py --experiments` run
(--downscaling_dir, default outputs/bench_downscaling from bench/bench_downscaling.py); it trains nothing.
A figure whose inputs or script do not exist yet is skipped and said so.

Each PNG is shrunk for the README (at most --max_width pixels wide, a 256-colour
palette) and written to asset/<name>.png. Ends with a table of what it wrote.
"""
import argparse
import glob
import os
import shlex
import subprocess
import sys

from atomic import atomic_path
from config import UserError, run_main
from generate_data import parse_shape

ROOT = os.path.dirname(os.path.abspath(__file__))
ASSET = os.path.join(ROOT, "asset")
START, END, ABSENT, DAY = "20240401", "20240420", "20240405", "20240417"  # DAY: the one-day map


def run(script, *args):
    """Run `python script args` from the repository root; False (and a note) when the script is absent."""
    if not os.path.exists(os.path.join(ROOT, script)):
        print(f"-- skipped: {script} does not exist yet")
        return False
    cmd = [sys.executable, script, *map(str, args)]
    print("$ python " + shlex.join(cmd[1:]), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT)
    if proc.returncode != 0:
        raise UserError(f"{script} failed (exit {proc.returncode}); see its message above")
    return True


def shrink(src, name, max_width, asset_dir=ASSET):
    """Copy a PNG into <asset_dir>/<name> at most max_width wide, 256-colour palette; returns (path, KiB)."""
    from PIL import Image

    os.makedirs(asset_dir, exist_ok=True)
    dst = os.path.join(asset_dir, name)
    with Image.open(src) as image:
        image = image.convert("RGB")
        if image.width > max_width:
            image = image.resize((max_width, round(image.height * max_width / image.width)), Image.LANCZOS)
        image = image.quantize(colors=256, method=Image.Quantize.MAXCOVERAGE, dither=Image.Dither.NONE)
        with atomic_path(dst) as tmp:
            image.save(tmp, format="PNG", optimize=True)
    return dst, os.path.getsize(dst) / 1024


def find_one(folder, patterns):
    """First file under folder matching one of the glob patterns (searched recursively), or None."""
    for pattern in patterns:
        found = sorted(glob.glob(os.path.join(folder, "**", pattern), recursive=True))
        if found:
            return found[0]
    return None


def gaussian_day(consolidated, asi):
    """(YYYYMMDD, day file) of the day with a source file that has the most Gaussian-filled pixels (fill_flag 2):
    the figure must show the core fill, not only the time-linear stage. None when no day has one."""
    import netCDF4
    import numpy as np
    from asi_files import asi_filename

    with netCDF4.Dataset(consolidated) as nc:
        times = nc["time"][:].tolist()
        missing = set(nc["missing_dates"][:].tolist()) if "missing_dates" in nc.variables else set()
        counts = [int(np.count_nonzero(nc["fill_flag"][t] == 2)) if times[t] not in missing else -1
                  for t in range(len(times))]
    best = int(np.argmax(counts))
    if counts[best] <= 0:
        return None
    print(f"-- before/after figure: {times[best]} ({counts[best]} Gaussian-filled pixels, the most of any day)")
    return str(times[best]), os.path.join(asi, asi_filename(times[best]))


def run_nowcasting(out):
    """The demo's nowcasting steps on generated cases into `out` (demo.py's short-training params)."""
    import demo

    os.makedirs(out, exist_ok=True)
    cfg = demo.demo_params(os.path.relpath(os.path.abspath(out), ROOT))
    run("generate_data.py", "nowcast", "--out", os.path.join(out, "raw_dataset"), "--cases", "8",
        "--size", "96x96", "--steps", "60")
    checkpoint = os.path.join(out, "checkpoints", "best.pt")
    if run("preproc.py", "--config", cfg) and run("training.py", "--config", cfg):
        run("evaluate.py", "--config", cfg, "--checkpoint", checkpoint)
        case = sorted(os.listdir(os.path.join(out, "raw_dataset")))[0]
        run("evaluate.py", "--config", cfg, "--checkpoint", checkpoint,
            "--predict", os.path.join(out, "raw_dataset", case))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work_dir", default="outputs/readme_figures",
                        help="scratch folder for the generated data and full-size plots "
                             "(default: outputs/readme_figures)")
    parser.add_argument("--run_dir", default=None,
                        help="a finished nowcasting run to plot (train_log.csv, eval/*/metrics.json, forecasts/*.png), "
                             "e.g. outputs/demo after `make demo` (default: run a short one on generated cases "
                             "into <work_dir>/run, about 1-2 minutes on 2 CPU cores)")
    parser.add_argument("--size", default="896x608",
                        help="sea-ice grid ROWSxCOLS on the n3125 extent (default: 896x608, 12.5 km)")
    parser.add_argument("--max_width", type=int, default=1100, help="README figure width, pixels (default: 1100)")
    parser.add_argument("--asset_dir", default=ASSET, help="where the README figures go (default: asset/)")
    parser.add_argument("--downscaling_dir", default="outputs/bench_downscaling",
                        help="a finished downscaling.py --experiments run with panels_*.png "
                             "(default: outputs/bench_downscaling)")
    parser.add_argument("--parts", default="sea_ice,nowcasting,downscaling",
                        help="comma-separated figure groups to redo: sea_ice, nowcasting, downscaling (default: all)")
    args = parser.parse_args(argv)
    work = args.work_dir
    asi, plots = os.path.join(work, "asi"), os.path.join(work, "plots")
    os.makedirs(plots, exist_ok=True)
    written, skipped = [], []

    def figure(ok, full, name, what):
        if ok and os.path.exists(full):
            written.append((what, *shrink(full, name, args.max_width, args.asset_dir)))
        else:
            skipped.append(what)

    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts or parts - {"sea_ice", "nowcasting", "downscaling"}:
        raise UserError(f"--parts {args.parts!r}: expected sea_ice, nowcasting, downscaling, comma-separated")
    if "sea_ice" in parts:
        sea_ice_figures(args, work, asi, plots, figure)
    if "nowcasting" in parts:
        nowcasting_figures(args, work, plots, figure)
    if "downscaling" in parts:
        full = find_one(args.downscaling_dir, ["panels_E3_E4.png", "panels_E*_E*.png"])
        figure(full is not None, full or "", "downscaling_panels.png",
               f"downscaling: LR | HR | SR none | SR constrained | difference ({args.downscaling_dir})")
    print("\n== README figures")
    for what, path, kib in written:
        print(f"  {os.path.relpath(path):45s} {kib:6.0f} KiB  {what}")
    for what in skipped:
        print(f"  {'(skipped)':45s} {'':10s} {what}")
    print(f"wrote {len(written)} figures to {os.path.relpath(args.asset_dir)}/ ({len(skipped)} skipped)")
    return 0


def sea_ice_figures(args, work, asi, plots, figure):
    """Generated days -> create_mask, consolidate_data -> the four sea-ice figures."""
    run("generate_data.py", "sea_ice", "--out", asi, "--start", START, "--end", END, "--size", args.size,
        "--absent", ABSENT)
    day_file = os.path.join(asi, f"asi-AMSR2-n3125-{DAY}-v5.4.nc")
    mask, consolidated = os.path.join(work, "land_mask.nc"), os.path.join(work, "sea_ice_concentration.nc")
    have_mask = run("create_mask.py", "--source_dir", asi, "--start_date", START, "--end_date", END,
                    "--output_file", mask, "--threshold", "0.85")
    mask_args = ["--land_mask_file", mask] if have_mask else []
    have_consolidated = run("consolidate_data.py", "--source_dir", asi, "--start_date", START, "--end_date", END,
                            "--output_file", consolidated, *mask_args)
    full = os.path.join(plots, f"sea_ice_{DAY}.png")
    figure(run("visualization.py", "--input_file", day_file, "--output_file", full), full,
           f"sea_ice_{DAY}.png", "sea-ice map of one day")
    full = os.path.join(plots, "land_mask.png")
    figure(have_mask and run("visualize_mask.py", "--input_file", mask, "--output_file", full), full,
           "land_mask.png", "land mask and NaN frequency")
    full = os.path.join(plots, "interpolation_comparison.png")
    shown = gaussian_day(consolidated, asi) if have_consolidated else None
    figure(shown and run("visualization_compare_between_full_sic.py", "--original_file", shown[1],
                         "--consolidated_file", consolidated, "--date", shown[0], "--output_file", full),
           full, "interpolation_comparison.png",
           f"before / after gap filling, {shown[0] if shown else '-'}: the day with the most Gaussian-filled pixels")
    full = os.path.join(plots, "roi.png")
    n_y, n_x = parse_shape(args.size)  # the demo's ROI (rows 300:400, cols 200:300 of 896 x 608), scaled
    roi = [round(n_y * 300 / 896), round(n_y * 400 / 896), round(n_x * 200 / 608), round(n_x * 300 / 608)]
    figure(run("find_several_data_in_target_area.py", "--source_dir", asi, "--start_date", START,
               "--end_date", END, "--ymin", roi[0], "--ymax", roi[1], "--xmin", roi[2], "--xmax", roi[3],
               "--output_file", full), full, "roi.png", "region of interest")



def nowcasting_figures(args, work, plots, figure):
    """A finished run (--run_dir), or a short one on generated cases -> the three nowcasting figures."""
    run_dir = args.run_dir or run_nowcasting(os.path.join(work, "run"))
    log = find_one(run_dir, ["train_log.csv"])
    metrics = find_one(run_dir, ["metrics.json"])
    forecast = find_one(run_dir, ["forecast*.npz", "sample*.npz"])
    forecast_png = find_one(os.path.join(run_dir, "forecasts"), ["*.png"])  # evaluate.py --predict
    full = os.path.join(plots, "train_curves.png")
    figure(log and run("visualization.py", "--train_log", log, "--output_file", full), full,
           "train_curves.png", f"training curves (train_log.csv under {run_dir})")
    full = os.path.join(plots, "verification_csi.png")
    figure(metrics and run("visualization.py", "--metrics", metrics, "--score", "csi", "--output_file", full), full,
           "verification_csi.png", f"CSI of each method (metrics.json under {run_dir})")
    full = os.path.join(plots, "forecast_panels.png")
    if forecast is None and forecast_png is not None:
        full, forecast = forecast_png, True  # already drawn by plotting.plot_forecast_panels
    else:
        forecast = forecast and run("visualization.py", "--forecast", forecast, "--output_file", full)
    figure(forecast, full, "forecast_panels.png",
           f"forecast panels (forecasts/*.png or forecast*.npz under {run_dir})")


if __name__ == "__main__":
    run_main(main)
