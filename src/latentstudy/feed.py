"""How a data split reaches the training engine: resident on the device, or, when a GPU's free
memory is short, staged from pinned host memory a chunk of rows at a time. Both give the engine
the same rows in the same order, so the numbers do not depend on which one ran.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

STAGE_FRACTION = 0.5  # a split stays on the GPU when it needs at most this share of its free memory


class DeviceSplit:
    """A data split as the engine reads it: resident on the device, or staged from host memory."""

    def __init__(self, x: torch.Tensor, device: torch.device | str, staged: bool | None = None):
        self.device = torch.device(device)
        self.n, self.dim = x.shape
        self.staged = not fits(x.numel() * x.element_size(), self.device) if staged is None else staged
        if not self.staged:
            self.x = x.to(self.device)
        else:
            self.x = x.cpu().pin_memory() if self.device.type == "cuda" else x.cpu()

    @property
    def dtype(self) -> torch.dtype:
        return self.x.dtype

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """The rows at index (on the device when resident, on the CPU when staged), on the device."""
        if not self.staged:
            return self.x[index]
        pinned = self.device.type == "cuda"
        buf = torch.empty((len(index), self.dim), dtype=self.x.dtype, pin_memory=pinned)
        torch.index_select(self.x, 0, index, out=buf)
        # The host allocator keeps a pinned block until its copy is done, so buf may be dropped.
        return buf.to(self.device, non_blocking=pinned)

    def order(self, perm: torch.Tensor) -> torch.Tensor:
        """An epoch's permutation where rows() wants it."""
        return perm if self.staged else perm.to(self.device)

    def chunks(self, size: int) -> Iterator[torch.Tensor]:
        for start in range(0, self.n, size):
            yield self.x[start : start + size].to(self.device, non_blocking=self.staged)


def fits(nbytes: int, device: torch.device) -> bool:
    """Resident unless a GPU's free memory is short: the rest is for the stack itself."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= STAGE_FRACTION * free


def as_split(x: DeviceSplit | torch.Tensor) -> DeviceSplit:
    return x if isinstance(x, DeviceSplit) else DeviceSplit(x, x.device, staged=False)
