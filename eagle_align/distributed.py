"""Rank synchronisation for data-dependent work (DESIGN.md §6).

Attribution and alignment losses do a different amount of work on every rank (different samples, early
stops, nothing selected). Under DDP every rank must run the same number of backward passes through the
wrapped model, and under ZeRO-3 / FSDP every forward gathers parameters collectively, so every rank must also
run the same number of forwards. The helpers here let ranks agree on counts and pad with dummy passes.
Without an initialised process group they are no-ops, so single-process code runs the same path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def gather_counts(counts: Sequence[float], device: torch.device | str = "cpu") -> torch.Tensor:
    """Every rank's ``counts`` as a float64 tensor [world_size, len(counts)] (one collective).

    One gather serves both maxima (how many passes to pad to) and sums (global example counts).
    """
    local = torch.tensor([float(c) for c in counts], dtype=torch.float64, device=device)
    if not is_distributed():
        return local.unsqueeze(0).cpu()
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    return torch.stack(gathered).cpu()


def all_reduce_sum(values: Sequence[float], device: torch.device | str = "cpu") -> list[float]:
    """Element-wise sum of ``values`` over ranks."""
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().tolist()


def pad_passes(done: int, agreed: int, dummy_pass: Callable[[], None]) -> int:
    """Run ``dummy_pass`` until this rank has done ``agreed`` passes; returns how many were padded."""
    missing = max(0, int(agreed) - int(done))
    for _ in range(missing):
        dummy_pass()
    return missing


class ForwardCounter:
    """Counts forward calls of a model by hooking its input embeddings (run exactly once per forward).

    Counting calls, not masked inputs, is what matters for ZeRO-3 / FSDP: each call gathers parameters.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        if embeddings is None:
            raise ValueError(f"{type(model).__name__} has no input embeddings to count forwards on")
        self.calls = 0
        self._module = embeddings

    def _hook(self, module: torch.nn.Module, args: tuple) -> None:
        self.calls += 1

    @contextlib.contextmanager
    def counting(self) -> Iterator[ForwardCounter]:
        """Count the forwards run inside the block (calls accumulate across blocks)."""
        handle = self._module.register_forward_pre_hook(self._hook)
        try:
            yield self
        finally:
            handle.remove()
