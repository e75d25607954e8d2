"""Benchmark of the nowcasting data path: preproc.py on the real radar events (without and with
the motion field), then patch loading (dataset.ZarrPatchDataset) without the chunk cache against
reading whole frames and cropping in memory, with the chunk cache over whole passes (cold, then
warm) in one process and in training's loader with 2 persistent workers, and the CPU training step
rate of the default model for comparison.

    python bench/bench_nowcast_data.py [--out /tmp/bench_nowcast_data] [--batches 20] [--train-steps 3]
                                       [--cache-mb 2048] [--passes 6] [--loading-only]

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


def cached_rates(ds, passes):
    """Samples per second of whole passes over the data in this process, each pass with new crops
    (set_epoch), the chunk cache kept from pass to pass: [(pass, samples/s, cache MB, chunks
    decoded)], the first pass cold."""
    order = np.random.default_rng(0).permutation(len(ds))
    rates = []
    for epoch in range(passes):
        ds.set_epoch(epoch)
        misses, start = ds.cache.misses, time.perf_counter()
        for index in order:
            ds[index]
        rates.append((epoch + 1, len(order) / (time.perf_counter() - start), ds.cache.nbytes / 2 ** 20,
                      ds.cache.misses - misses))
    return rates


def worker_pass_rates(params, ds, workers, passes):
    """Samples per second of whole passes of training's loader (dataset.load_datasets: persistent
    workers, the pass's epoch sent with each index), new crops every pass: [samples/s per pass]."""
    import dataset
    params["training"]["num_workers"] = workers
    loader = dataset.load_datasets(params, datasets={"train": ds, "val": ds})["train"]
    rates = []
    for epoch in range(passes):
        loader.sampler.set_epoch(epoch)
        start, n = time.perf_counter(), 0
        for batch in loader:
            n += len(batch["x"])
        rates.append(n / (time.perf_counter() - start))
    return rates


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
                        help="scratch folder, emptied first unless --loading-only (default: /tmp/bench_nowcast_data)")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per loader (default: 20)")
    parser.add_argument("--train-steps", type=int, default=3, help="timed training steps (default: 3)")
    parser.add_argument("--cache-mb", type=float, default=2048,
                        help="data.cache_mb of the cached reader: all four events are in one split here "
                             "(default: 2048)")
    parser.add_argument("--passes", type=int, default=6, help="passes over the data of the cached reader (default: 6)")
    parser.add_argument("--loading-only", action="store_true",
                        help="skip preproc.py and reuse <out>/processed of an earlier run (with motion)")
    args = parser.parse_args(argv)
    if not args.cache_mb > 0 or args.passes < 1:  # NaN too
        sys.exit(f"--cache-mb {args.cache_mb} / --passes {args.passes}: expected a size > 0 MB and at least 1 pass")
    raw, out = os.path.join(args.out, "raw"), os.path.join(args.out, "processed")
    if args.loading_only and not os.path.isdir(os.path.join(out, "train")):
        sys.exit(f"--loading-only: {out}/train missing; run once without it")
    if not args.loading_only:
        shutil.rmtree(args.out, ignore_errors=True)
        source = write_raw(raw)
    else:
        source = "reused " + out
    cases = sorted(os.listdir(raw))
    params = config.load_params(os.path.join(ROOT, "params.json"))
    params["paths"].update(raw_dataset=raw, processed_data=out)
    params["data"].update(inputs={"radar": ["rain_rate"]}, split={"train": cases, "val": [], "test": [], "seed": 0},
                          input_steps=6, lead_steps=1, output_steps=12, motion=True)
    print(f"data: {source}: {', '.join(cases)}")
    if not args.loading_only:
        run_preproc(params, raw, out, args.out, cases)
    params = config.validate(params)
    bench_loading(params, out, args)
    return 0


def run_preproc(params, raw, out, scratch, cases):
    print("\npreproc.py (child process)")
    print(f"  {'motion':>6} {'cases':>5} {'raw MB':>8} {'wall s':>7} {'CPU s':>6} {'cases/s':>8} {'raw MB/s':>9} "
          f"{'peak RSS MB':>12} {'out MB':>7} {'out files':>9}")
    for motion in (False, True):
        params["data"]["motion"] = motion
        cfg = os.path.join(scratch, "params.json")
        with open(cfg, "w") as fh:
            json.dump(config.validate(params), fh, indent=2)
        pre = bench_preproc(cfg, raw, out)
        print(f"  {str(motion):>6} {len(cases):>5} {pre['raw_mb']:>8.0f} {pre['wall']:>7.1f} {pre['cpu']:>6.1f} "
              f"{pre['cases_per_s']:>8.3f} {pre['mb_per_s']:>9.1f} {pre['peak_rss_mb']:>12.0f} {pre['out_mb']:>7.1f} "
              f"{pre['out_files']:>9}")


def bench_loading(params, out, args):
    import torch
    import dataset
    data, batch_size = params["data"], params["training"]["batch_size"]
    data["cache_mb"] = 0
    patches = dataset.ZarrPatchDataset(os.path.join(out, "train"), params, train=True)
    whole = make_whole_frame_dataset(patches)
    print(f"\nloading: {len(patches)} samples, x {(data['input_steps'], 1, data['patch_size'], data['patch_size'])}, "
          f"y {(data['output_steps'], 1, data['patch_size'], data['patch_size'])} and motion, batch {batch_size}, "
          f"{args.batches} timed batches, torch threads {torch.get_num_threads()}")
    rates = {}
    for name, ds in (("patch read, no cache", patches), ("whole frame + crop", whole)):
        for workers in (0, 2):
            rates[name, workers] = loader_rate(ds, workers, args.batches, batch_size)
    train_rate, step_seconds = train_step_rate(params, 1, batch_size, args.train_steps)
    print(f"  {'reader':<22} {'workers':>7} {'samples/s':>10} {'vs whole frame':>15} {'vs training':>12}")
    for (name, workers), rate in rates.items():
        print(f"  {name:<22} {workers:>7} {rate:>10.1f} {rate / rates['whole frame + crop', workers]:>14.1f}x "
              f"{rate / train_rate:>11.1f}x")
    print(f"  {'training step (CPU)':<22} {'':>7} {train_rate:>10.2f}   ({step_seconds:.2f} s per batch of "
          f"{batch_size}, default {params['model']['name']}, 1 input channel)")
    data["cache_mb"] = args.cache_mb
    cached = dataset.ZarrPatchDataset(os.path.join(out, "train"), params, train=True)
    print(f"\npatch read with the chunk cache (data.cache_mb {args.cache_mb:g}), one process, whole passes over "
          "the data, new crops every pass")
    print(f"  {'pass':>4} {'samples/s':>10} {'vs training':>12} {'cache MB':>9} {'chunks decoded':>15}")
    passes = cached_rates(cached, args.passes)
    for number, rate, megabytes, decoded in passes:
        print(f"  {number:>4} {rate:>10.1f} {rate / train_rate:>11.1f}x {megabytes:>9.0f} {decoded:>15}")
    print("\npatch read with the chunk cache through training's loader (2 persistent workers, each with its own "
          "cache), whole passes")
    fresh = dataset.ZarrPatchDataset(os.path.join(out, "train"), params, train=True)  # cold caches (fork copies)
    for number, rate in enumerate(worker_pass_rates(params, fresh, 2, args.passes), 1):
        print(f"  {number:>4} {rate:>10.1f} {rate / train_rate:>11.1f}x")
    worst = min(rates['patch read, no cache', 0], rates['patch read, no cache', 2]) / train_rate
    print(f"\ntarget: patch loading >= 5x the training sample rate: {worst:.1f}x without the cache -> "
          f"{'met' if worst >= 5 else 'NOT met'}")
    cold, warm = passes[0][1], passes[-1][1]
    print(f"target: >= 100 samples/s in one process: {rates['patch read, no cache', 0]:.1f} without the cache, "
          f"{cold:.1f} in the cache's first pass, {warm:.1f} in pass {len(passes)} -> "
          f"{'met once warm' if warm >= 100 else 'NOT met'}")


if __name__ == "__main__":
    config.run_main(main)
