"""Real-data check: train the default model on two real radar events, test on the third.

    python bench/real_data.py [--minutes 10] [--out outputs/real] [--test fmi-20160928]

Events from ../shared/data/radar (pysteps example data: KNMI, BoM, FMI; CC BY 4.0 where
stated there). The two training events are each cut in time: the first 75 % of the frames
train, the last 25 % validate (model selection never sees the test event). The held-out
event is scored in full by evaluate.py against persistence and optical-flow extrapolation.
Forecast: 6 inputs (30 min) -> 12 frames, leads 5 .. 60 min (lead_steps 1, output_steps 12),
radar rain rate only. The BoM event (10-minute scans) is placed on the 5-minute axis and
interpolated in time between its scans (preproc.py's rule for a coarser source).

Training runs for a fixed wall-clock budget (--minutes, CPU); the table printed at the end
is the seed-004-style table (CSI/POD/FAR/HSS at 1 mm/h averaged over leads) plus CSI and
MSE per lead; record it in bench/RESULTS.md.
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

RADAR = os.path.join(os.path.dirname(ROOT), "shared", "data", "radar")


def write_cases(out, test_event, train_fraction=0.75):
    """Raw cases: <event>-train / <event>-val for the training events, the test event whole."""
    split = {"train": [], "val": [], "test": []}
    for name in sorted(os.listdir(RADAR)):
        if not name.endswith(".npz"):
            continue
        event = name[:-4]
        with np.load(os.path.join(RADAR, name)) as z:
            rain, times = z["rain_rate"], z["time"]
        parts = [(event, slice(None), "test")] if event == test_event else \
            [(f"{event}-train", slice(0, int(len(times) * train_fraction)), "train"),
             (f"{event}-val", slice(int(len(times) * train_fraction), None), "val")]
        for case, part, which in parts:
            folder = os.path.join(out, case, "radar")
            os.makedirs(folder, exist_ok=True)
            for frame, stamp in zip(rain[part], times[part]):
                path = os.path.join(folder, f"{stamp}.npy")
                if not os.path.exists(path):
                    np.save(path, frame.astype(np.float32))
            split[which].append(case)
    if not split["test"]:
        raise SystemExit(f"--test {test_event}: no such event in {RADAR}")
    return split


def run(cmd):
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget, minutes (default: 10)")
    parser.add_argument("--out", default="outputs/real", help="output folder (default: outputs/real)")
    parser.add_argument("--test", default="fmi-20160928", help="held-out event (default: fmi-20160928)")
    parser.add_argument("--steps_per_epoch", type=int, default=25, help="training steps per epoch (default: 25)")
    args = parser.parse_args()
    if not os.path.isdir(RADAR):
        print(f"skipped: {RADAR} not found (the real events ship with the project's shared data only)")
        return
    out = os.path.join(ROOT, args.out)
    split = write_cases(os.path.join(out, "raw"), args.test)
    params = config.load_params(os.path.join(ROOT, "params.json"))
    params["paths"].update(raw_dataset=f"{out}/raw", processed_data=f"{out}/processed",
                           checkpoints=f"{out}/checkpoints", outputs=out)
    params["data"].update(inputs={"radar": ["rain_rate"]}, target={"source": "radar", "channel": "rain_rate"},
                          split={**split, "seed": 0}, input_steps=6, lead_steps=1, output_steps=12,
                          patch_size=128)
    params["training"].update(steps_per_epoch=args.steps_per_epoch, val_steps=10, batch_size=4, num_workers=1)
    cfg = os.path.join(out, "params.json")
    with open(cfg, "w") as fh:
        json.dump(config.validate(params), fh, indent=1)
    py = sys.executable
    run([py, "preproc.py", "--config", cfg])
    # a fixed wall-clock budget: measure one epoch, then run as many as fit
    start = time.time()
    run([py, "training.py", "--config", cfg, "--epochs", "1", "--skip_test"])
    per_epoch = time.time() - start
    epochs = max(1, int(args.minutes * 60 / per_epoch))
    if epochs > 1:
        run([py, "training.py", "--config", cfg, "--epochs", str(epochs), "--resume", "--skip_test"])
    trained = time.time() - start
    run([py, "evaluate.py", "--config", cfg, "--checkpoint", f"{out}/checkpoints/best.pt"])
    with open(os.path.join(out, "eval", "test", "metrics.json")) as fh:
        report = json.load(fh)
    print(f"\nreal-data check: trained {epochs} epochs x {args.steps_per_epoch} steps in {trained / 60:.1f} min; "
          f"test event {args.test}, {report['n_windows']} windows")
    leads = report["lead_minutes"]
    print("CSI at 1 mm/h per lead (min): " + " ".join(f"{m:>6}" for m in leads))
    for method, scores in report["methods"].items():
        print(f"  {method:<24}" + " ".join(f"{v if v is not None else float('nan'):6.3f}" for v in scores["csi"]["1.0"]))
    print("MSE (mm/h)^2 per lead:")
    for method, scores in report["methods"].items():
        print(f"  {method:<24}" + " ".join(f"{v:6.3f}" for v in scores["mse"]))


if __name__ == "__main__":
    main()
