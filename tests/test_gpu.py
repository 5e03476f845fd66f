"""CUDA paths: skipped cleanly where no GPU exists (CI); run on a GPU machine with `pytest -m gpu`.

They exercise the stacked engine on CUDA (cuBLAS batched matmuls, cuDNN grouped convolutions,
per-member CUDA generators), bf16 autocast, a split staged from pinned host memory, the stack
size chosen from free memory, and one real search stage on the GPU.
"""

import pytest
import torch
from conftest import TINY_DATA, TINY_SEARCH, write_params
from reference_train import data_orders, reference_train

from latentstudy import contracts, models, stages, train
from latentstudy.feed import DeviceSplit
from latentstudy.config import StudyError, TrainConfig
from latentstudy.search import devices

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
MLP_VAE = models.NetSpec(64, 4, "mlp", "bernoulli", True, (32, 16), (8,))
CONV_AE = models.NetSpec(64, 3, "conv", "gaussian", False, (16,), (4, 8), (1, 8, 8))
CONV_VAE = models.NetSpec(784, 8, "conv", "bernoulli", True, (64,), (16, 32), (1, 28, 28))


def test_asking_for_cuda_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(StudyError, match="search.device = cuda but no CUDA device is visible"):
        devices.worker_slots("cuda", 1, 1)
    assert [d for d, _ in devices.worker_slots("auto", 1, 2)] == ["cpu", "cpu"]


def blobs(dim: int, n: int, device, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    centres = torch.rand(4, dim, generator=g, dtype=torch.float64)
    x = (centres[torch.randint(0, 4, (n,), generator=g)] + 0.1 * torch.randn(n, dim, generator=g,
                                                                               dtype=torch.float64)).clamp(0, 1)
    x = x.to(device=device, dtype=dtype)
    return x[: n * 3 // 4], x[n * 3 // 4 :]


def stack_results(spec, x_train, x_val, cfg, members, size):
    queue, results = list(members), {}
    train.train_stack(spec, x_train, x_val, cfg, objective="neg_elbo", size=size,
                      next_member=lambda: queue.pop(0) if queue else None,
                      on_done=lambda r: results.__setitem__(r.member.key, r))
    return results


@pytest.mark.gpu
@cuda
def test_one_worker_per_gpu_times_workers_per_device():
    slots = devices.worker_slots("auto", 2, 1)
    assert len(slots) == 2 * torch.cuda.device_count()
    assert {env["CUDA_VISIBLE_DEVICES"] for _, env in slots} == {str(i) for i in range(torch.cuda.device_count())}


@pytest.mark.gpu
@cuda
def test_a_cuda_stack_of_autoencoders_equals_the_textbook_loop_in_float64():
    # No noise in an autoencoder: CUDA and CPU see the same numbers, so the CPU reference applies.
    x = blobs(64, 160, "cuda", torch.float64)
    cfg = TrainConfig(epochs=4, batch_size=16, patience=4, grad_clip=1.0)
    members = [train.Member(seed, 0.0, lr, key=seed) for seed, lr in ((1, 3e-3), (2, 1e-2), (3, 5e-3))]
    results = stack_results(CONV_AE, *x, cfg, members, size=3)
    orders = data_orders(1, len(x[0]), cfg.ceiling)
    for m in members:
        _, best = reference_train(CONV_AE, x[0].cpu(), x[1].cpu(), cfg, seed=m.seed, beta=0.0, lr=m.lr,
                                  objective="neg_elbo", orders=orders)
        for name, value in best.items():
            torch.testing.assert_close(results[m.key].state_dict[name].double(), value, rtol=0, atol=1e-5)


@pytest.mark.gpu
@cuda
def test_a_cuda_member_does_not_depend_on_its_stack_mates():
    # Each member draws its noise from its own CUDA generator: alone or beside others, the same.
    x = blobs(64, 160, "cuda", torch.float64)
    cfg = TrainConfig(epochs=3, batch_size=16)
    mates = [train.Member(seed, 1.0, 3e-3, key=seed) for seed in (1, 2, 3)]
    together = stack_results(MLP_VAE, *x, cfg, mates, size=3)
    first_alone = stack_results(MLP_VAE, *x, cfg, [train.Member(1, 1.0, 3e-3, key=1)], size=1)
    for name, value in first_alone[1].state_dict.items():
        torch.testing.assert_close(together[1].state_dict[name], value, rtol=0, atol=1e-9)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("bf16", [False, True])
def test_a_conv_vae_stack_trains_on_cuda(bf16):
    x = torch.rand(512, 784, device="cuda").round()
    cfg = TrainConfig(epochs=3, max_epochs=3, batch_size=64, bf16=bf16)
    members = [train.Member(seed, 1.0, 1e-3, key=seed) for seed in range(4)]
    results = stack_results(CONV_VAE, x[:448], x[448:], cfg, members, size=4)
    for r in results.values():
        assert r.status == "complete" and r.epochs_run == 3
        assert all(v == v for v in r.best.values())
        assert r.history[-1]["train_loss"] < r.history[0]["train_loss"]


@pytest.mark.gpu
@cuda
def test_a_split_staged_from_pinned_memory_gives_the_resident_numbers():
    x = blobs(64, 400, "cpu")
    cfg = TrainConfig(epochs=2, batch_size=32)
    runs = []
    for staged in (False, True):
        splits = [DeviceSplit(part, "cuda", staged=staged) for part in x]
        assert splits[0].staged == staged and (not staged or splits[0].x.is_pinned())
        members = [train.Member(seed, 1.0, 3e-3, key=seed) for seed in (1, 2)]
        runs.append(stack_results(MLP_VAE, *splits, cfg, members, size=2))
    for key in (1, 2):
        for name, value in runs[0][key].state_dict.items():
            torch.testing.assert_close(runs[1][key].state_dict[name], value, rtol=0, atol=1e-6)


@pytest.mark.gpu
@cuda
def test_auto_stack_size_fits_in_free_memory():
    spec = models.NetSpec(784, 16, "mlp", "bernoulli", True, (256, 128), (32, 64))
    size = train.stack_size("auto", spec, torch.device("cuda"), 64)
    free, _ = torch.cuda.mem_get_info()
    assert 1 <= size <= train.CUDA_STACK_CAP
    assert size * train.member_bytes(spec, 64) <= free


@pytest.mark.gpu
@cuda
def test_a_search_stage_on_the_gpu(tmp_path):
    search = {**TINY_SEARCH, "device": "cuda"}
    params = write_params(tmp_path / "params.yaml", data=TINY_DATA, study={"latent_dims": [2, 4], "seed": 0},
                          search=search)
    stages.prepare(contracts.PreparePaths(params, tmp_path / "data"), tmp_path)
    out = tmp_path / "out"
    stages.search(contracts.SearchPaths(params, tmp_path / "data", out / "models", out / "trials.csv",
                                     out / "metrics.json", out / "study.json"), tmp_path, None)
    import pandas as pd

    trials = pd.read_csv(out / "trials.csv")
    assert (trials["state"] == "COMPLETE").sum() >= 6
    assert set(trials["device"]) == {"cuda:0"}
    model, _ = models.load_checkpoint(models.best_path(out / "models", 4, "vae"))
    assert model.spec.latent_dim == 4
