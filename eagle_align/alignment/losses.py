"""Alignment losses on decision-token probabilities (docs/method.md).

Everything here is a pure function of probability tensors, so the losses can be checked by hand and reused
outside the trainer. Inputs are P(x_S) ("insertion": only the regions of S kept) and P(x_¬S) ("deletion":
S removed) for one or many examples; outputs are one loss value per example.

Three variants share the same gates (deviation when rank 1 is off-box, redundancy for every off-box rank
r >= 2):

- ``paper``: the terms of the paper, linear in the probabilities.
- ``log``: the same terms in log space, which keep a useful gradient when the model is confident on a shortcut
  (the linear terms' gradient p(1-p) vanishes there).
- ``adaptive_log``: a log penalty on how much an off-box gain exceeds the best on-box gain, zero (with zero
  gradient) when it does not.

Beyond the paper, `necessity_loss` acts on P(x_¬B), the answer with the whole target box removed: evidence that
still gives the click once the target is gone, beyond what a blank screen gives, can only be a shortcut.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

LOSS_VARIANTS = ("paper", "log", "adaptive_log")
# The log variant's bound: log(p) sees p ≥ PROB_EPS and log(1 − p) sees p ≤ 1 − PROB_EPS (in value only).
PROB_EPS = 1e-4


def _bounded(p: torch.Tensor, low: float | None = None, high: float | None = None) -> torch.Tensor:
    """p clamped into [low, high] in value, with p's own gradient (straight-through).

    A plain clamp has gradient 0 outside the bounds, so a log term of a saturated probability (a confident
    shortcut: P(x_S) → 1, P(x_¬S) → 0) would stop training exactly where it is meant to act. Here the value
    stays bounded (finite even at p = 0 or 1, which float32 softmax outputs reach) and the gradient of
    log(bounded p) is the log's gradient at the bound: the right sign and at most 1/PROB_EPS in size. Exact
    log1p in float64 was not chosen: its gradient is infinite at p = 1 and unboundedly large just below it.
    """
    return p + (p.clamp(low, high) - p).detach()


def _log(p: torch.Tensor) -> torch.Tensor:
    """log p, bounded below at log PROB_EPS (in value) and never with a vanishing gradient."""
    return torch.log(_bounded(p, low=PROB_EPS))


def _log1m(p: torch.Tensor) -> torch.Tensor:
    """log(1 − p), bounded below at log PROB_EPS (in value) and never with a vanishing gradient."""
    return torch.log1p(-_bounded(p, high=1.0 - PROB_EPS))


def set_score(
    p_insert: torch.Tensor, p_delete: torch.Tensor, insertion_weight: float = 2.0, deletion_weight: float = 1.0
) -> torch.Tensor:
    """EAGLE's set function F(S) = a·P(x_S) + b·(1 − P(x_¬S)).

    High when S alone supports the answer and removing S destroys it.
    """
    return insertion_weight * p_insert + deletion_weight * (1.0 - p_delete)


def log_set_score(
    p_insert: torch.Tensor, p_delete: torch.Tensor, insertion_weight: float = 2.0, deletion_weight: float = 1.0
) -> torch.Tensor:
    """Log-space set function ℓ(S) = a·log P(x_S) + b·log(1 − P(x_¬S)), each log bounded below (see `_bounded`)."""
    return insertion_weight * _log(p_insert) + deletion_weight * _log1m(p_delete)


def normalised_gains(
    prefix_scores: Sequence[float] | torch.Tensor, insertion_weight: float = 2.0, deletion_weight: float = 1.0
) -> torch.Tensor:
    """Per-rank gains of a greedy ranking: g_1 = F(S_1)/Z, g_r = (F(S_r) − F(S_{r−1}))/Z, Z = a + b.

    Dividing by Z = max F puts gains on a [−1, 1] scale that does not depend on the weights.
    """
    scores = torch.as_tensor(prefix_scores, dtype=torch.float64).detach().flatten()
    return torch.diff(scores, prepend=scores.new_zeros(1)) / (insertion_weight + deletion_weight)


def best_on_box_gain(gains: torch.Tensor, on_box: Sequence[bool] | torch.Tensor) -> torch.Tensor:
    """h = max over on-box ranks of ReLU(g_r), 0 when no ranked region is on-box (detached)."""
    gains = torch.as_tensor(gains).detach().flatten()
    mask = torch.as_tensor(on_box, dtype=torch.bool).flatten()
    if mask.shape != gains.shape:
        raise ValueError(f"on_box has {mask.numel()} entries but there are {gains.numel()} gains")
    if not bool(mask.any()):
        return gains.new_zeros(())
    return torch.relu(gains[mask]).max()


def adaptive_log_penalty(
    gain: torch.Tensor, best_on_box: torch.Tensor | float, full_prob: torch.Tensor | float, beta: float = 2.0
) -> torch.Tensor:
    """(2/β)·log(1 + (q/r)^β) with q = ReLU(g − h) and r = max(h, 1 − P(x), ε) detached.

    The penalty only acts on the part of an off-box gain that exceeds the best on-box gain h; dividing by
    r makes it scale-free (a gain is large relative to what the on-box evidence or the model's remaining
    uncertainty explains). Exactly zero, with zero gradient, when q = 0.
    """
    if beta <= 0:
        raise ValueError(f"adaptive_beta must be > 0, got {beta}")
    h = torch.as_tensor(best_on_box, dtype=gain.dtype, device=gain.device).detach()
    p_full = torch.as_tensor(full_prob, dtype=gain.dtype, device=gain.device).detach()
    r = torch.maximum(torch.maximum(h, 1.0 - p_full), torch.full_like(p_full, PROB_EPS))
    q = torch.relu(gain - h)
    active = q > 0
    # Evaluate the power only where q > 0 so that (q/r)^β with β < 1 cannot produce 0·inf in the backward.
    ratio = torch.where(active, q / r, torch.ones_like(q))
    return torch.where(active, (2.0 / beta) * torch.log1p(ratio**beta), torch.zeros_like(q))


def _check_variant(variant: str) -> None:
    if variant not in LOSS_VARIANTS:
        raise ValueError(f"loss_variant must be one of {LOSS_VARIANTS}, got {variant!r}")


def deviation_loss(
    p_insert: torch.Tensor,
    p_delete: torch.Tensor,
    variant: str = "paper",
    insertion_weight: float = 2.0,
    deletion_weight: float = 1.0,
    best_on_box: torch.Tensor | float = 0.0,
    full_prob: torch.Tensor | float = 1.0,
    beta: float = 2.0,
) -> torch.Tensor:
    """Loss for an off-box top-1 region π_1, from P(x_{π_1}) and P(x_¬{π_1}) (both with gradient).

    Minimising it lowers the answer's probability from the off-box region alone and raises it when that
    region is removed. ``best_on_box`` and ``full_prob`` are only used by ``adaptive_log``.
    """
    _check_variant(variant)
    if variant == "paper":
        return set_score(p_insert, p_delete, insertion_weight, deletion_weight)
    if variant == "log":
        return -insertion_weight * _log1m(p_insert) - deletion_weight * _log(p_delete)
    gain = set_score(p_insert, p_delete, insertion_weight, deletion_weight) / (insertion_weight + deletion_weight)
    return adaptive_log_penalty(gain, best_on_box, full_prob, beta)


def redundancy_loss(
    p_insert: torch.Tensor,
    p_delete: torch.Tensor,
    prev_p_insert: torch.Tensor,
    prev_p_delete: torch.Tensor,
    variant: str = "paper",
    insertion_weight: float = 2.0,
    deletion_weight: float = 1.0,
    best_on_box: torch.Tensor | float = 0.0,
    full_prob: torch.Tensor | float = 1.0,
    beta: float = 2.0,
) -> torch.Tensor:
    """Loss for an off-box region π_r at rank r ≥ 2: its marginal gain F(S_r) − sg[F(S_{r−1})], hinged.

    ``p_insert``/``p_delete`` are P(x_{S_r}) and P(x_¬{S_r}) with gradient; the previous prefix S_{r−1} enters
    under stop-gradient (its probabilities are detached here), so the gradient only pushes on S_r.
    """
    _check_variant(variant)
    prev_p_insert, prev_p_delete = prev_p_insert.detach(), prev_p_delete.detach()
    if variant == "paper":
        after = set_score(p_insert, p_delete, insertion_weight, deletion_weight)
        before = set_score(prev_p_insert, prev_p_delete, insertion_weight, deletion_weight)
        return torch.relu(after - before)
    if variant == "log":
        after = log_set_score(p_insert, p_delete, insertion_weight, deletion_weight)
        before = log_set_score(prev_p_insert, prev_p_delete, insertion_weight, deletion_weight)
        return torch.relu(after - before)
    delta = set_score(p_insert, p_delete, insertion_weight, deletion_weight) - set_score(
        prev_p_insert, prev_p_delete, insertion_weight, deletion_weight
    )
    return adaptive_log_penalty(delta / (insertion_weight + deletion_weight), best_on_box, full_prob, beta)


def necessity_loss(
    p_delete_box: torch.Tensor, variant: str = "log", reference: torch.Tensor | float = 0.0
) -> torch.Tensor:
    """Loss on P(x_¬B), the answer's probability with the whole target box B removed (beyond the paper).

    The deviation gate closes as soon as the target ranks first, even while a cue beside it still predicts the
    click on its own (cue and target always agree on training screens). What the cue alone explains is exactly
    what survives the removal of B, so this term keeps pushing on it, down to ``reference`` and no further:
    the gap q = ReLU(P(x_¬B) − reference), as q for ``paper`` and −log(1 − q) otherwise (bounded like the log
    variant's terms). ``reference`` (detached) is what the click keeps with no evidence at all, P(x_∅) on a
    blank screen: a model that answers from its prior alone (a digit every answer shares, a click it has not
    yet learned to tie to the screen) has no shortcut outside the box, and pushing below the prior asks it to
    recognise the mask instead. 0 pushes all the way (the earlier form). Zero, with zero gradient, at or
    below the reference.
    """
    _check_variant(variant)
    floor = torch.as_tensor(reference, dtype=p_delete_box.dtype, device=p_delete_box.device).detach()
    gap = torch.relu(p_delete_box - floor)
    return gap if variant == "paper" else -_log1m(gap)
