"""Device policy: which devices the workers get and how many, the arithmetic each device runs
with, the CPU threads each worker takes, and what a device fault is called in a trial's reason."""

from __future__ import annotations

import os

from latentstudy.config import StudyError


def worker_slots(device: str, workers_per_device: int, cpu_workers: int) -> list[tuple[str, dict]]:
    """(torch device, extra env) per worker process: one per GPU x workers_per_device, else CPU."""
    import torch

    gpus = torch.cuda.device_count()
    if device == "cuda" and gpus == 0:
        raise StudyError("search.device = cuda but no CUDA device is visible; allowed here: auto or cpu")
    if device in ("auto", "cuda") and gpus > 0:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = visible.split(",") if visible else [str(i) for i in range(gpus)]
        return [("cuda:0", {"CUDA_VISIBLE_DEVICES": gpu_id}) for gpu_id in ids[:gpus]
                for _ in range(workers_per_device)]
    # LATENTSTUDY_THREADS set by the user wins: several workers sharing a host must not each take
    # every core (oversubscribed OpenMP threads spin and train ~10x slower). Else split the cores
    # this process may run on (a Slurm or taskset allocation, not the whole node).
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = int(os.environ.get("LATENTSTUDY_THREADS") or 0) or max(1, cores // cpu_workers)
    return [("cpu", {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(threads),
                     "LATENTSTUDY_THREADS": str(threads)}) for _ in range(cpu_workers)]


def configure(device: str):
    """The torch device a worker trains on, with its arithmetic set."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        # Adam's moments of weights that stop getting gradient decay into the denormal range, where
        # x86 arithmetic is many times slower; flushed to zero they cost nothing and change nothing
        # above 1e-38.
        torch.set_flush_denormal(True)
    return dev


def apply_thread_limit() -> None:
    """CPU workers split the machine's cores between them (the coordinator sets the share)."""
    import torch

    threads = os.environ.get("LATENTSTUDY_THREADS")
    if threads:
        torch.set_num_threads(int(threads))


def failure_reason(exc: Exception, device) -> str:
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return f"out of memory on {device}"
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
