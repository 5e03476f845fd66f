"""`make bench` (python benchmarks/engine_bench.py): speed of the training engine and of the search orchestration, as ratios
measured in one run. Prints a table and writes a JSON file. Tests never assert on timings.

1. Our engine (tensors resident on the device, one permutation per epoch) against a textbook
   loop (DataLoader over a TensorDataset, batch 128), same model, data and epochs; both
   validate once per epoch.
2. That throughput as a fraction of the machine's measured fp32 matmul rate, counting about
   6 x parameters FLOPs per training sample (forward 2, backward 4).
3. The search stage's wall time against the sum of its trials' training time.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from latentstudy import models, train
from latentstudy.config import DataConfig, TrainConfig

BATCH = 128


def digits_tensors(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    import tempfile

    from latentstudy.data import load_split, prepare

    with tempfile.TemporaryDirectory() as tmp:
        prepare.run(DataConfig(intrinsic_max_points=10), Path("."), Path(tmp))
        return (torch.as_tensor(load_split(tmp, "train")[0], device=device),
                torch.as_tensor(load_split(tmp, "val")[0], device=device))


def default_mlp(input_dim: int, device: torch.device, seed: int = 0) -> models.AutoEncoder:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        spec = models.NetSpec(input_dim, 16, "mlp", "bernoulli", True, (256, 128), (32, 64))
        return models.build(spec).to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def engine_rate(x_train, x_val, epochs: int) -> float:
    model = default_mlp(x_train.shape[1], x_train.device)
    cfg = TrainConfig(epochs=epochs, batch_size=BATCH, patience=epochs + 1)
    _sync(x_train.device)
    start = time.perf_counter()
    train.train(model, x_train, x_val, cfg, beta=1.0, lr=1e-3, objective="neg_elbo", seed=0)
    _sync(x_train.device)
    return len(x_train) * epochs / (time.perf_counter() - start)


def textbook_rate(x_train, x_val, epochs: int) -> float:
    """The loop a tutorial writes: DataLoader batches, .item() every step, a DataLoader for validation."""
    from torch.utils.data import DataLoader, TensorDataset

    device = x_train.device
    model = default_mlp(x_train.shape[1], device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(x_train.cpu()), batch_size=BATCH, shuffle=True)
    val_loader = DataLoader(TensorDataset(x_val.cpu()), batch_size=BATCH)
    _sync(device)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        total = 0.0
        for (xb,) in loader:
            xb = xb.to(device)
            terms = models.forward(model, xb, None)
            loss = (terms.distortion + terms.rate).mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            total += loss.item() * len(xb)
        model.eval()
        val = 0.0
        with torch.no_grad():
            for (xb,) in val_loader:
                terms = models.forward(model, xb.to(device), None)
                val += (terms.distortion + terms.rate).sum().item()
        if total != total or val != val:
            raise RuntimeError("textbook loop diverged")
    _sync(device)
    return len(x_train) * epochs / (time.perf_counter() - start)


def matmul_flops(device: torch.device, n: int = 1024, seconds: float = 1.0) -> float:
    """Measured fp32 matmul rate: square n x n products, timed in batches of ten."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b  # warm-up
    _sync(device)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10):
            a @ b
        reps += 10
        _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def search_overhead(root: Path) -> dict:
    """Wall time of a small real search stage (1 CPU worker, MLflow on) against its trials' time."""
    import pandas as pd
    import yaml

    from latentstudy import stages
    from latentstudy.tracking import tracking_uri

    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({
        "data": {"name": "digits", "intrinsic_max_points": 10},
        "study": {"latent_dims": [2, 8], "seed": 0},
        "search": {"trials_per_dim": 4, "ae_trials_per_dim": 2, "pruner": "none", "device": "cpu",
                   "cpu_workers": 1, "model": {"arch": "mlp"}, "train": {"epochs": 60, "patience": 60}},
    }))
    stages.prepare(params, root / "data", root)
    out = root / "out"
    start = time.perf_counter()
    stages.search(params, root / "data", root, out / "models", out / "trials.csv", out / "metrics.json",
                  out / "study.json", tracking_uri(root))
    wall = time.perf_counter() - start
    trials = pd.read_csv(out / "trials.csv")
    busy = float(trials["seconds"].sum())
    return {"trials": int(len(trials)), "stage_wall_seconds": round(wall, 2), "sum_trial_train_seconds": round(busy, 2),
            "orchestration_overhead_ratio": round(wall / busy, 3)}


def main(out: Path, epochs: int) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x_train, x_val = digits_tensors(device)
    params = models.n_params(default_mlp(x_train.shape[1], device))
    print(f"[bench] device {device}, {torch.get_num_threads()} CPU threads, digits train {tuple(x_train.shape)}, "
          f"MLP VAE 64-256-128-16 ({params} parameters), batch {BATCH}, {epochs} epochs")
    textbook = textbook_rate(x_train, x_val, epochs)
    ours = engine_rate(x_train, x_val, epochs)
    flops = matmul_flops(device)
    used = ours * 6 * params
    with tempfile.TemporaryDirectory() as tmp:
        orchestration = search_overhead(Path(tmp))
    result = {
        "device": str(device), "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "model_parameters": params, "epochs": epochs, "batch": BATCH,
        "engine_samples_per_second": round(ours, 1), "textbook_samples_per_second": round(textbook, 1),
        "engine_speedup_vs_textbook": round(ours / textbook, 3),
        "matmul_fp32_flops_per_second": round(flops), "engine_flops_per_second": round(used),
        "engine_fraction_of_matmul_rate": round(used / flops, 4),
        **orchestration,
    }
    rows = [("training engine (samples/s)", f"{ours:,.0f}"), ("textbook DataLoader loop (samples/s)", f"{textbook:,.0f}"),
            ("engine / textbook", f"{ours / textbook:.2f}x"), ("fp32 matmul rate (GFLOP/s)", f"{flops / 1e9:,.1f}"),
            ("engine at 6 x params FLOPs/sample (GFLOP/s)", f"{used / 1e9:,.2f}"),
            ("engine / matmul rate", f"{used / flops:.1%}"),
            ("search stage wall time (s)", f"{orchestration['stage_wall_seconds']:.1f}"),
            ("sum of trial training time (s)", f"{orchestration['sum_trial_train_seconds']:.1f}"),
            ("wall / training (orchestration overhead)", f"{orchestration['orchestration_overhead_ratio']:.2f}x")]
    width = max(len(r[0]) for r in rows)
    print("\n".join(f"  {name:<{width}}  {value:>12}" for name, value in rows))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"[bench] wrote {out}")
    return result


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("reports/bench.json"))
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    main(args.out, args.epochs)
