"""Seed 004's comparison on the real radar events: masked pretraining (SpaT-SparK) against training
from scratch, SmaAt-UNet, the ConvLSTM U-Net and the two baselines, in the seed's table.

    python bench/pretrain_compare.py [--finetune_cpu_minutes 15] [--pretrain_cpu_minutes 20]
                                     [--out outputs/pretrain_compare] [--rows smaat scratch ...] [--fresh]

Data: the four events of ../shared/data/radar (pysteps example data: KNMI 2010-08-26, BoM
2020-10-31, FMI 2017-05-09 and FMI 2016-09-28; CC BY 4.0 where stated there), cut as
bench/real_data.py does: each training event's first part trains, its last quarter validates; the
held-out event fmi-20160928 is scored once at the end and never used for training, validation or
choosing any setting. Protocol (`--protocol seed004` without its rain filter): 12 radar frames
(1 h) -> the frame 30 min ahead, 128 x 128 training crops, scores at 0.5 mm/h (and 1 mm/h) on the
full frames of every valid window of the held-out event. The NL-50 filter (>= 50 % of the target
pixels with rain) is off: no window of the held-out event passes it (its rainy fraction is 0.41-0.42;
see bench/RESULTS.md), nor of FMI 2017-05-09 or BoM.

Steps (each skipped when its output exists, unless --fresh):
1. preproc.py of the events (radar rain rate only, no motion fields).
2. pretrain.py twice, spatial and spatio-temporal masks, on every frame of the training parts
   (held-out loss on the validation parts); the number of steps is set from a short probe so that
   each pretraining takes about --pretrain_cpu_minutes CPU minutes (cosine schedule to its end), or
   --pretrain_steps steps (reproducible: the probe's timing, and so the steps, vary by about 10 %).
3. training.py for the learned rows, each within --finetune_cpu_minutes CPU minutes (all threads
   and loader workers, measured by the kernel): epoch 1, then --resume with training.cpu_minutes =
   the budget - 2 x epoch 1's CPU (a run stops after the epoch that passes its budget, and an epoch
   costs less than epoch 1 with its start-up). Rows: SmaAt-UNet, spark_unet from scratch,
   spark_unet fine-tuned from each pretraining (--init_weight, --freeze no), ConvLSTM U-Net. Same
   crops, batch size, learning rate, loss and seed for all.
4. evaluate.py of every row on the held-out event, persistence and extrapolation once.
Writes <out>/table.csv and <out>/table.md (seed 004's columns and order; its HSS is hss_half), the
reconstruction panels <out>/pre_*/reconstruction.png, and prints the table with the CPU minutes
and training samples/s of every row. Record it in bench/RESULTS.md.
"""
import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import config  # noqa: E402
from real_data import RADAR, TEST_EVENT, plan_cases, write_cases  # noqa: E402

SMALL = {"smaat_unet": {"base_channels": 32}, "spark_unet": {"base_width": 32, "decoder_width": 256}}
ROWS = {  # name: (label, model.name, pretraining to start from or None)
    "smaat": ("SmaAt-UNet", "smaat_unet", None),
    "scratch": ("spark_unet, from scratch", "spark_unet", None),
    "spatial": ("spark_unet, pretrained (spatial mask)", "spark_unet", "spatial"),
    "spatiotemporal": ("spark_unet, pretrained (spatio-temporal mask)", "spark_unet", "spatiotemporal"),
    "convlstm": ("ConvLSTM U-Net", "convlstm_unet", None),
}
COLUMNS = ("pmse", "accuracy", "precision", "recall", "f1", "csi", "far", "hss_half", "hss")
HEADERS = ("pMSE", "Accuracy", "Precision", "Recall", "F1", "CSI", "FAR", "HSS (seed: half)", "HSS (standard)")


def cpu_of_children():
    """CPU seconds (user + system) of every finished child process and its descendants so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(cmd):
    """Run a pipeline command from the repository root; returns its CPU seconds (with its workers)."""
    print("$ " + " ".join(cmd), flush=True)
    before = cpu_of_children()
    subprocess.run(cmd, cwd=ROOT, check=True)
    return cpu_of_children() - before


def write_params(out, args):
    """<out>/params.json: radar only, seed 004's windows, the CPU-sized models, no rain filter."""
    cases, split = plan_cases(args.radar)
    write_cases(os.path.join(out, "raw"), cases, args.radar)
    params = config.load_params(os.path.join(ROOT, "params.json"))
    params["paths"].update(raw_dataset=f"{out}/raw", processed_data=f"{out}/processed",
                           checkpoints=f"{out}/checkpoints", outputs=out)
    for key, value in config.PROTOCOLS["seed004"][0].items():
        config.set_dotted(params, key, value)
    params["data"].update(inputs={"radar": ["rain_rate"]}, target={"source": "radar", "channel": "rain_rate"},
                          split={**split, "seed": 0}, patch_size=128, motion=False, rain_filter_fraction=0.0)
    params["evaluation"].update(thresholds=[0.5, 1.0], methods=["model", "persistence", "extrapolation"])
    params["training"].update(epochs=10000, steps_per_epoch=args.steps_per_epoch, val_steps=10, batch_size=8,
                              num_workers=1)
    for name, options in SMALL.items():
        params["model"][name].update(options)
    params["pretraining"].update(bs=8, mask=0.3, base_lr=args.pretrain_base_lr, weight_decay=0.05, val_steps=10)
    path = os.path.join(out, "params.json")
    with open(path, "w") as fh:
        json.dump(config.validate(params), fh, indent=1)
    return path


def read_log(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def pretrain(cfg, out, mode, args, py):
    """Pretraining with `mode` masks for about --pretrain_cpu_minutes; returns its summary dict."""
    name = f"pre_{mode}"
    best = os.path.join(out, "checkpoints", name, "best.pt")
    if args.fresh or not os.path.isfile(best):
        steps, per_step = args.pretrain_steps, None
        if not steps:  # two probe epochs: the first carries the start-up (loader, first chunks), the second a step
            run([py, "pretrain.py", "--config", cfg, "--mask_mode", mode, "--exp_name", f"probe_{mode}",
                 "--ep", "2", "--steps_per_epoch", "16", "--wp_ep", "0", "--val_steps", "1"])
            per_step = float(read_log(os.path.join(out, f"probe_{mode}", "pretrain_log.csv"))[1]["cpu_seconds"]) / 16
            steps = max(10, int(0.85 * args.pretrain_cpu_minutes * 60 / per_step))  # 15 %: validation, start, panels
        per_epoch = max(5, steps // 10)
        cpu = run([py, "pretrain.py", "--config", cfg, "--mask_mode", mode, "--exp_name", name,
                   "--ep", str(max(1, steps // per_epoch)), "--steps_per_epoch", str(per_epoch), "--wp_ep", "1"])
        with open(os.path.join(out, name, "cpu.json"), "w") as fh:
            json.dump({"cpu_seconds": cpu, "probe_cpu_seconds_per_step": per_step}, fh)
    log = read_log(os.path.join(out, name, "pretrain_log.csv"))
    with open(os.path.join(out, name, "cpu.json")) as fh:
        cpu = json.load(fh)["cpu_seconds"]
    best_row = min(log, key=lambda r: float(r["val_loss"]))
    return {"checkpoint": best, "cpu_minutes": cpu / 60, "epochs": len(log), "held_out": float(best_row["val_loss"]),
            "constant_level": float(best_row["val_constant_level"]),
            "interpolation_level": float(best_row["val_interpolation_level"]), "first": float(log[0]["val_loss"]),
            "samples_per_s": float(np.median([float(r["samples_per_s"]) for r in log])),
            "panels": os.path.join(out, name, "reconstruction.png")}


def finetune(cfg, out, row, pretrained, args, py):
    """Train one learned row within the budget, then score it on the held-out event."""
    label, model_name, start = ROWS[row]
    run_dir = os.path.join(out, row)
    done = os.path.join(run_dir, "eval", "test", "metrics.json")
    if args.fresh or not os.path.isfile(done):
        flags = ["--config", row_params(cfg, run_dir), "--skip_test", "--model", model_name]
        if start:
            flags += ["--init_weight", pretrained[start]["checkpoint"], "--freeze", "no"]
        # epoch 1, then the rest with a budget that the epoch overshooting it still fits in
        first = run([py, "training.py", *flags, "--epochs", "1", "--cpu_minutes", "0"])
        rest = (60 * args.finetune_cpu_minutes - 2 * first) / 60
        cpu = first + (run([py, "training.py", *flags, "--resume", "--cpu_minutes", f"{rest:.3f}"]) if rest > 0 else 0)
        with open(os.path.join(run_dir, "cpu.json"), "w") as fh:
            json.dump({"cpu_seconds": cpu, "first_epoch_cpu_seconds": first}, fh)
        run([py, "evaluate.py", "--config", flags[1], "--checkpoint", f"{run_dir}/checkpoints/best.pt",
             "--methods", "model", "--batch_size", "1"])
    log = read_log(os.path.join(run_dir, "train_log.csv"))
    with open(os.path.join(run_dir, "cpu.json")) as fh:
        cpu = json.load(fh)["cpu_seconds"]
    with open(done) as fh:
        report = json.load(fh)
    return {"label": label, "scores": report["methods"]["model"], "cpu_minutes": cpu / 60, "epochs": len(log),
            "samples_per_s": float(np.median([float(r["samples_per_s"]) for r in log])), "report": report}


def row_params(cfg, run_dir):
    """The comparison's params.json with this row's checkpoints and outputs under run_dir."""
    params = config.load_params(cfg)
    params["paths"].update(checkpoints=f"{run_dir}/checkpoints", outputs=run_dir)
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, "params.json")
    with open(path, "w") as fh:
        json.dump(params, fh, indent=1)
    return path


def baselines(cfg, out, any_checkpoint, args, py):
    """Persistence and extrapolation on the held-out event (evaluate.py needs a checkpoint for the data
    settings; its model is not scored)."""
    run_dir = os.path.join(out, "baselines")
    done = os.path.join(run_dir, "eval", "test", "metrics.json")
    if args.fresh or not os.path.isfile(done):
        run([py, "evaluate.py", "--config", row_params(cfg, run_dir), "--checkpoint", any_checkpoint,
             "--methods", "persistence,extrapolation"])
    with open(done) as fh:
        report = json.load(fh)
    return [{"label": m, "scores": report["methods"][m], "cpu_minutes": None, "epochs": None,
             "samples_per_s": None, "report": report} for m in ("persistence", "extrapolation")]


# --------------------------------------------------------------------------- table
def table_rows(results, threshold="0.5"):
    rows = []
    for r in results:
        values = {c: r["scores"][c] if c == "pmse" else r["scores"]["pod" if c == "recall" else c][threshold]
                  for c in COLUMNS}
        row = {"model": r["label"], **{c: float(np.mean([v for v in values[c] if v is not None])) for c in COLUMNS},
               "csi_1mm": float(np.mean(r["scores"]["csi"]["1.0"])),
               "cpu_minutes": r["cpu_minutes"], "epochs": r["epochs"], "train_samples_per_s": r["samples_per_s"]}
        rows.append(row)
    return rows


def write_tables(rows, out, header_note):
    keys = ["model", *COLUMNS, "csi_1mm", "cpu_minutes", "epochs", "train_samples_per_s"]
    with open(os.path.join(out, "table.csv"), "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()} for row in rows)

    def cell(v, digits=3):
        return "" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))
    lines = [header_note, "",
             "| Model | " + " | ".join(HEADERS) + " | CSI 1 mm/h | fine-tuning CPU min | epochs | train samples/s |",
             "|---" * (len(HEADERS) + 5) + "|"]
    for row in rows:
        lines.append(f"| {row['model']} | {cell(row['pmse'], 4)} | " + " | ".join(cell(row[c]) for c in COLUMNS[1:])
                     + f" | {cell(row['csi_1mm'])} | {cell(row['cpu_minutes'], 1)} | {cell(row['epochs'])} | "
                     f"{cell(row['train_samples_per_s'], 2)} |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "table.md"), "w") as fh:
        fh.write(text)
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--finetune_cpu_minutes", type=float, default=15.0,
                        help="training budget of every learned row, CPU minutes of all threads (default: 15)")
    parser.add_argument("--pretrain_cpu_minutes", type=float, default=20.0,
                        help="budget of each pretraining, CPU minutes (default: 20)")
    parser.add_argument("--pretrain_steps", type=int, default=0,
                        help="steps of each pretraining instead of the CPU budget (a probe's timing varies by about "
                             "10 %%, and so would the steps; run 3 of bench/RESULTS.md: 890 spatial, 980 "
                             "spatio-temporal; default: 0 = from the budget)")
    parser.add_argument("--pretrain_base_lr", type=float, default=0.032,
                        help="pretrain.py --base_lr (peak lr = base_lr x 8 / 256 = 1e-3 at the default, "
                             "training.lr of the fine-tuning; default: 0.032)")
    parser.add_argument("--steps_per_epoch", type=int, default=10, help="training steps per epoch (default: 10)")
    parser.add_argument("--out", default="outputs/pretrain_compare", help="output folder")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS), help="learned rows to run")
    parser.add_argument("--fresh", action="store_true", help="redo every step, even those whose outputs exist")
    parser.add_argument("--radar", default=RADAR, metavar="DIR",
                        help="folder of the events' .npz files (default: ../shared/data/radar)")
    args = parser.parse_args(argv)
    if args.pretrain_steps < 0:
        raise config.UserError(f"--pretrain_steps: expected 0 (from the budget) or a number of steps, got {args.pretrain_steps}")
    if not os.path.isdir(args.radar):
        if args.radar != RADAR:  # a folder the user named
            raise config.UserError(f"--radar {args.radar}: not a folder (expected the events' .npz files)")
        print(f"skipped: {args.radar} not found (the real events ship with the project's shared data only)")
        return
    out, py, started = os.path.join(ROOT, args.out), sys.executable, time.time()
    cfg = write_params(out, args)
    if args.fresh or not os.path.isfile(os.path.join(out, "processed", "stats.json")):
        run([py, "preproc.py", "--config", cfg])
    modes = [m for m in ("spatial", "spatiotemporal") if m in args.rows]
    pretrained = {mode: pretrain(cfg, out, mode, args, py) for mode in modes}
    results = [finetune(cfg, out, row, pretrained, args, py) for row in args.rows]
    results += baselines(cfg, out, os.path.join(out, args.rows[0], "checkpoints", "best.pt"), args, py)
    note = (f"Held-out event {TEST_EVENT}, {results[0]['report']['n_windows']} windows, 12 frames -> +30 min, "
            f"scores at 0.5 mm/h (CSI also at 1 mm/h); fine-tuning budget {args.finetune_cpu_minutes:g} CPU min per row.")
    print("\n" + write_tables(table_rows(results), out, note))
    for mode, p in pretrained.items():
        print(f"pretraining {mode}: {p['epochs']} epochs, {p['cpu_minutes']:.1f} CPU min, {p['samples_per_s']:.2f} "
              f"samples/s; held-out masked loss {p['first']:.3f} after epoch 1 -> {p['held_out']:.3f} (constant "
              f"level {p['constant_level']:.3f}, temporal interpolation {p['interpolation_level']:.3f}); "
              f"panels {p['panels']}")
    print(f"pretrain_compare: {(time.time() - started) / 60:.0f} wall min -> {out}/table.csv, {out}/table.md")


if __name__ == "__main__":
    config.run_main(main)
