"""Teacher-forced decision-token probabilities of masked screenshot variants, batched.

One sample's prompt + target answer is repeated B times with B masked copies of its image; only the logits
that predict decision tokens are computed (`logits_to_keep` as a position tensor), so the LM head — the
largest matmul for a big vocabulary — runs on a handful of positions instead of the whole sequence.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from itertools import groupby
from operator import itemgetter
from typing import Any

import torch

from eagle_align.attribution.masking import baseline_row, image_row_offsets, mask_image_rows

REDUCTIONS = ("mean", "logmean")
_TEXT_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")


def reduce_token_probs(token_probs: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """A sample's score from its decision tokens' probabilities [..., T]: their mean, or exp(mean log p) for
    "logmean" (one near-zero token then sinks the whole click)."""
    if reduction == "mean":
        return token_probs.mean(-1)
    return token_probs.clamp_min(1e-12).log().mean(-1).exp()


def slice_sample(batch: dict[str, Any], index: int) -> dict[str, Any]:
    """One sample of a collated batch, without padding: text tensors [1, L], its image rows, grid [1, 3].

    `offset` is the padded position of the sample's first token, so decision positions recorded against the
    padded row (left-padded inference batches included) map to `position − offset` here.
    """
    n_samples = batch["input_ids"].shape[0]
    if not 0 <= index < n_samples:
        raise IndexError(f"sample index {index} out of range for a batch of {n_samples}")
    grids = batch["image_grid_thw"].view(-1, 3)
    if grids.shape[0] != n_samples:
        raise ValueError(f"attribution needs one image per sample; batch has {grids.shape[0]} images for {n_samples} samples")
    mask = batch["attention_mask"][index].bool()
    kept = mask.nonzero().view(-1)
    start, end = int(kept[0]), int(kept[-1]) + 1
    offsets = image_row_offsets(grids)
    sample = {key: batch[key][index : index + 1, start:end] for key in _TEXT_KEYS}
    sample["pixel_values"] = batch["pixel_values"][offsets[index] : offsets[index + 1]]
    sample["image_grid_thw"] = grids[index : index + 1]
    sample["offset"] = start
    return sample


@contextlib.contextmanager
def attribution_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (dropout off) and no gradient for the duration; the previous train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _input_device(model: torch.nn.Module) -> torch.device:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None:
        return embeddings.weight.device
    return next(model.parameters()).device


def _is_sharded(module: torch.nn.Module) -> bool:
    """Parameters kept in shards between forwards (FSDP2 DTensors, FSDP1 / ZeRO-3 freed storage).

    Such a module only works inside a full model forward, which gathers its parameters first.
    """
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) or hasattr(p, "ds_id") or p.numel() == 0 for p in module.parameters())


def _find_patch_embed(model: torch.nn.Module) -> torch.nn.Module | None:
    """The vision tower's patch embedding (one linear map per pixel_values row), if it can be called alone."""
    for name, module in model.named_modules():
        if name.endswith("visual.patch_embed") and hasattr(module, "proj"):
            return None if _is_sharded(module) else module
    return None


class DecisionScorer:
    """Scores keep-masks on the merged grid of one sample by p(target decision tokens | masked image).

    `meta` needs `decision_positions` and `decision_token_ids` (torch.long, positions in the padded batch
    row) and `grid_hw`; a collator `SampleMeta` has them. `baseline` is "black", "mean", "background" or a
    ready row. `forwards` counts masked inputs scored. With `grad=False` (attribution) every call runs under
    no_grad in chunks of `batch_size`; with `grad=True` (the trainer's loss) it is one forward with gradient
    and the caller chooses the chunk size and train/eval mode.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        sample: dict[str, Any],
        meta: Any,
        baseline: str | torch.Tensor = "black",
        batch_size: int = 16,
        reduction: str = "mean",
    ) -> None:
        if reduction not in REDUCTIONS:
            raise ValueError(f"score_reduction={reduction!r}; choose one of {', '.join(REDUCTIONS)}")
        if batch_size < 1:
            raise ValueError(f"attribution batch_size={batch_size} must be at least 1")
        self.model, self.batch_size, self.reduction = model, batch_size, reduction
        self.device = _input_device(model)
        self.sample = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in sample.items()}
        self.grid_hw = (int(meta.grid_hw[0]), int(meta.grid_hw[1]))
        positions = torch.as_tensor(meta.decision_positions).long().view(-1) - int(sample.get("offset", 0))
        length = self.sample["input_ids"].shape[1]
        if positions.numel() == 0:
            raise ValueError(f"sample {getattr(meta, 'id', '?')!r} has no decision tokens to attribute")
        if int(positions.min()) < 1 or int(positions.max()) >= length:
            raise ValueError(f"decision positions {positions.tolist()} fall outside the sample (length {length})")
        self.logit_positions = (positions - 1).to(self.device)
        self.target_ids = torch.as_tensor(meta.decision_token_ids).long().view(-1).to(self.device)
        if not torch.equal(self.sample["input_ids"][0, positions.to(self.device)], self.target_ids):
            raise ValueError("decision_token_ids do not match input_ids at decision_positions")
        # Causal attention: tokens from the last decision token on cannot change the logits that predict
        # decision tokens, so they are not fed at all.
        for key in _TEXT_KEYS:
            self.sample[key] = self.sample[key][:, : int(positions.max())]
        if isinstance(baseline, str):
            baseline = baseline_row(
                model, baseline, self.sample["pixel_values"].cpu(), self.sample["image_grid_thw"].cpu()
            )
        self.baseline = baseline.to(self.device)
        self.forwards = 0
        self._full_prob: float | None = None
        self._patch_embed = _find_patch_embed(model)
        self._row_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def n_tokens(self) -> int:
        return int(self.target_ids.numel())

    def row_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The patch embedding of the screenshot's rows and of the baseline row (no-grad scoring only).

        The patch embedding is a linear map applied to each pixel_values row on its own, so a masked variant's
        embeddings are the screenshot's rows where kept and the baseline row's embedding elsewhere: computing
        them once per sample skips the largest per-variant cost of a small vision tower (building the masked
        copy and the convolution over it) with the same result.
        """
        if self._row_embeddings is None:
            dtype = next(self._patch_embed.parameters()).dtype
            rows = self._patch_embed(self.sample["pixel_values"].to(dtype))
            self._row_embeddings = (rows, self._patch_embed(self.baseline.view(1, -1).to(dtype)))
        return self._row_embeddings

    def keep_mask(self, keep_cells: torch.Tensor) -> torch.Tensor:
        """keep_cells as Bool [B, rows, cols] on the model's device, checked against this sample's grid."""
        keep_cells = torch.as_tensor(keep_cells, device=self.device).bool()
        if keep_cells.dim() == 2:
            keep_cells = keep_cells.unsqueeze(0)
        if tuple(keep_cells.shape[1:]) != self.grid_hw:
            raise ValueError(f"keep_cells grid {tuple(keep_cells.shape[1:])} != sample grid {self.grid_hw}")
        return keep_cells

    def token_probs(self, keep_cells: torch.Tensor, grad: bool = False) -> torch.Tensor:
        """p(y_t | x_keep, y_<t) at every decision token, float32 [B, T]; keep_cells is Bool [B, rows, cols]."""
        keep_cells = self.keep_mask(keep_cells)
        if grad:
            return _forward_rows([(self, keep_cells)])[0]
        return _joint_token_probs([(self, keep_cells)], self.batch_size)[0]

    def reduce(self, token_probs: torch.Tensor) -> torch.Tensor:
        return reduce_token_probs(token_probs, self.reduction)

    def score(self, keep_cells: torch.Tensor, grad: bool = False) -> torch.Tensor:
        """P(x_keep) per keep-mask, float32 [B]."""
        return self.reduce(self.token_probs(keep_cells, grad=grad))

    def full_prob(self) -> float:
        """P(x) of the unmasked screenshot (cached after the first call)."""
        if self._full_prob is None:
            self._full_prob = float(self.score(torch.ones(1, *self.grid_hw, dtype=torch.bool))[0])
        return self._full_prob


def score_jointly(pairs: list[tuple[DecisionScorer, torch.Tensor]], batch_size: int) -> list[torch.Tensor]:
    """P(x_keep) for the keep-masks of several samples' scorers, float32 [B_k] per pair, without gradient.

    The masks of all pairs are scored in shared forwards of up to `batch_size` masked inputs, so searches
    that each ask for a few sets at a time fill a forward together (`attribute_samples`). Each sample keeps
    its own prompt, image size and decision tokens: shorter prompts are padded on the right (masked out by
    attention, so the probabilities are those of the sample alone, up to float rounding).
    """
    pairs = [(scorer, scorer.keep_mask(keep)) for scorer, keep in pairs]
    return [scorer.reduce(probs) for (scorer, _), probs in zip(pairs, _joint_token_probs(pairs, batch_size))]


def _joint_token_probs(pairs: list[tuple[DecisionScorer, torch.Tensor]], batch_size: int) -> list[torch.Tensor]:
    """Token probabilities [B_k, T_k] per (scorer, checked keep mask) pair, in no-grad chunks of `batch_size`."""
    rows = [(k, j) for k, (_, keep) in enumerate(pairs) for j in range(keep.shape[0])]
    found: list[list[torch.Tensor]] = [[] for _ in pairs]
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            # runs of one pair's rows inside the chunk
            groups = [(k, [j for _, j in run]) for k, run in groupby(rows[start : start + batch_size], itemgetter(0))]
            results = _forward_rows([(pairs[k][0], pairs[k][1][js]) for k, js in groups])
            for (k, _), probs in zip(groups, results):
                found[k].append(probs)
    return [
        torch.cat(chunks) if chunks else torch.empty(0, scorer.n_tokens, device=scorer.device)
        for (scorer, _), chunks in zip(pairs, found)
    ]


def _forward_rows(groups: list[tuple[DecisionScorer, torch.Tensor]]) -> list[torch.Tensor]:
    """One model forward over the keep masks of one or more samples: token probabilities [n_k, T_k] per group.

    Rows are the groups' masked copies in order, text right-padded to the longest prompt (pad id 0, attention
    0, text type), images in the same order; the LM head runs only at the union of the groups' logit positions.
    """
    model = groups[0][0].model
    if any(scorer.model is not model for scorer, _ in groups):
        raise ValueError("scorers of one joint forward must share one model")
    shortcut = not torch.is_grad_enabled() and all(scorer._patch_embed is not None for scorer, _ in groups)
    length = max(scorer.sample["input_ids"].shape[1] for scorer, _ in groups)
    text: dict[str, list[torch.Tensor]] = {key: [] for key in _TEXT_KEYS}
    pixels, grids = [], []
    for scorer, keep in groups:
        n, grid = keep.shape[0], scorer.sample["image_grid_thw"]
        for key in _TEXT_KEYS:
            row = scorer.sample[key]
            text[key].append(torch.nn.functional.pad(row, (0, length - row.shape[1])).expand(n, -1))
        if shortcut:  # rows enter as keep flags; the patch embedding turns them into cached embeddings
            flags = scorer.sample["pixel_values"].new_ones(scorer.sample["pixel_values"].shape[0], 1)
            pixels.append(mask_image_rows(flags, grid[0], keep, flags.new_zeros(1)))
        else:
            pixels.append(mask_image_rows(scorer.sample["pixel_values"], grid[0], keep, scorer.baseline))
        grids.append(grid.repeat(n, 1))
    positions = torch.unique(torch.cat([scorer.logit_positions for scorer, _ in groups]))
    with _embedded_rows(groups) if shortcut else contextlib.nullcontext():
        outputs = model(
            **{key: torch.cat(rows) for key, rows in text.items()},
            pixel_values=torch.cat(pixels),
            image_grid_thw=torch.cat(grids),
            logits_to_keep=positions,
            use_cache=False,
        )
    log_probs = outputs.logits.float().log_softmax(-1)
    out, first = [], 0
    for scorer, keep in groups:
        n = keep.shape[0]
        picked = log_probs[first : first + n, torch.searchsorted(positions, scorer.logit_positions)]
        out.append(picked.gather(-1, scorer.target_ids.view(1, -1, 1).expand(n, -1, 1)).squeeze(-1).exp())
        scorer.forwards += n
        first += n
    return out


@contextlib.contextmanager
def _embedded_rows(groups: list[tuple[DecisionScorer, torch.Tensor]]) -> Iterator[None]:
    """Let the patch embedding map keep flags to the groups' precomputed row embeddings (`row_embeddings`)."""
    embed = groups[0][0]._patch_embed
    kept = torch.cat([scorer.row_embeddings()[0].repeat(keep.shape[0], 1) for scorer, keep in groups])
    masked = torch.cat([scorer.row_embeddings()[1].expand(scorer.row_embeddings()[0].shape[0] * keep.shape[0], -1)
                        for scorer, keep in groups])
    embed.forward = lambda flags: torch.where(flags.bool(), kept, masked)
    try:
        yield
    finally:
        del embed.forward
