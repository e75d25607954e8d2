"""`make demo`: the whole pipeline on data the project generates itself, under outputs/demo/.

Each step is the shell command a user would type (printed before it runs), so
this file doubles as a worked example of the README. Sea ice: synthetic
Bremen days served by a loopback mirror -> download.py -> create_mask.py ->
consolidate_data.py -> inspection tools and maps. Nowcasting: synthetic raw
cases -> preproc.py -> training.py -> evaluate.py -> plots; pretrain.py (seed 004) and a
fine-tuning of spark_unet from it (under <out>/finetune). Downscaling: generated rain ->
make_downscaling_data.py -> downscaling.py --experiments E3,E4 (SR-CNN without and with the
softmax constraint, one epoch of 8 steps each) -> table and panels. A step whose script
does not exist yet is skipped and said so. Ends with a summary of what it wrote.

    python demo.py [--out outputs/demo] [--days 20] [--size 896x608]
"""
import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import time

import config
import generate_data

ROOT = os.path.dirname(os.path.abspath(__file__))


def run(cmd, log):
    """Run one pipeline command (list of str) from the repository root; stop the demo on failure."""
    script = cmd[1] if len(cmd) > 1 and cmd[0] == sys.executable else None
    shown = "python " + shlex.join(cmd[1:]) if script else shlex.join(cmd)
    if script and not os.path.exists(os.path.join(ROOT, script)):
        print(f"\n-- skipped (not written yet): {shown}")
        log.append((shown, "skipped", 0.0))
        return False
    print(f"\n$ {shown}", flush=True)
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT)
    seconds = time.time() - start
    log.append((shown, "ok" if proc.returncode == 0 else f"exit {proc.returncode}", seconds))
    if proc.returncode != 0:
        raise config.UserError(f"demo step failed (exit {proc.returncode}): {shown}")
    return True


def demo_params(out, name="params.json", run_dir=""):
    """params.json for the demo: the repository's file with paths under `out` and a short training.

    run_dir: a sub-folder of `out` for the checkpoints and outputs of another training run (the
    fine-tuning of seed 004), so that it does not overwrite the first run's files."""
    params = config.load_params(os.path.join(ROOT, "params.json"))
    runs = f"{out}/{run_dir}".rstrip("/")
    params["paths"].update(raw_dataset=f"{out}/raw_dataset", processed_data=f"{out}/processed_data",
                           sea_ice_data=f"{out}/asi", checkpoints=f"{runs}/checkpoints", outputs=runs)
    params["data"].update(patch_size=64, input_steps=6, lead_steps=1, output_steps=6)  # 5 .. 30 min ahead
    params["training"].update(epochs=8, steps_per_epoch=40, val_steps=5, batch_size=8, num_workers=0)
    params["downscaling"].update(data_dir=f"{out}/downscaling/data", outputs=f"{out}/downscaling")
    params["model"]["spark_unet"].update(base_width=8, decoder_width=64)       # small, for seconds on a CPU
    params["pretraining"].update(ep=2, steps_per_epoch=5, val_steps=2, bs=8, base_lr=0.03)
    path = os.path.join(ROOT, out, name)
    with open(path, "w") as fh:
        json.dump(config.validate(params), fh, indent=2)
    return os.path.relpath(path, ROOT)


def middle_forecast_time(store_path, params):
    """YYYYmmddHHMM of a forecast time in the middle of a processed case whose targets were observed."""
    import zarr
    from normalization import sample_starts
    from preproc import EPOCH
    data = params["data"]
    store = zarr.open_group(store_path, mode="r")
    starts = sample_starts(store["valid"][:], data)
    t0 = int(starts[len(starts) // 2]) + data["input_steps"] - 1
    return f"{EPOCH + dt.timedelta(minutes=int(store['time'][t0])):%Y%m%d%H%M}"


def summarize(out, log, seconds):
    """The commands run, then what each top-level folder of `out` holds."""
    print("\n== demo summary")
    for shown, status, took in log:
        print(f"  {status:>8} {took:6.1f}s  {shown[:110]}")
    root = os.path.join(ROOT, out)
    print(f"\nwrote under {out}/:")
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if os.path.isfile(path):
            print(f"  {name:<34} {os.path.getsize(path) / 1e6:8.1f} MB")
            continue
        files = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
        size = sum(os.path.getsize(f) for f in files) / 1e6
        shown = sorted(os.path.relpath(f, path) for f in files
                       if f.endswith((".png", ".json", ".csv", ".pt")) and ".zarr" not in f)
        listing = f": {', '.join(shown[:8])}{' ...' if len(shown) > 8 else ''}" if shown else ""
        print(f"  {name + '/':<34} {size:8.1f} MB in {len(files)} files{listing}")
    print(f"demo finished in {seconds:.0f} s; open the PNGs under {out}/plots and {out}/eval")


def sea_ice_steps(args, out, cfg, log):
    """Sea ice: a synthetic upstream archive served on loopback -> download -> mask -> consolidate -> maps."""
    py = sys.executable
    first = dt.date(2024, 4, 1)
    last = first + dt.timedelta(days=args.days - 1)
    start, end = f"{first:%Y%m%d}", f"{last:%Y%m%d}"
    absent = first + dt.timedelta(days=min(5, args.days - 1))
    mirror = f"{out}/upstream"
    run([py, "generate_data.py", "sea_ice", "--out", mirror, "--start", start, "--end", end,
         "--size", args.size, "--absent", f"{absent:%Y%m%d}"], log)
    asi = f"{out}/asi"
    if os.path.exists(os.path.join(ROOT, "mirror_server.py")):
        from mirror_server import MirrorServer
        with MirrorServer(os.path.join(ROOT, mirror)) as server:
            print(f"\n(loopback mirror of the Bremen layout at {server.base_url})")
            run([py, "download.py", "--config", cfg, "--start_date", start, "--end_date", end, "-o", asi,
                 "--base_url", server.base_url], log)
    else:
        run([py, "download.py", "--start_date", start, "--end_date", end, "-o", asi], log)
    day = f"{first + dt.timedelta(days=min(7, args.days - 1)):%Y%m%d}"
    day_file = f"{asi}/asi-AMSR2-n3125-{day}-v5.4.nc"
    mask, consolidated = f"{out}/land_mask.nc", f"{out}/sea_ice_concentration.nc"
    run([py, "create_mask.py", "--config", cfg, "--source_dir", asi, "--start_date", start, "--end_date", end,
         "--output_file", mask, "--threshold", "0.85"], log)
    run([py, "consolidate_data.py", "--config", cfg, "--source_dir", asi, "--start_date", start,
         "--end_date", end, "--output_file", consolidated, "--land_mask_file", mask], log)
    run([py, "get_dims.py", "--source_dir", asi], log)
    plots = f"{out}/plots"
    n_y, n_x = generate_data.parse_shape(args.size)
    roi = [str(v) for v in (n_y * 5 // 8, n_y * 5 // 8 + n_y // 8, n_x * 3 // 8, n_x * 3 // 8 + n_x // 6)]
    run([py, "find_several_data_in_target_area.py", "--source_dir", asi, "--start_date", start,
         "--end_date", end, "--ymin", roi[0], "--ymax", roi[1], "--xmin", roi[2], "--xmax", roi[3],
         "--output_file", f"{plots}/roi.png"], log)
    run([py, "visualization.py", "--input_file", day_file, "--output_file", f"{plots}/sic_{day}.png"], log)
    run([py, "visualize_mask.py", "--input_file", mask, "--output_file", f"{plots}/land_mask.png"], log)
    # the first day: gaps in a run that touches the start of the range are left to the Gaussian stage
    run([py, "visualization_compare_between_full_sic.py", "--original_file", f"{asi}/asi-AMSR2-n3125-{start}-v5.4.nc",
         "--consolidated_file", consolidated, "--date", start,
         "--output_file", f"{plots}/interpolation_comparison_{start}.png"], log)
    # a day absent upstream, from the consolidated file: land, no data, and "MISSING" in the title
    run([py, "visualization.py", "--input_file", consolidated, "--date", f"{absent:%Y%m%d}",
         "--output_file", f"{plots}/consolidated_{absent:%Y%m%d}.png"], log)


def nowcasting_steps(out, cfg, log):
    """Nowcasting: synthetic raw cases -> zarr -> training -> evaluation -> a forecast file."""
    py = sys.executable
    run([py, "generate_data.py", "nowcast", "--out", f"{out}/raw_dataset", "--cases", "8",
         "--size", "96x96", "--steps", "60"], log)
    run([py, "preproc.py", "--config", cfg], log)
    if run([py, "training.py", "--config", cfg], log):
        run([py, "visualization.py", "--config", cfg, "--train_log", f"{out}/train_log.csv",
             "--output_file", f"{out}/plots/train_curves.png"], log)
        run([py, "evaluate.py", "--config", cfg, "--checkpoint", f"{out}/checkpoints/best.pt"], log)
        with open(os.path.join(ROOT, out, "processed_data", "stats.json")) as fh:
            test_case = json.load(fh)["split"]["test"][0]
        t0 = middle_forecast_time(os.path.join(ROOT, out, "processed_data", "test", f"{test_case}.zarr"),
                                  config.load_params(os.path.join(ROOT, cfg)))
        run([py, "evaluate.py", "--config", cfg, "--checkpoint", f"{out}/checkpoints/best.pt",
             "--predict", f"{out}/raw_dataset/{test_case}", "--t0", t0,
             "--output", f"{out}/forecasts/{test_case}_{t0}.nc"], log)


def pretraining_steps(out, cfg, log):
    """Seed 004: masked pretraining of spark_unet on every frame, then fine-tuning from it."""
    py = sys.executable
    finetune = demo_params(out, "params_finetune.json", "finetune")
    if run([py, "pretrain.py", "--config", cfg, "--mask", "0.5", "--exp_name", "spark_pretrain"], log):
        run([py, "training.py", "--config", finetune, "--model", "spark_unet", "--init_weight",
             f"{out}/checkpoints/spark_pretrain/best.pt", "--freeze", "no", "--epochs", "2", "--steps_per_epoch", "10"],
            log)


def downscaling_steps(out, cfg, log):
    """Downscaling (seed 003): LR-HR pairs from generated rain, SR-CNN without / with the softmax layer."""
    py = sys.executable
    run([py, "make_downscaling_data.py", "--config", cfg, "--source", "generated", "--factor", "4"], log)
    run([py, "downscaling.py", "--config", cfg, "--experiments", "E3,E4", "--steps_per_epoch", "8",
         "--experiment_budget", "5"], log)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    parser.add_argument("--days", type=int, default=30, help="days of sea-ice data (default: 30, April 2024)")
    parser.add_argument("--size", default="3584x2432",
                        help="sea-ice grid ROWSxCOLS on the n3125 extent (default: the full 3584x2432 n3125 grid; "
                             "896x608 for a quick run)")
    args = parser.parse_args(argv)
    start_time = time.time()
    out, log = args.out.rstrip("/"), []
    os.makedirs(os.path.join(ROOT, out), exist_ok=True)
    cfg = demo_params(out)

    sea_ice_steps(args, out, cfg, log)
    nowcasting_steps(out, cfg, log)
    pretraining_steps(out, cfg, log)
    downscaling_steps(out, cfg, log)
    summarize(out, log, time.time() - start_time)
    return 0


if __name__ == "__main__":
    config.run_main(main)
