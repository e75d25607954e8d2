"""`make demo`: the whole pipeline on data the project generates itself, under outputs/demo/.

Each step is the shell command a user would type (printed before it runs), so
this file doubles as a worked example of the README. Sea ice: synthetic
Bremen days served by a loopback mirror -> download.py -> create_mask.py ->
consolidate_data.py -> inspection tools and maps. Nowcasting: synthetic raw
cases -> preproc.py -> training.py -> evaluate.py -> plots. A step whose script
does not exist yet is skipped and said so. Ends with a summary of what it wrote.

    python demo.py [--out outputs/demo] [--days 20] [--size 896x608]
"""
import argparse
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


def demo_params(out):
    """params.json for the demo: the repository's file with paths under `out` and a short training."""
    params = config.load_params(os.path.join(ROOT, "params.json"))
    params["paths"].update(raw_dataset=f"{out}/raw_dataset", processed_data=f"{out}/processed_data",
                           sea_ice_data=f"{out}/asi", checkpoints=f"{out}/checkpoints", outputs=out)
    params["data"].update(patch_size=64, lead_steps=6, input_steps=6, output_steps=1)
    params["training"].update(epochs=3, steps_per_epoch=20, val_steps=5, batch_size=4, num_workers=0)
    path = os.path.join(ROOT, out, "params.json")
    with open(path, "w") as fh:
        json.dump(config.validate(params), fh, indent=2)
    return os.path.relpath(path, ROOT)


def summarize(out, log, seconds):
    print("\n== demo summary")
    for shown, status, took in log:
        print(f"  {status:>8} {took:6.1f}s  {shown[:110]}")
    print(f"\nwrote under {out}/:")
    for folder, dirs, files in sorted(os.walk(os.path.join(ROOT, out))):
        dirs[:] = sorted(d for d in dirs if not d.endswith(".zarr"))
        rel = os.path.relpath(folder, ROOT)
        stores = [d for d in os.listdir(folder) if d.endswith(".zarr")]
        shown = [f for f in sorted(files) if not f.endswith(".nc") or "asi-AMSR2" not in f]
        n_days = len(files) - len(shown)
        if shown or stores or n_days:
            extra = f" + {n_days} daily ASI files" if n_days else ""
            extra += f" + {len(stores)} zarr stores" if stores else ""
            print(f"  {rel}/: {', '.join(shown[:8])}{' ...' if len(shown) > 8 else ''}{extra}")
    print(f"demo finished in {seconds:.0f} s")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    parser.add_argument("--days", type=int, default=20, help="days of sea-ice data (default: 20)")
    parser.add_argument("--size", default="896x608",
                        help="sea-ice grid ROWSxCOLS on the n3125 extent (default: 896x608, 12.5 km)")
    args = parser.parse_args(argv)
    start_time = time.time()
    out, py, log = args.out.rstrip("/"), sys.executable, []
    os.makedirs(os.path.join(ROOT, out), exist_ok=True)
    cfg = demo_params(out)

    # ---- sea ice: a synthetic upstream archive, served on loopback like the Bremen server
    import datetime as dt
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
    run([py, "find_several_data_in_target_area.py", "--source_dir", asi, "--start_date", start,
         "--end_date", end, "--ymin", "300", "--ymax", "400", "--xmin", "200", "--xmax", "300",
         "--output_file", f"{plots}/roi.png"], log)
    run([py, "visualization.py", "--input_file", day_file, "--output_file", f"{plots}/sic_{day}.png"], log)
    run([py, "visualize_mask.py", "--input_file", mask, "--output_file", f"{plots}/land_mask.png"], log)
    run([py, "visualization_compare_between_full_sic.py", "--original_file", day_file,
         "--consolidated_file", consolidated, "--date", day,
         "--output_file", f"{plots}/interpolation_comparison_{day}.png"], log)

    # ---- nowcasting: synthetic raw cases -> zarr -> training -> evaluation
    run([py, "generate_data.py", "nowcast", "--out", f"{out}/raw_dataset", "--cases", "8",
         "--size", "96x96", "--steps", "60"], log)
    run([py, "preproc.py", "--config", cfg], log)
    if run([py, "training.py", "--config", cfg], log):
        run([py, "evaluate.py", "--config", cfg, "--checkpoint", f"{out}/checkpoints/best.pt"], log)
    summarize(out, log, time.time() - start_time)
    return 0


if __name__ == "__main__":
    config.run_main(main)
