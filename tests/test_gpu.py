"""CUDA paths: skipped cleanly where no GPU exists (CI); run on a GPU machine with `pytest -m gpu`."""

import pytest
import torch

from latentstudy import models, train
from latentstudy.search import coordinator
from latentstudy.config import StudyError, TrainConfig

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_asking_for_cuda_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(StudyError, match="search.device = cuda but no CUDA device is visible"):
        coordinator.worker_slots("cuda", 1, 1)
    assert [d for d, _ in coordinator.worker_slots("auto", 1, 2)] == ["cpu", "cpu"]


@pytest.mark.gpu
@cuda
def test_one_worker_per_gpu_times_workers_per_device():
    slots = coordinator.worker_slots("auto", 2, 1)
    assert len(slots) == 2 * torch.cuda.device_count()
    assert {env["CUDA_VISIBLE_DEVICES"] for _, env in slots} == {str(i) for i in range(torch.cuda.device_count())}


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("bf16", [False, True])
def test_training_on_cuda(bf16):
    device = torch.device("cuda")
    x = torch.rand(512, 784, device=device).round()
    torch.manual_seed(0)
    model = models.build(models.NetSpec(784, 8, "conv", "bernoulli", True, (64,), (16, 32), (1, 28, 28))).to(device)
    result = train.train(model, x[:448], x[448:], TrainConfig(epochs=3, batch_size=64, bf16=bf16),
                         beta=1.0, lr=1e-3, objective="neg_elbo", seed=0)
    assert result.epochs_run == 3 and all(v == v for v in result.best.values())
