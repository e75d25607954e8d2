"""Downscaling benchmark on the real radar events: 4x, constrained vs unconstrained, per CPU budget.

    python bench/bench_downscaling.py [--budget 600] [--ids E3,E4,E5,E6,E8,E10] [--out outputs/bench_downscaling]

HR = 128 x 128 crops of the rain rate of ../shared/data/radar (train KNMI + BoM, validation FMI
2017-05-09, test FMI 2016-09-28, never used to choose settings), LR = their 4 x 4 block means
(make_downscaling_data.py). Each experiment (ids of downscaling.py --experiments: E3/E4 SR-CNN
none/softmax, E5/E6 ConvGRU none/softmax, E8/E10 SR-GAN none/softmax; add E7, E9 for the soft
constraint) trains for --budget CPU seconds (process time, all threads) in epochs of 32 steps of 8
crops, is evaluated with its best checkpoint (validation loss) on the whole test event, and is
compared with bicubic and nearest interpolation. Printed: scores, train samples/s (wall) and CPU s
per training sample, and the checks of issue 13:
  - hard constraints: max relative mass violation <= 1e-5 on every test LR pixel; softmax: no
    negative pixel;
  - SR-CNN + softmax (E4) better than bicubic in RMSE and SSIM.
Runs on CUDA when present (downscaling.py picks it), on the CPU otherwise. Skips when ../shared is
absent. Record the output in bench/RESULTS.md.
"""
import argparse
import csv
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import config  # noqa: E402
import downscaling  # noqa: E402

RADAR = os.path.join(os.path.dirname(ROOT), "shared", "data", "radar")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=600.0, help="CPU seconds of training per model (default: 600)")
    parser.add_argument("--ids", default="E3,E4,E5,E6,E8,E10", help="experiments (default: E3,E4,E5,E6,E8,E10)")
    parser.add_argument("--out", default="outputs/bench_downscaling", help="output folder (default: outputs/bench_downscaling)")
    parser.add_argument("--data_dir", default="data/downscaling", help="LR-HR stores, made when missing (default: data/downscaling)")
    args = parser.parse_args()
    if not os.path.isdir(RADAR):
        print(f"skipped: {RADAR} not found (the real events ship with the project's shared data only)")
        return
    out = os.path.join(ROOT, args.out)
    params = config.load_params(os.path.join(ROOT, "params.json"))
    params["downscaling"].update(radar_dir=RADAR, data_dir=os.path.join(ROOT, args.data_dir), outputs=out,
                                 experiment_budget=args.budget, epochs=10 ** 6)
    os.makedirs(out, exist_ok=True)
    cfg = os.path.join(out, "params.json")
    with open(cfg, "w") as fh:
        json.dump(config.validate(params), fh, indent=1)
    started = time.time()
    downscaling.main(["--config", cfg, "--experiments", args.ids])
    with open(os.path.join(out, "experiments.csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    print(f"\nbench_downscaling: {args.ids} with {args.budget:g} CPU s each, {(time.time() - started) / 60:.1f} min wall")
    report(rows, downscaling.EXPERIMENT_STEPS * params["downscaling"]["batch_size"])


def report(rows, samples_per_epoch):
    """Print the table and the checks of issue 13 from the rows of experiments.csv."""
    print(f"{'run':<26}{'epochs':>7}{'CPU s':>8}{'samples/s':>10}{'CPU s/sample':>13}{'RMSE':>8}{'SSIM':>8}"
          f"{'max rel mass':>13}{'neg num':>9}")
    step = samples_per_epoch
    for r in rows:
        trained = float(r["epochs"]) * step if r["epochs"] else 0
        cpu = float(r["cpu_s"]) if r["cpu_s"] else None
        speed = float(r["samples_per_s"]) if r["samples_per_s"] else None
        print(f"{r['run']:<26}{r['epochs'] or '':>7}{'' if cpu is None else f'{cpu:.0f}':>8}"
              f"{'' if speed is None else f'{speed:.1f}':>10}{f'{cpu / trained:.3f}' if trained else '':>13}"
              f"{float(r['rmse']):8.4f}{float(r['ssim']):8.4f}{float(r['max_rel_mass_violation']):13.2e}"
              f"{int(float(r['neg_num'])):9d}")
    by_run = {r["id"] or r["run"]: r for r in rows}
    for r in rows:
        if r["constraints"] in ("add", "mult", "softmax", "scadd") and r["model"] != "flowconvgru":
            ok = float(r["max_rel_mass_violation"]) <= 1e-5 and (r["constraints"] != "softmax" or float(r["neg_num"]) == 0)
            print(f"check {r['id']} {r['constraints']}: max relative mass violation {float(r['max_rel_mass_violation']):.2e}"
                  f" <= 1e-5{', no negative pixel' if r['constraints'] == 'softmax' else ''}: {'yes' if ok else 'NO'}")
    if "E4" in by_run and "rr4 bicubic" in by_run:
        e4, bicubic = by_run["E4"], by_run["rr4 bicubic"]
        better = float(e4["rmse"]) < float(bicubic["rmse"]) and float(e4["ssim"]) > float(bicubic["ssim"])
        print(f"check E4 (SR-CNN softmax) vs bicubic: RMSE {float(e4['rmse']):.4f} vs {float(bicubic['rmse']):.4f}, "
              f"SSIM {float(e4['ssim']):.4f} vs {float(bicubic['ssim']):.4f}: {'better in both' if better else 'NOT better in both'}")


if __name__ == "__main__":
    main()
