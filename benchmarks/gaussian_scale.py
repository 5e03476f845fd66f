"""python benchmarks/gaussian_scale.py: the Gaussian decoder's learned scale, one log sigma shared by every
feature against one per feature (search.model.gaussian_scale), measured on held-out data. Prints a table;
asserts nothing.

Data: scikit-learn's breast_cancer (569 x 30) and wine (178 x 13), split 70/15/15 at random by each seed,
each feature standardised with that training split's mean and standard deviation. Models: MLP VAEs (the
study's default widths, 256 and 128) at k = 2, 4, 8, trained by train.train (the study's engine, one model)
from the seed's initial weights, the same for both scales; beta 1, Adam at lr 1e-3, batch 64, patience 15,
300 epochs (and past them while still improving, up to the engine's ceiling), selected on the validation
negative ELBO.
`--datasets patches` adds colour images as the study models them: 1,500 RGB 16 x 16 cuts of scikit-learn's
sample photos (data.patches) in [0, 1], not standardised, and the conv VAE that arch auto picks for them.

Reported per dataset, k and scale, as the mean (and the spread over seeds): the validation negative ELBO at
the best epoch, the test negative ELBO (D + R, 100-sample Monte Carlo D), the test IWAE-100 bound, all in
nats per example; the active units (evaluate.active_units on the test codes); the epochs run. The last
column is per_feature minus shared in the test IWAE bound, paired by seed (negative: per_feature is better),
and the seeds on which per_feature was better.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from latentstudy import evaluate, models, train
from latentstudy.config import Patches, TrainConfig
from latentstudy.data.synthetic import make_patches

SCALES = ("shared", "per_feature")
CHANNELS = (32, 64)  # the study's default conv channels
IWAE_SAMPLES = 100


PATCHES = Patches(n=1500, size=16)


def splits(name: str, seed: int = 0) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], tuple[int, ...] | None]:
    """(train, val, test rows, image shape): a scikit-learn table standardised with the training split's
    mean and sd, or the patches in [0, 1]."""
    from sklearn import datasets

    if name == "patches":
        raw = make_patches(PATCHES)
        x, shape = raw.x.reshape(len(raw.x), -1) / raw.default_scale, tuple(raw.image_shape)
    else:
        x, shape = getattr(datasets, f"load_{name}")().data.astype(np.float64), None
    rows = np.random.default_rng(seed).permutation(len(x))
    n_train, n_val = int(0.7 * len(x)), int(0.15 * len(x))
    parts = np.split(x[rows], [n_train, n_train + n_val])
    if shape is None:
        mean, sd = parts[0].mean(0), parts[0].std(0)
        parts = [(p - mean) / sd for p in parts]
    return tuple(p.astype(np.float32) for p in parts), shape


def run(name: str, k: int, scale: str, seed: int, cfg: TrainConfig, lr: float, hidden: tuple[int, ...]) -> dict:
    """One VAE trained by train.train on the seed's split from the seed's initial weights, scored on test."""
    (x_train, x_val, x_test), shape = splits(name, seed)
    arch = models.choose_arch("auto", shape, len(CHANNELS))
    spec = models.NetSpec(x_train.shape[1], k, arch, "gaussian", True, hidden, CHANNELS, shape, scale)
    model = models.build(spec)
    model.load_state_dict(train.initial_state(spec, seed))
    result = train.train(model, torch.as_tensor(x_train), torch.as_tensor(x_val), cfg, beta=1.0, lr=lr,
                         objective="neg_elbo", seed=seed)
    model.eval()
    bounds = evaluate.vae_bounds(model, x_test, IWAE_SAMPLES, seed=0)
    with torch.no_grad():
        mu = model.encode(torch.as_tensor(x_test))[0].numpy()
        sigma = float(model.log_scale().exp().mean())
    return {"val_neg_elbo": result.best["neg_elbo"], "test_neg_elbo": bounds["neg_elbo_nats"],
            "test_iwae": bounds["iwae_nll_nats"], "active": evaluate.active_units(mu)[0],
            "epochs": result.epochs_run, "sigma": sigma}


def cell(values: list[float], fmt: str = "{:.2f}") -> str:
    mean = fmt.format(float(np.mean(values)))
    return f"{mean} ({fmt.format(float(np.std(values)))})" if len(values) > 1 else mean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["breast_cancer", "wine"])
    parser.add_argument("--dims", nargs="+", type=int, default=[2, 4, 8])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--hidden", nargs="+", type=int, default=[256, 128])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = TrainConfig(epochs=args.epochs, batch_size=64, patience=15)
    header = (f"{'data':<14}{'k':>3}  {'scale':<12}{'val -ELBO':>16}{'test -ELBO':>16}{'test IWAE':>16}"
              f"{'active':>12}{'epochs':>12}{'mean sigma':>12}{'IWAE pf-sh, wins':>20}")
    print(f"seeds {args.seeds}, hidden {args.hidden}; mean (sd over seeds), nats per example")
    print(header)
    for name in args.datasets:
        for k in args.dims:
            by_scale = {scale: [run(name, k, scale, seed, cfg, args.lr, tuple(args.hidden)) for seed in args.seeds]
                        for scale in SCALES}
            diff = [p["test_iwae"] - s["test_iwae"] for p, s in zip(by_scale["per_feature"], by_scale["shared"])]
            for scale, rows in by_scale.items():
                col = {key: [r[key] for r in rows] for key in rows[0]}
                tail = f"{cell(diff)} {sum(d < 0 for d in diff)}/{len(diff)}" if scale == "per_feature" else ""
                print(f"{name:<14}{k:>3}  {scale:<12}{cell(col['val_neg_elbo']):>16}{cell(col['test_neg_elbo']):>16}"
                      f"{cell(col['test_iwae']):>16}{cell(col['active'], '{:.1f}'):>12}"
                      f"{cell(col['epochs'], '{:.0f}'):>12}{cell(col['sigma']):>12}{tail:>20}", flush=True)


if __name__ == "__main__":
    main()
