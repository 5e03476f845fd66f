"""`make bench` (python benchmarks/engine_bench.py): how fast the training engine fills the device,
stacked against one trial per process. Prints a table and writes reports/bench.json; tests never
assert on timings.

Workloads, all VAEs with 16 latent units: `digits`, an MLP 64-256-128-16 on scikit-learn's digits;
`digits-conv`, the conv net (channels 32, 64 on the 8 x 8 images) that `arch: conv` trains there;
`mnist`, an MNIST-size MLP 784-256-128-16 on the MNIST test set when ../shared/data has it, else on
synthetic 60,000 x 784 data. For each:

  stack S      one process training S members as one stack, every core (S = 1, 4, 16, 64);
  N x 1        N processes started together, each training one model (N = 1, 2, 4, 8), the
               cores split between them: how a search ran before stacks;
  N x stack S  N processes each training a stack: how the search runs on CPU (cpu_workers).

Each configuration trains for --seconds after one warm-up epoch, validating every epoch as a
trial does (--repeat N: N interleaved rounds, the best of each kept). Reported: model-samples per second (members x training rows per second), trials per
minute (a trial being --trial-epochs epochs over the training split), the ratio to one model in
one process and to the best N x 1, and achieved FLOP/s (forward and backward of the training
steps, counted by torch's FlopCounterMode) as a fraction of the device's measured fp32 matmul rate.

--search also times the real search stage on the default study (digits, params.yaml's search
section) with search.stack 1 (one model per worker process) and auto.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from latentstudy import contracts, models, train
from latentstudy.config import DataConfig, TrainConfig
from latentstudy.feed import DeviceSplit
from latentstudy.stack import Stack

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"
BATCH = 64  # the default study's batch size


IMAGE_SHAPES = {"digits": None, "digits-conv": (1, 8, 8), "mnist": None}


def workload_data(name: str) -> tuple[np.ndarray, np.ndarray, str]:
    from latentstudy.data import load_split, prepare
    from latentstudy.data.idx import read_idx

    if name.startswith("digits"):
        with tempfile.TemporaryDirectory() as tmp:
            prepare.run(DataConfig(intrinsic_max_points=10), Path("."), Path(tmp))
            return load_split(Path(tmp), "train")[0], load_split(Path(tmp), "val")[0], "scikit-learn digits"
    if (MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        x = read_idx(MNIST / "t10k-images-idx3-ubyte.gz").reshape(10000, -1).astype(np.float32) / 255
        return x[:7000], x[7000:8500], "MNIST test set (7,000 train / 1,500 val)"
    x = np.random.default_rng(0).random((60000, 784), dtype=np.float32).round()
    return x[:42000], x[42000:51000], "synthetic 60,000 x 784 (42,000 train / 9,000 val)"


def spec_for(workload: str, input_dim: int) -> models.NetSpec:
    shape = IMAGE_SHAPES[workload]
    return models.NetSpec(input_dim, 16, "conv" if shape else "mlp", "bernoulli", True, (256, 128), (32, 64), shape)


def flops_per_sample(spec: models.NetSpec, device: torch.device) -> float:
    """Forward and backward FLOPs of one training step, per member and example."""
    from torch.utils.flop_counter import FlopCounterMode

    stack = Stack(spec, 1, device)
    x = torch.rand(BATCH, spec.input_dim, device=device)
    with FlopCounterMode(display=False) as counter:
        terms = stack.terms(x, torch.randn(1, BATCH, spec.latent_dim, device=device))
        stack.backward((terms.distortion.mean() + terms.kl.sum(-1).mean()))
    return counter.get_total_flops() / BATCH


def matmul_rate(device: torch.device, n: int = 1024, seconds: float = 1.0) -> float:
    """Measured fp32 matmul FLOP/s: square n x n products."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    _sync(device)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10):
            a @ b
        reps += 10
        _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_one(workload: str, size: int, threads: int, seconds: float, device: str, barrier) -> dict:
    """In a child process: train a stack of size members until seconds have passed after a
    warm-up epoch; returns the samples trained and the time they took."""
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    dev = torch.device(device)
    x_train, x_val, _ = workload_data(workload)
    spec = spec_for(workload, x_train.shape[1])
    cfg = TrainConfig(epochs=10_000, batch_size=BATCH, patience=10_000)
    members = iter([train.Member(seed, 1.0, 1e-3) for seed in range(size)])
    marks: list[float] = []

    def on_epoch(member, record) -> bool:
        if member.seed == 0:
            _sync(dev)
            marks.append(time.perf_counter())
        return len(marks) >= 2 and marks[-1] - marks[0] >= seconds

    split_train = DeviceSplit(torch.as_tensor(x_train), dev)
    split_val = DeviceSplit(torch.as_tensor(x_val), dev)
    barrier.wait()
    train.train_stack(spec, split_train, split_val, cfg, objective="neg_elbo", size=size,
                      next_member=lambda: next(members, None), on_done=lambda result: None, on_epoch=on_epoch)
    epochs = len(marks) - 1
    return {"samples": size * len(x_train) * epochs, "seconds": marks[-1] - marks[0], "epochs": epochs}


def measure(workload: str, procs: int, size: int, threads: int, seconds: float, device: str) -> dict:
    """procs processes, each a stack of size, started together; the rate is their total."""
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(procs)
        with ctx.Pool(procs) as pool:
            parts = pool.starmap(run_one, [(workload, size, threads, seconds, device, barrier)] * procs)
    wall = max(p["seconds"] for p in parts)
    return {"procs": procs, "stack": size, "threads": threads, "samples_per_second": sum(p["samples"] for p in parts) / wall,
            "epochs": min(p["epochs"] for p in parts)}


def bench_workload(workload: str, args, cores: int, device: str, rate: float) -> dict:
    x_train, _, source = workload_data(workload)
    spec = spec_for(workload, x_train.shape[1])
    per_sample = flops_per_sample(spec, torch.device(device))
    net = f"conv VAE {spec.channels}" if spec.arch == "conv" else f"MLP VAE {spec.input_dim}-256-128-16"
    print(f"[bench] {workload}: {source}, {net}, batch {BATCH}, {per_sample / 1e6:.2f} MFLOP per training sample",
          flush=True)
    configs = [(1, s, cores) for s in args.stacks]
    configs += [(n, 1, max(1, cores // n)) for n in args.procs if n > 1]
    configs += [(cores, s, 1) for s in args.worker_stacks if cores > 1]
    best: dict[tuple, dict] = {}
    for _ in range(args.repeat):  # interleaved; the best of each, against passing load on a shared machine
        for config in configs:
            row = measure(workload, *config, args.seconds, device)
            if config not in best or row["samples_per_second"] > best[config]["samples_per_second"]:
                best[config] = row
            print(f"  {label(row):<22} {row['samples_per_second']:>12,.0f} samples/s", flush=True)
    rows = []
    for row in best.values():
        row["trials_per_minute"] = row["samples_per_second"] * 60 / (len(x_train) * args.trial_epochs)
        row["flops_per_second"] = row["samples_per_second"] * per_sample
        row["fraction_of_matmul_rate"] = row["flops_per_second"] / rate
        rows.append(row)
    one = next(r for r in rows if r["procs"] == 1 and r["stack"] == 1)["samples_per_second"]
    best_procs = max((r for r in rows if r["stack"] == 1), key=lambda r: r["samples_per_second"])
    for row in rows:
        row["vs_one_model"] = row["samples_per_second"] / one
        row["vs_best_one_model_per_process"] = row["samples_per_second"] / best_procs["samples_per_second"]
    return {"workload": workload, "data": source, "model": net, "train_rows": len(x_train), "input_dim": spec.input_dim,
            "flops_per_training_sample": per_sample, "rows": rows,
            "best_one_model_per_process": label(best_procs)}


def label(row: dict) -> str:
    if row["procs"] == 1:
        return f"stack {row['stack']}"
    return f"{row['procs']} x 1" if row["stack"] == 1 else f"{row['procs']} x stack {row['stack']}"


def print_table(result: dict, trial_epochs: int) -> None:
    print(f"\n{result['workload']}: {result['model']} on {result['data']}; a trial = {trial_epochs} epochs; "
          f"ratios against one model in one process and against the best N x 1 ({result['best_one_model_per_process']})")
    head = f"  {'configuration':<20} {'samples/s':>12} {'trials/min':>11} {'vs 1':>7} {'vs best Nx1':>12} " \
           f"{'GFLOP/s':>9} {'of matmul':>10}"
    print(head)
    for r in result["rows"]:
        print(f"  {label(r):<20} {r['samples_per_second']:>12,.0f} {r['trials_per_minute']:>11.2f} "
              f"{r['vs_one_model']:>6.2f}x {r['vs_best_one_model_per_process']:>11.2f}x "
              f"{r['flops_per_second'] / 1e9:>9.2f} {r['fraction_of_matmul_rate']:>10.1%}")


def search_times(stacks: list[str]) -> list[dict]:
    """Wall time of the search stage on the default study for each search.stack setting."""
    import yaml

    from latentstudy import stages

    rows = []
    defaults = yaml.safe_load((ROOT / "params.yaml").read_text())
    for stack in stacks:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            params = {**defaults, "search": {**defaults["search"], "stack": int(stack) if stack.isdigit() else stack}}
            (root / "params.yaml").write_text(yaml.safe_dump(params))
            stages.prepare(contracts.PreparePaths(root / "params.yaml", root / "data"), root)
            start = time.perf_counter()
            out = root / "out"
            stages.search(contracts.SearchPaths(root / "params.yaml", root / "data", out / "models", out / "trials.csv",
                                             out / "metrics.json", out / "study.json"), root,
                          f"sqlite:///{root / 'mlflow.db'}")
            wall = time.perf_counter() - start
            import pandas as pd

            trials = pd.read_csv(out / "trials.csv")
            rows.append({"stack": stack, "search_seconds": round(wall, 1), "trials": len(trials),
                         "complete": int((trials["state"] == "COMPLETE").sum()),
                         "epochs_trained": int(trials["epochs_run"].sum())})
            print(f"[bench] search stage, default study, search.stack = {stack}: {wall:.1f} s "
                  f"({rows[-1]['trials']} trials, {rows[-1]['epochs_trained']} trial-epochs)", flush=True)
    return rows


def main(args) -> dict:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cores = args.cores or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
    torch.set_num_threads(cores)
    rate = matmul_rate(torch.device(device))
    print(f"[bench] device {device}, {cores} cores, fp32 matmul {rate / 1e9:,.1f} GFLOP/s; "
          f"{args.seconds:g} s per configuration", flush=True)
    results = [bench_workload(w, args, cores, device, rate) for w in args.workloads]
    for result in results:
        print_table(result, args.trial_epochs)
    search = search_times(args.search) if args.search else []
    if len(search) > 1:
        base = search[0]["search_seconds"]
        for row in search:
            row["speedup"] = round(base / row["search_seconds"], 2)
        print("\n  search stage: " + ", ".join(f"stack {r['stack']} {r['search_seconds']} s ({r['speedup']}x)"
                                                for r in search))
    out = {"device": device, "device_name": torch.cuda.get_device_name() if device == "cuda" else platform.processor()
           or platform.machine(), "cores": cores, "torch": torch.__version__, "matmul_fp32_flops_per_second": rate,
           "seconds_per_configuration": args.seconds, "trial_epochs": args.trial_epochs, "workloads": results,
           "search": search}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"[bench] wrote {args.out}")
    return out


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("reports/bench.json"))
    parser.add_argument("--workloads", nargs="+", default=list(IMAGE_SHAPES), choices=list(IMAGE_SHAPES))
    parser.add_argument("--stacks", nargs="+", type=int, default=[1, 4, 16, 64], help="stack sizes in one process")
    parser.add_argument("--procs", nargs="+", type=int, default=[1, 2, 4, 8], help="processes of one model each")
    parser.add_argument("--worker-stacks", nargs="*", type=int, default=[4, 8],
                        help="stack sizes for one process per core (the CPU search's layout)")
    parser.add_argument("--seconds", type=float, default=4.0, help="timed training per configuration")
    parser.add_argument("--repeat", type=int, default=1, help="measure each configuration this often, keep the best")
    parser.add_argument("--trial-epochs", type=int, default=100, help="epochs of one trial, for trials per minute")
    parser.add_argument("--search", nargs="*", default=[], metavar="STACK",
                        help="also time the search stage on the default study for these search.stack values, "
                             "e.g. --search 1 auto (minutes each on a small CPU)")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    parser.add_argument("--cores", type=int, help="CPU cores to use (default: all this process may run on); "
                                                  "--cores 1 compares one thread with one thread on a busy machine")
    main(parser.parse_args())
