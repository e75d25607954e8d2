"""Real-data check: train on three real radar events, score on the held-out fourth against
persistence and optical-flow extrapolation.

    python bench/real_data.py [--cpu_minutes 20] [--name default] [--split test] [--radar DIR]
                              [--set model.convlstm_unet.lagrangian=false ...]

Events from ../shared/data/radar, or --radar (pysteps example data: KNMI 2010-08-26, BoM 2020-10-31,
FMI 2017-05-09 and FMI 2016-09-28; CC BY 4.0 where stated there). The three training events are
each cut in time: the first part trains, the last quarter (at least 18 frames, one forecast
window) validates; the held-out event fmi-20160928 is never used for training, validation or
choosing settings: choose settings with `--split val`, then score the choice once on `--split test`.
Forecast: 6 inputs (30 min) -> 12 frames, leads 5 .. 60 min (lead_steps 1, output_steps 12),
radar rain rate only; the model and training settings are those of params.json, changed by --set.
The BoM event (10-minute scans) is placed on the 5-minute axis and interpolated in time.

Preprocessing (with the motion field of every step, on every core) is done once into <out>/processed and reused;
each run writes <out>/<name>/ (checkpoints, train_log.csv, eval/<split>/, per-lead plots, forecast
panels). Training stops at --cpu_minutes of CPU time (training.cpu_minutes) or by early stopping.
The tables printed at the end (seed 004's table at 1 mm/h, and CSI at 1 and 5 mm/h, MSE and FAR per
lead) go to bench/RESULTS.md.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import config  # noqa: E402
from atomic import atomic_path  # noqa: E402

RADAR = os.path.join(os.path.dirname(ROOT), "shared", "data", "radar")
TEST_EVENT = "fmi-20160928"
WINDOW = 18  # 6 input + 12 target frames


def plan_cases(radar=RADAR):
    """[(case, event file, time slice)] of the events in folder `radar` (raw cases <event>-train /
    <event>-val of the training events, the test event whole) and the split {"train", "val", "test":
    [case]}; reads only the events' times."""
    split, cases = {"train": [], "val": [], "test": []}, []
    for name in sorted(os.listdir(radar)):
        if not name.endswith(".npz"):
            continue
        event = name[:-4]
        with np.load(os.path.join(radar, name)) as z:
            n_times = len(z["time"])
        n_val = max(n_times // 4, WINDOW)
        parts = [(event, slice(None), "test")] if event == TEST_EVENT else \
            [(f"{event}-train", slice(0, n_times - n_val), "train"),
             (f"{event}-val", slice(n_times - n_val, None), "val")]
        for case, part, which in parts:
            cases.append((case, name, part))
            split[which].append(case)
    return cases, split


def write_cases(out, cases, radar=RADAR):
    """The frames of every planned case as <out>/<case>/radar/<YYYYmmddHHMM>.npy (files already there are kept)."""
    for case, name, part in cases:
        with np.load(os.path.join(radar, name)) as z:
            rain, times = z["rain_rate"][part], z["time"][part]
        folder = config.ensure_folder(os.path.join(out, case, "radar"), "--out")
        for frame, stamp in zip(rain, times):
            path = os.path.join(folder, f"{stamp}.npy")
            if not os.path.exists(path):
                with atomic_path(path, suffix=".tmp.npy") as tmp:  # np.save adds .npy to other names
                    np.save(tmp, frame.astype(np.float32))


def parse_set(items):
    """--set KEY=VALUE (VALUE as JSON, else a string) -> {dotted key: value}."""
    out = {}
    for item in items:
        key, equals, text = item.partition("=")
        if not equals or not key:
            raise config.UserError(f"--set {item!r}: expected KEY=VALUE, e.g. training.loss.name=mse")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


def make_params(out, run_dir, split, args):
    """The run's validated params: params.json with this benchmark's data and training settings and --set."""
    params = config.load_params(os.path.join(ROOT, "params.json"))
    params["paths"].update(raw_dataset=f"{out}/raw", processed_data=f"{out}/processed",
                           checkpoints=f"{run_dir}/checkpoints", outputs=run_dir)
    params["data"].update(inputs={"radar": ["rain_rate"]}, target={"source": "radar", "channel": "rain_rate"},
                          split={**split, "seed": 0}, input_steps=6, lead_steps=1, output_steps=12, patch_size=128)
    params["training"].update(epochs=1000, steps_per_epoch=args.steps_per_epoch, val_steps=20, batch_size=4,
                              num_workers=0, cpu_minutes=args.cpu_minutes)  # 0: the chunk cache stays warm
    for key, value in parse_set(args.set).items():
        config.set_dotted(params, key, value)
    try:
        return config.validate(params)
    except config.UserError as exc:
        raise config.UserError(f"--set: {exc}") from None


def write_params(run_dir, params):
    cfg = os.path.join(run_dir, "params.json")
    with atomic_path(cfg) as tmp, open(tmp, "w") as fh:
        json.dump(params, fh, indent=1)
    return cfg


def run(cmd):
    """Run a pipeline script; UserError when it fails (its own error line is printed above)."""
    print("$ " + " ".join(cmd), flush=True)
    code = subprocess.run(cmd, cwd=ROOT).returncode
    if code:
        raise config.UserError(f"{cmd[1]} stopped with exit status {code} (its message is above)")


def print_tables(report):
    leads = report["lead_minutes"]
    print(f"\n{report['split']} split, {report['n_windows']} windows; per lead (min): "
          + " ".join(f"{m:>6}" for m in leads) + "    mean")
    for title, score, key in (("CSI at 1 mm/h", "csi", "1.0"), ("CSI at 5 mm/h", "csi", "5.0"),
                              ("FAR at 1 mm/h", "far", "1.0"), ("MSE (mm/h)^2", "mse", None)):
        print(title)
        for method, scores in report["methods"].items():
            values = np.array([np.nan if v is None else v for v in (scores[score][key] if key else scores[score])])
            print(f"  {method:<14}" + " ".join(f"{v:6.3f}" for v in values) + f"  {np.nanmean(values):6.3f}")


def check_flags(args):
    """UserError for a bad flag value, before any work."""
    for flag, value, least in (("--cpu_minutes", args.cpu_minutes, 0), ("--steps_per_epoch", args.steps_per_epoch, 1),
                               ("--stride", args.stride, 1)):
        if not value >= least:  # NaN too
            raise config.UserError(f"{flag} {value}: expected a number >= {least}")
    if not args.name.strip() or os.sep in args.name or args.name in (".", ".."):
        raise config.UserError(f"--name {args.name!r}: expected a folder name without {os.sep!r}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu_minutes", type=float, default=20.0,
                        help="training budget, CPU minutes of all threads (default: 20, about 10 wall minutes "
                             "on 2 quiet cores)")
    parser.add_argument("--out", default="outputs/real", help="output folder (default: outputs/real)")
    parser.add_argument("--name", default="default", help="run name, a sub-folder of --out (default: default)")
    parser.add_argument("--split", default="test", choices=("val", "test"),
                        help="split scored at the end: val to choose settings, test once (default: test)")
    parser.add_argument("--steps_per_epoch", type=int, default=25, help="training steps per epoch (default: 25)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="params.json keys to change for this run, VALUE as JSON (else a string), e.g. "
                             "training.loss.name=mse (default: none)")
    parser.add_argument("--skip_training", action="store_true", help="score the run's existing best.pt")
    parser.add_argument("--stride", type=int, default=1, help="score every N-th window (default: 1, all)")
    parser.add_argument("--radar", default=RADAR, metavar="DIR",
                        help="folder of the events' .npz files (default: ../shared/data/radar)")
    args = parser.parse_args(argv)
    check_flags(args)
    if not os.path.isdir(args.radar):
        if args.radar != RADAR:  # a folder the user named
            raise config.UserError(f"--radar {args.radar}: not a folder (expected the events' .npz files)")
        print(f"skipped: {args.radar} not found (the real events ship with the project's shared data only)")
        return 0
    out = os.path.join(ROOT, args.out)
    run_dir = os.path.join(out, args.name)
    cases, split = plan_cases(args.radar)
    params = make_params(out, run_dir, split, args)
    config.ensure_folder(run_dir, "--out")
    best = f"{run_dir}/checkpoints/best.pt"
    if args.skip_training and not os.path.isfile(best):
        raise config.UserError(f"--skip_training: {best} not found (train this run first)")
    write_cases(os.path.join(out, "raw"), cases, args.radar)
    cfg = write_params(run_dir, params)
    py = sys.executable
    if not os.path.isfile(os.path.join(out, "processed", "stats.json")):
        run([py, "preproc.py", "--config", cfg, "--workers", "0"])
    started = time.time()
    if not args.skip_training:
        run([py, "training.py", "--config", cfg, "--skip_test"])
    trained = time.time() - started
    run([py, "evaluate.py", "--config", cfg, "--checkpoint", best, "--split", args.split,
         "--stride", str(args.stride)])
    with open(os.path.join(run_dir, "eval", args.split, "metrics.json")) as fh:
        report = json.load(fh)
    import plotting
    plot = plotting.plot_verification(report, "csi", os.path.join(run_dir, f"csi_per_lead_{args.split}.png"),
                                      title=f"{args.name}, {args.split} split", thresholds=(1.0, 5.0))
    print(f"\nreal-data run {args.name}: training {trained / 60:.1f} wall min; {args.set or 'params.json settings'}")
    print_tables(report)
    print(f"plots: {plot}, {run_dir}/eval/{args.split}/")
    return 0


if __name__ == "__main__":
    config.run_main(main)
