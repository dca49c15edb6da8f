"""Rank synchronisation for data-dependent work (docs/conventions.md).

Attribution and alignment losses do a different amount of work on every rank (different samples, early
stops, nothing selected). Under DDP every rank must run the same number of backward passes through the
wrapped model, and under ZeRO-3 / FSDP every forward gathers parameters collectively, so every rank must also
run the same number of forwards, in the same order relative to every other collective. `gather_counts` and
`pad_passes` let ranks agree on counts and pad the gradient passes; `Lockstep` pairs no-grad forwards one by
one while their number is still unknown. Without an initialised process group they are no-ops, so
single-process code runs the same path.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from collections.abc import Callable, Sequence

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


class Lockstep:
    """Pairs the forwards of a block across ranks, then pads the ranks that finished early.

    Under ZeRO-3 / FSDP every forward gathers parameters collectively. A rank that runs fewer attribution
    forwards (an early stop, nothing selected) would otherwise reach its next collective while a peer is still
    gathering parameters, and the two mismatched collectives hang or abort. Counting first and padding
    afterwards is not enough for that reason. Instead, inside the block, every forward of `model` first joins an
    all-reduce of "still working" flags. On leaving, a finished rank keeps joining with 0 and runs
    `dummy_pass` until every rank is done. Each round is one flag all-reduce and one forward on every rank,
    so collectives pair in order. `padded` counts the dummy passes. Without a process group it does nothing.
    """

    def __init__(
        self, model: torch.nn.Module, dummy_pass: Callable[[], object], device: torch.device | str = "cpu"
    ) -> None:
        self.model, self.dummy_pass, self.device = model, dummy_pass, device
        self.padded = 0
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    def _still_working(self, flag: float) -> bool:
        """All-reduce this rank's flag; True while any rank still has a real forward to run."""
        total = torch.tensor([flag], dtype=torch.float32, device=self.device)
        dist.all_reduce(total)
        return bool(total.item() > 0)

    def __enter__(self) -> Lockstep:
        if is_distributed():
            # prepend: the flag must be exchanged before FSDP's own pre-forward hook gathers parameters.
            self._handle = self.model.register_forward_pre_hook(self._before_forward, prepend=True)
        return self

    def _before_forward(self, module: torch.nn.Module, args: tuple) -> None:
        self._still_working(1.0)  # returns None: a pre-hook's return value would replace the inputs

    def __exit__(self, exc_type, exc, traceback) -> None:
        if self._handle is None:
            return
        self._handle.remove()
        self._handle = None
        if exc_type is not None:
            return  # the error is what matters; peers will time out on their next collective
        while self._still_working(0.0):
            self.dummy_pass()
            self.padded += 1


def end_run(accelerator) -> None:
    """Every rank waits for the others; a multi-process run then tears its process group down, runs Python's
    exit handlers (loggers such as wandb finish there) and leaves without the native libraries' own teardown.

    That teardown (DeepSpeed ZeRO-3 or FSDP2 on gloo) now and then aborted one rank with "terminate called
    without an active exception" after its results were written, turning a finished launch into a failed one.
    A single process returns and exits normally.
    """
    accelerator.wait_for_everyone()
    if accelerator.num_processes == 1:
        return
    accelerator.end_training()
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
