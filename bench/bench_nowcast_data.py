"""Benchmark of the nowcasting data path: preproc.py on the real radar events (without and with
the motion field), then patch loading (dataset.ZarrPatchDataset) against reading whole frames and
cropping in memory and against reading the arrays one after the other, and the CPU training step
rate of the default model for comparison.

    python bench/bench_nowcast_data.py [--out /tmp/bench_nowcast_data] [--batches 20] [--train-steps 3]

Real events from ../shared/data/radar (KNMI, BoM, two FMI; pysteps example data, CC BY 4.0 where
stated there); when absent, three generated 512 x 512 cases of 144 steps stand in (said so).
preproc.py runs as a child process (wall and CPU time, peak RSS of that process); loading uses
6 inputs -> 12 targets (lead_steps 1, output_steps 12), patch_size 128, batch 8, with the motion
field, radar rain rate only, all events in one split. Targets: at least 100 training samples/s
in one process (issue 11), and patch loading at least 5x the samples/s of a CPU training step of
the default model (convlstm_unet, params.json).
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import config  # noqa: E402

RADAR = os.path.join(os.path.dirname(ROOT), "shared", "data", "radar")


def write_raw(raw):
    """The three real events in the raw case layout (in this process, so the child's RSS is preproc's)."""
    if not os.path.isdir(RADAR):
        import generate_data
        generate_data.write_raw_cases(raw, n_cases=3, shape=(512, 512), n_steps=144, seed=1)
        for case in os.listdir(raw):  # radar only, as for the real events
            for source in ("nwp", "label"):
                shutil.rmtree(os.path.join(raw, case, source))
        return "generated (../shared/data/radar absent)"
    for name in sorted(os.listdir(RADAR)):
        if name.endswith(".npz"):
            with np.load(os.path.join(RADAR, name)) as z:
                frames, times = z["rain_rate"], z["time"]
            folder = os.path.join(raw, name[:-4], "radar")
            os.makedirs(folder)
            for frame, stamp in zip(frames, times):
                np.save(os.path.join(folder, f"{stamp}.npy"), frame)
    return "real radar events (KNMI, BoM, FMI)"


def folder_stats(folder):
    size, count = 0, 0
    for parent, _, names in os.walk(folder):
        for name in names:
            size += os.path.getsize(os.path.join(parent, name))
            count += 1
    return size, count


def bench_preproc(cfg, raw, out):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, os.path.join(ROOT, "preproc.py"), "--config", cfg],
                          capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"preproc.py failed: {done.stderr}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    raw_bytes, _ = folder_stats(raw)
    out_bytes, out_files = folder_stats(out)
    n_cases = len([d for d in os.listdir(raw)])
    return {"wall": wall, "cpu": cpu, "cases_per_s": n_cases / wall, "mb_per_s": raw_bytes / 1e6 / wall,
            "raw_mb": raw_bytes / 1e6, "out_mb": out_bytes / 1e6, "out_files": out_files,
            "peak_rss_mb": after.ru_maxrss / 1024, "summary": done.stdout.strip().splitlines()[-1]}


def make_one_by_one_dataset(base):
    """The same samples, the arrays of each read one after the other (as before read_together)."""
    import dataset

    class OneByOne(dataset.ZarrPatchDataset):
        def __getitem__(self, index):
            real, dataset.read_together = dataset.read_together, lambda reads: {
                name: array[selection] for name, (array, selection) in reads.items()}
            try:
                return super().__getitem__(index)
            finally:
                dataset.read_together = real

    return OneByOne(base.split_dir, base.params, train=True)


def make_whole_frame_dataset(base):
    """The same samples and crops, but each step read as a whole frame and cropped in memory."""
    import torch
    import dataset

    class WholeFrameDataset(dataset.ZarrPatchDataset):
        def __getitem__(self, index):
            store, start = self.sample_map[index]
            arrays = self._store(store)
            y0, x0, size_y, size_x = self.crop(index)
            inputs, targets = dataset.window_steps(start, self.data)
            rows, cols = slice(y0, y0 + size_y), slice(x0, x0 + size_x)
            x = arrays["inputs"][inputs][:, :, rows, cols]
            y = arrays["target"][targets][:, None, rows, cols]
            coverage = arrays["coverage"][targets][:, None, rows, cols]
            return {"x": torch.from_numpy(np.ascontiguousarray(x)), "y": torch.from_numpy(np.ascontiguousarray(y)),
                    "coverage": torch.from_numpy(np.ascontiguousarray(coverage)),
                    "time": torch.from_numpy(self.times[store][targets].copy()), "case": self.cases[store]}

    return WholeFrameDataset(base.split_dir, base.params, train=True)


def loader_rate(ds, workers, batches, batch_size, seed=0):
    """Samples per second over `batches` batches (after 2 warm-up batches), shuffled."""
    import torch
    from torch.utils.data import DataLoader
    import dataset
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                        collate_fn=dataset.pad_collate, generator=torch.Generator().manual_seed(seed))
    iterator = iter(loader)
    for _ in range(2):
        next(iterator)
    start = time.perf_counter()
    n = 0
    for _ in range(batches):
        n += len(next(iterator)["x"])
    rate = n / (time.perf_counter() - start)
    del iterator
    return rate


def train_step_rate(params, in_channels, batch_size, steps):
    """Samples per second of forward + backward + AdamW of the default model on random patches (CPU)."""
    import torch
    import model as model_module
    data = params["data"]
    net = model_module.build_model(params, in_channels)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.rand(batch_size, data["input_steps"], in_channels, data["patch_size"], data["patch_size"])
    y = torch.rand(batch_size, data["output_steps"], 1, data["patch_size"], data["patch_size"])

    def step():
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(net(x), y)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    return batch_size / seconds, seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="/tmp/bench_nowcast_data",
                        help="scratch folder, emptied first (default: /tmp/bench_nowcast_data)")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per loader (default: 20)")
    parser.add_argument("--train-steps", type=int, default=3, help="timed training steps (default: 3)")
    args = parser.parse_args(argv)
    shutil.rmtree(args.out, ignore_errors=True)
    raw, out = os.path.join(args.out, "raw"), os.path.join(args.out, "processed")
    source = write_raw(raw)
    cases = sorted(os.listdir(raw))
    params = config.load_params(os.path.join(ROOT, "params.json"))
    params["paths"].update(raw_dataset=raw, processed_data=out)
    params["data"].update(inputs={"radar": ["rain_rate"]}, split={"train": cases, "val": [], "test": [], "seed": 0},
                          input_steps=6, lead_steps=1, output_steps=12)
    print(f"data: {source}: {', '.join(cases)}")
    print("\npreproc.py (child process)")
    print(f"  {'motion':>6} {'cases':>5} {'raw MB':>8} {'wall s':>7} {'CPU s':>6} {'cases/s':>8} {'raw MB/s':>9} "
          f"{'peak RSS MB':>12} {'out MB':>7} {'out files':>9}")
    for motion in (False, True):
        params["data"]["motion"] = motion
        cfg = os.path.join(args.out, "params.json")
        with open(cfg, "w") as fh:
            json.dump(config.validate(params), fh, indent=2)
        pre = bench_preproc(cfg, raw, out)
        print(f"  {str(motion):>6} {len(cases):>5} {pre['raw_mb']:>8.0f} {pre['wall']:>7.1f} {pre['cpu']:>6.1f} "
              f"{pre['cases_per_s']:>8.3f} {pre['mb_per_s']:>9.1f} {pre['peak_rss_mb']:>12.0f} {pre['out_mb']:>7.1f} "
              f"{pre['out_files']:>9}")
    params = config.validate(params)

    import torch
    import dataset
    data, batch_size = params["data"], params["training"]["batch_size"]
    patches = dataset.ZarrPatchDataset(os.path.join(out, "train"), params, train=True)
    whole = make_whole_frame_dataset(patches)
    print(f"\nloading: {len(patches)} samples, x {(data['input_steps'], 1, data['patch_size'], data['patch_size'])}, "
          f"y {(data['output_steps'], 1, data['patch_size'], data['patch_size'])} and motion, batch {batch_size}, "
          f"{args.batches} timed batches, torch threads {torch.get_num_threads()}")
    rates = {}
    for name, ds in (("patch read", patches), ("one by one", make_one_by_one_dataset(patches)),
                     ("whole frame + crop", whole)):
        for workers in (0, 2):
            rates[name, workers] = loader_rate(ds, workers, args.batches, batch_size)
    train_rate, step_seconds = train_step_rate(params, 1, batch_size, args.train_steps)
    print(f"  {'reader':<20} {'workers':>7} {'samples/s':>10} {'vs whole frame':>15} {'vs training':>12}")
    for (name, workers), rate in rates.items():
        print(f"  {name:<20} {workers:>7} {rate:>10.1f} {rate / rates['whole frame + crop', workers]:>14.1f}x "
              f"{rate / train_rate:>11.1f}x")
    print(f"  {'training step (CPU)':<20} {'':>7} {train_rate:>10.2f}   ({step_seconds:.2f} s per batch of "
          f"{batch_size}, default {params['model']['name']}, 1 input channel)")
    worst = min(rates['patch read', 0], rates['patch read', 2]) / train_rate
    print(f"\ntarget: patch loading >= 5x the training sample rate: {worst:.1f}x -> "
          f"{'met' if worst >= 5 else 'NOT met'}")
    one = rates['patch read', 0]
    print(f"target: >= 100 samples/s in one process: {one:.1f} -> {'met' if one >= 100 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    config.run_main(main)
