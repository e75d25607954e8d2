"""Training speed and peak memory of the models, and the fused-gate ConvLSTM cell against a
cell with one convolution per gate and source (the paper's W_x., W_h. written out).

    python bench/bench_model.py                      # CPU, 2 threads, defaults of params.json
    python bench/bench_model.py --device cuda        # fp32, bf16 autocast, torch.compile, both
    python bench/bench_model.py --modes fp32,compile # CPU with and without torch.compile

A training step is forward + MSE backward + AdamW step on a fixed random batch
(B, input_steps, C, patch, patch) -> (B, output_steps, 1, patch, patch); C = the channels of
data.inputs (rain + 3 NWP = 4). Each case runs in a fresh process, so its peak RSS is its own; the
1st step (torch.compile's compilation included) is reported apart from the timed ones.
Cells: both cells hold the same weights and run the same sequence (forward + backward over
input_steps frames); their steps are timed alternately in one process and the ratio is
per-gate time / fused time (> 1: fused is faster).
"""
import argparse
import multiprocessing
import os
import queue as queue_lib
import resource
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import config  # noqa: E402
import model  # noqa: E402


class PerGateConvLSTMCell(nn.Module):
    """The same cell as model.ConvLSTMCell, computed with 8 convolutions (W_xi, W_hi, W_xf, ...)
    instead of one; built from a fused cell's weights. forward(x, (h, c)) -> (h, c)."""

    def __init__(self, fused):
        super().__init__()
        hid, c_in, k = fused.hidden_channels, fused.in_channels, fused.kernel_size
        self.conv_x = nn.ModuleList(nn.Conv2d(c_in, hid, k, padding="same", bias=True) for _ in range(4))
        self.conv_h = nn.ModuleList(nn.Conv2d(hid, hid, k, padding="same", bias=False) for _ in range(4))
        with torch.no_grad():
            for gate in range(4):
                rows = slice(gate * hid, (gate + 1) * hid)
                self.conv_x[gate].weight.copy_(fused.conv.weight[rows, :c_in])
                self.conv_x[gate].bias.copy_(fused.conv.bias[rows])
                self.conv_h[gate].weight.copy_(fused.conv.weight[rows, c_in:])
        self.w_ci = nn.Parameter(fused.w_ci.detach().clone())
        self.w_cf = nn.Parameter(fused.w_cf.detach().clone())
        self.w_co = nn.Parameter(fused.w_co.detach().clone())

    def forward(self, x, state):
        h, c = state
        pre = [self.conv_x[g](x) + self.conv_h[g](h) for g in range(4)]
        i = torch.sigmoid(pre[0] + self.w_ci * c)
        f = torch.sigmoid(pre[1] + self.w_cf * c)
        c = f * c + i * torch.tanh(pre[2])
        o = torch.sigmoid(pre[3] + self.w_co * c)
        return o * torch.tanh(c), c


# --------------------------------------------------------------------------- one case, in a child process
MODES = ("fp32", "bf16", "compile", "compile-bf16")


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def autocast(device, mode):
    enabled = mode in ("bf16", "compile-bf16")
    return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=enabled)


def run_model_case(args, name, mode):
    """Time training steps of one model; returns a result row (dict)."""
    params = config.load_params(args.config, {"model.name": name})
    in_channels = sum(len(channels) for channels in params["data"]["inputs"].values())
    T_in, T_out = params["data"]["input_steps"], params["data"]["output_steps"]
    torch.manual_seed(0)
    net = model.build_model(params, in_channels).to(args.device)
    n_params = model.count_parameters(net)
    step_net = torch.compile(net) if mode.startswith("compile") else net
    optimiser = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.randn(args.batch_size, T_in, in_channels, args.size, args.size, device=args.device)
    y = torch.randn(args.batch_size, T_out, 1, args.size, args.size, device=args.device)
    rss_before = peak_rss_mib()
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(args.warmup + args.steps):
        sync(args.device)
        start = time.perf_counter()
        optimiser.zero_grad(set_to_none=True)
        with autocast(args.device, mode):
            loss = F.mse_loss(step_net(x).float(), y)
        loss.backward()
        optimiser.step()
        sync(args.device)
        times.append(time.perf_counter() - start)
    first, times = times[0], times[args.warmup:]
    seconds = statistics.median(times)
    return {"case": name, "mode": mode, "ms": 1000 * seconds, "first_s": first, "samples_s": args.batch_size / seconds,
            "rss": peak_rss_mib(), "rss_growth": peak_rss_mib() - rss_before, "params": n_params,
            "cuda_mib": torch.cuda.max_memory_allocated() / 2 ** 20 if args.device == "cuda" else None}


def run_cell_case(args, in_channels, hidden, mode):
    """Time fused and per-gate cells alternately over one sequence; returns a result row."""
    T = config.load_params(args.config)["data"]["input_steps"]
    torch.manual_seed(0)
    fused = model.ConvLSTMCell(in_channels, hidden, 3, peephole=True).to(args.device)
    with torch.no_grad():
        for p in (fused.w_ci, fused.w_cf, fused.w_co):
            p.normal_(0, 0.1)
    per_gate = PerGateConvLSTMCell(fused).to(args.device)
    x = torch.randn(args.batch_size, T, in_channels, args.size, args.size, device=args.device)
    zeros = torch.zeros(args.batch_size, hidden, args.size, args.size, device=args.device)

    def sequence(cell):
        state = (zeros, zeros)
        outputs = []
        for t in range(T):
            state = cell(x[:, t], state)
            outputs.append(state[0])
        return torch.stack(outputs, 1)

    cells = {"fused": fused, "per_gate": per_gate}
    run = {key: (torch.compile(sequence) if mode.startswith("compile") else sequence) for key in cells}
    with torch.no_grad(), autocast(args.device, mode):
        difference = (run["fused"](fused).float() - run["per_gate"](per_gate).float()).abs().max().item()
    times = {key: [] for key in cells}
    for step in range(args.warmup + args.steps):
        for key, cell in cells.items():
            cell.zero_grad(set_to_none=True)
            sync(args.device)
            start = time.perf_counter()
            with autocast(args.device, mode):
                out = run[key](cell)
            out.float().square().mean().backward()
            sync(args.device)
            if step >= args.warmup:
                times[key].append(time.perf_counter() - start)
    fused_s, per_gate_s = statistics.median(times["fused"]), statistics.median(times["per_gate"])
    return {"case": f"cell {in_channels}->{hidden}", "mode": mode, "fused_ms": 1000 * fused_s,
            "per_gate_ms": 1000 * per_gate_s, "ratio": per_gate_s / fused_s, "max_diff": difference}


def child(args, kind, spec, mode, queue):
    torch.set_num_threads(args.threads)
    try:
        row = run_model_case(args, spec, mode) if kind == "model" else run_cell_case(args, *spec, mode)
    except Exception as exc:  # report the failure in the table, keep the other cases
        row = {"case": str(spec), "mode": mode, "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:120]}
    queue.put(row)


def in_fresh_process(args, kind, spec, mode):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=child, args=(args, kind, spec, mode, queue))
    process.start()
    while True:  # a child that dies (out of memory, say) must not hang the benchmark
        try:
            row = queue.get(timeout=5)
            break
        except queue_lib.Empty:
            if not process.is_alive():
                row = {"case": str(spec), "mode": mode, "error": f"process died, exit code {process.exitcode}"}
                break
    process.join()
    return row


# --------------------------------------------------------------------------- main
def parse_cells(text):
    try:
        return [tuple(int(v) for v in item.split("x")) for item in text.split(",") if item]
    except ValueError:
        raise config.UserError(f"--cells: expected IN x HIDDEN pairs like 4x16,32x32, got {text!r}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    config.add_config_arg(parser)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default: cpu)")
    parser.add_argument("--modes", default=None,
                        help="comma list of fp32, bf16 (autocast), compile (torch.compile, fp32), "
                             "compile-bf16 (both); default: fp32 on cpu, all four on cuda")
    parser.add_argument("--models", default="convlstm_unet,encoder_forecaster",
                        help="comma list of registry names (default: convlstm_unet,encoder_forecaster)")
    parser.add_argument("--cells", default="4x16,32x32",
                        help="cells compared, IN x HIDDEN channels (4x16: the U-Net's first scale; "
                             "32x32: the encoder-forecaster's second layer); empty: none (default: 4x16,32x32)")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per step (default: 8)")
    parser.add_argument("--size", type=int, default=128, help="patch side, pixels (default: 128)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads, CPU threads (default: 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default: 1 cpu, 3 cuda)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps; the median is reported (default: 3)")
    args = parser.parse_args(argv)
    config.load_params(args.config)  # a bad config fails here, once
    if args.device == "cuda" and not torch.cuda.is_available():
        raise config.UserError("--device cuda: no CUDA device visible to torch")
    modes = (args.modes or ("fp32" if args.device == "cpu" else ",".join(MODES))).split(",")
    for mode in modes:
        if mode not in MODES:
            raise config.UserError(f"--modes: unknown mode {mode!r}; expected {', '.join(MODES)}")
    for name in args.models.split(","):
        if name and name not in model.MODELS:
            raise config.UserError(f"--models: unknown model {name!r}; expected {', '.join(model.MODELS)}")
    if args.warmup is None:
        args.warmup = 1 if args.device == "cpu" else 3

    print(f"device {args.device} ({torch.cuda.get_device_name() if args.device == 'cuda' else f'{args.threads} threads'}), "
          f"torch {torch.__version__}, batch {args.batch_size}, {args.size} x {args.size} px, "
          f"{args.warmup} warm-up + {args.steps} timed steps (median), "
          f"load average {os.getloadavg()[0]:.1f} at start\n")
    rows = [in_fresh_process(args, "model", name, mode) for name in args.models.split(",") if name for mode in modes]
    print("| model | mode | params | 1st step s | ms/step | samples/s | peak RSS MiB | RSS growth MiB | "
          "CUDA max alloc MiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['case']} | {r['mode']} | failed: {r['error']} | | | | | | |")
            continue
        cuda = f"{r['cuda_mib']:.0f}" if r["cuda_mib"] is not None else "-"
        print(f"| {r['case']} | {r['mode']} | {r['params']:,} | {r['first_s']:.1f} | {r['ms']:.0f} | {r['samples_s']:.2f} | "
              f"{r['rss']:.0f} | {r['rss_growth']:.0f} | {cuda} |")

    cell_rows = [in_fresh_process(args, "cell", spec, mode) for spec in parse_cells(args.cells) for mode in modes]
    if cell_rows:
        print(f"\nConvLSTM cell, forward + backward over input_steps frames, batch {args.batch_size}, "
              f"{args.size} x {args.size} px")
        print("| cell (in->hidden) | mode | fused ms | per-gate ms | per-gate / fused | max abs diff |")
        print("|---|---|---:|---:|---:|---:|")
        for r in cell_rows:
            if "error" in r:
                print(f"| {r['case']} | {r['mode']} | failed: {r['error']} | | | |")
                continue
            print(f"| {r['case']} | {r['mode']} | {r['fused_ms']:.0f} | {r['per_gate_ms']:.0f} | "
                  f"{r['ratio']:.2f} | {r['max_diff']:.1e} |")
    failed = sum("error" in r for r in rows + cell_rows)
    print(f"\n{len(rows)} model and {len(cell_rows)} cell cases measured on {args.device}"
          + (f", {failed} failed" if failed else "") + f"; load average {os.getloadavg()[0]:.1f} at the end")
    return 1 if failed else 0


if __name__ == "__main__":
    config.run_main(main)
