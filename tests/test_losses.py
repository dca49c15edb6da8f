"""Alignment losses against hand-computed values and gradients (docs/method.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from eagle_align.alignment import (
    adaptive_log_penalty,
    best_on_box_gain,
    deviation_loss,
    log_set_score,
    necessity_loss,
    normalised_gains,
    redundancy_loss,
    set_score,
)
from eagle_align.attribution import DecisionScorer, make_partition, slice_sample
from eagle_align.data.collator import GroundingCollator
from eagle_align.data.schema import GroundingExample
from eagle_align.families import get_family, load_model_and_processor


def leaf(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


def test_set_score_and_gains_by_hand():
    assert set_score(torch.tensor(0.6), torch.tensor(0.3), 2.0, 1.0).item() == pytest.approx(1.9)
    assert set_score(torch.tensor(0.6), torch.tensor(0.3), 1.0, 1.0).item() == pytest.approx(1.3)
    gains = normalised_gains([1.5, 2.1, 2.4], 2.0, 1.0)
    assert gains.tolist() == pytest.approx([0.5, 0.2, 0.1])
    assert log_set_score(torch.tensor(0.5), torch.tensor(0.5), 2.0, 1.0).item() == pytest.approx(3 * math.log(0.5))


def test_best_on_box_gain():
    gains = torch.tensor([0.5, -0.1, 0.2, 0.05])
    assert best_on_box_gain(gains, [False, True, True, True]).item() == pytest.approx(0.2)
    assert best_on_box_gain(gains, [False, True, False, False]).item() == 0.0  # ReLU of a negative gain
    assert best_on_box_gain(gains, [False] * 4).item() == 0.0
    with pytest.raises(ValueError, match="on_box"):
        best_on_box_gain(gains, [True, False])


def test_deviation_paper_value_and_gradient():
    p_ins, p_del = leaf(0.6), leaf(0.3)
    loss = deviation_loss(p_ins, p_del, "paper", 2.0, 1.0)
    assert loss.item() == pytest.approx(1.9)
    loss.sum().backward()
    assert p_ins.grad.item() == pytest.approx(2.0)  # minimising lowers P(x_π1)
    assert p_del.grad.item() == pytest.approx(-1.0)  # ... and raises P(x_¬π1)


def test_deviation_log_value_gradient_and_clamp():
    p_ins, p_del = leaf(0.6), leaf(0.3)
    loss = deviation_loss(p_ins, p_del, "log", 2.0, 1.0)
    assert loss.item() == pytest.approx(-2 * math.log(0.4) - math.log(0.3))
    loss.sum().backward()
    assert p_ins.grad.item() == pytest.approx(2 / 0.4)
    assert p_del.grad.item() == pytest.approx(-1 / 0.3)
    saturated = deviation_loss(leaf(1.0), leaf(0.0), "log", 1.0, 1.0)
    assert torch.isfinite(saturated).all() and saturated.item() == pytest.approx(-2 * math.log(1e-4))


@pytest.mark.parametrize("p_ins, p_del", [(0.99995, 5e-5), (1.0, 0.0)])
def test_log_deviation_keeps_a_finite_gradient_on_a_saturated_shortcut(p_ins, p_del):
    """Past the bound the value stops growing but the gradient still pushes P(x_π1) down and P(x_¬π1) up."""
    p_ins, p_del = leaf(p_ins), leaf(p_del)
    loss = deviation_loss(p_ins, p_del, "log", 2.0, 1.0)
    assert torch.isfinite(loss).all() and loss.item() == pytest.approx(-3 * math.log(1e-4))
    loss.sum().backward()
    assert torch.isfinite(p_ins.grad).all() and torch.isfinite(p_del.grad).all()
    assert p_ins.grad.item() == pytest.approx(2 / 1e-4)  # the log's gradient at the bound
    assert p_del.grad.item() == pytest.approx(-1 / 1e-4)


@pytest.mark.parametrize("p", [0.3, 0.99995, 1.0])
def test_necessity_loss_pushes_the_click_without_the_box_down(p):
    """−log(1 − P(x_¬B)) (log) and P(x_¬B) (paper): finite, and a negative-going gradient even when saturated."""
    p_log, p_lin = leaf(p), leaf(p)
    log_term, linear = necessity_loss(p_log, "log"), necessity_loss(p_lin, "paper")
    assert log_term.item() == pytest.approx(-math.log(max(1 - p, 1e-4)))
    assert linear.item() == pytest.approx(p)
    (log_term.sum() + linear.sum()).backward()
    assert p_log.grad.item() == pytest.approx(1 / max(1 - p, 1e-4))
    assert p_lin.grad.item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="loss_variant"):
        necessity_loss(leaf(p), "l2")


@pytest.mark.parametrize("variant", ["log", "paper"])
def test_necessity_loss_stops_at_the_blank_screen_floor(variant):
    """Above the floor P(x_∅) the loss is that of the gap P(x_¬B) − P(x_∅); at or below it, zero with zero
    gradient (a click the model gives with no evidence at all is no shortcut); the floor gets no gradient."""
    p, floor = leaf(0.9, 0.5, 0.3), leaf(0.4, 0.5, 0.6)
    loss = necessity_loss(p, variant, reference=floor)
    gap = 0.9 - 0.4
    expected = [-math.log(1 - gap) if variant == "log" else gap, 0.0, 0.0]
    assert loss.tolist() == pytest.approx(expected)
    loss.sum().backward()
    assert p.grad[0].item() == pytest.approx(1 / (1 - gap) if variant == "log" else 1.0)
    assert p.grad[1:].tolist() == [0.0, 0.0]
    assert floor.grad is None or not floor.grad.any()
    assert necessity_loss(leaf(0.7), variant, reference=0.0).item() == pytest.approx(
        necessity_loss(leaf(0.7), variant).item())  # floor 0: the earlier form


def test_log_redundancy_keeps_a_gradient_at_saturated_probabilities():
    # Adding π_r made the set fully sufficient and its removal fatal: ℓ(S_r) needs no bound, its gradient is exact.
    after_ins, after_del = leaf(0.99995), leaf(5e-5)
    loss = redundancy_loss(after_ins, after_del, torch.tensor(0.5), torch.tensor(0.5), "log", 2.0, 1.0)
    loss.sum().backward()
    assert after_ins.grad.item() == pytest.approx(2 / 0.99995)
    assert after_del.grad.item() == pytest.approx(-1 / (1 - 5e-5))
    # P(x_¬S_r) past the bound (removing S_r left the answer intact): bounded value, gradient at the bound.
    after_ins, after_del = leaf(0.9), leaf(1.0)
    loss = redundancy_loss(after_ins, after_del, leaf(1e-5), leaf(0.99999), "log", 2.0, 1.0)
    assert torch.isfinite(loss).all()
    assert loss.item() == pytest.approx(2 * math.log(0.9) + math.log(1e-4) - 3 * math.log(1e-4))
    loss.sum().backward()
    assert after_del.grad.item() == pytest.approx(-1 / 1e-4) and after_ins.grad.item() == pytest.approx(2 / 0.9)


@pytest.mark.parametrize("variant", ["paper", "log", "adaptive_log"])
def test_redundancy_gradient_flows_only_through_after(variant):
    after_ins, after_del = leaf(0.7), leaf(0.2)
    prev_ins, prev_del = leaf(0.5), leaf(0.4)
    loss = redundancy_loss(after_ins, after_del, prev_ins, prev_del, variant, 2.0, 1.0, best_on_box=0.0, full_prob=0.9)
    assert loss.item() > 0
    loss.sum().backward()
    assert prev_ins.grad is None and prev_del.grad is None  # stop-gradient on S_{r-1}
    assert after_ins.grad.item() > 0 and after_del.grad.item() < 0


def test_redundancy_paper_and_log_values():
    after, prev = (leaf(0.7), leaf(0.2)), (leaf(0.5), leaf(0.4))
    paper = redundancy_loss(*after, *prev, "paper", 2.0, 1.0)
    assert paper.item() == pytest.approx((1.4 + 0.8) - (1.0 + 0.6))
    paper.sum().backward()
    assert after[0].grad.item() == pytest.approx(2.0) and after[1].grad.item() == pytest.approx(-1.0)
    log = redundancy_loss(*after, *prev, "log", 2.0, 1.0)
    expected = (2 * math.log(0.7) + math.log(0.8)) - (2 * math.log(0.5) + math.log(0.6))
    assert log.item() == pytest.approx(expected)


@pytest.mark.parametrize("variant", ["paper", "log", "adaptive_log"])
def test_redundancy_hinge_is_zero_with_zero_gradient(variant):
    after_ins, after_del = leaf(0.4), leaf(0.6)  # adding π_r lowered the set score
    loss = redundancy_loss(after_ins, after_del, torch.tensor([0.5]), torch.tensor([0.4]), variant, 2.0, 1.0)
    assert loss.item() == 0.0
    loss.sum().backward()
    assert after_ins.grad.item() == 0.0 and after_del.grad.item() == 0.0


def test_adaptive_log_value_and_gradient_by_hand():
    p_ins, p_del, full = leaf(0.6), leaf(0.3), leaf(0.9)
    loss = deviation_loss(p_ins, p_del, "adaptive_log", 2.0, 1.0, best_on_box=0.2, full_prob=full, beta=2.0)
    g = 1.9 / 3
    q, r = g - 0.2, max(0.2, 1 - 0.9, 1e-4)
    assert loss.item() == pytest.approx(math.log1p((q / r) ** 2))
    loss.sum().backward()
    dloss_dg = 2 * (q / r) / (r * (1 + (q / r) ** 2))
    assert p_ins.grad.item() == pytest.approx(dloss_dg * 2 / 3)
    assert p_del.grad.item() == pytest.approx(-dloss_dg * 1 / 3)
    assert full.grad is None  # r is detached


@pytest.mark.parametrize("beta", [0.5, 2.0])
def test_adaptive_log_zero_when_gain_does_not_exceed_best_on_box(beta):
    p_ins, p_del = leaf(0.3, 0.6), leaf(0.5, 0.3)
    # gains 0.3667 and 0.6333 against h = 0.7 and exactly h = 0.6333...
    h = torch.tensor([0.7, 1.9 / 3], dtype=torch.float64)
    loss = deviation_loss(p_ins, p_del, "adaptive_log", 2.0, 1.0, best_on_box=h, full_prob=0.95, beta=beta)
    assert loss.tolist() == [0.0, 0.0]
    loss.sum().backward()
    assert p_ins.grad.tolist() == [0.0, 0.0] and p_del.grad.tolist() == [0.0, 0.0]
    gain = leaf(0.0)
    assert adaptive_log_penalty(gain, 0.0, 0.5, beta).item() == 0.0


def test_bad_variant_and_beta_name_the_option():
    with pytest.raises(ValueError, match="loss_variant"):
        deviation_loss(torch.tensor(0.5), torch.tensor(0.5), "squared")
    with pytest.raises(ValueError, match="adaptive_beta"):
        adaptive_log_penalty(torch.tensor(0.5), 0.0, 0.5, beta=0.0)


def test_deviation_sgd_step_moves_the_probabilities_the_right_way(tiny_checkpoints, family):
    """One SGD step on L_dev lowers P(x_π1) (off-box region alone) and raises P(x_¬π1) (region removed)."""
    model, processor = load_model_and_processor(tiny_checkpoints[family], dtype="float32")
    pixels = np.full((140, 196, 3), 210, dtype=np.uint8)
    pixels[20:50, 16:56] = (220, 30, 30)
    example = GroundingExample(image=Image.fromarray(pixels), image_size=(196, 140),
                               instruction="click the red button", bbox=(16, 20, 56, 50), id="dev")
    batch = GroundingCollator(processor, get_family(family).default_action_format)([example])
    meta = batch["meta"][0]
    partition = make_partition(meta.grid_hw, n_regions=16)
    off_box = int((partition.coverage(meta.box_mask) == 0).nonzero()[0])
    region = torch.zeros(1, partition.n_regions, dtype=torch.bool)
    region[0, off_box] = True
    keep = partition.cells_of(region)
    cells = torch.cat([keep, ~keep])
    model.eval()
    scorer = DecisionScorer(model, slice_sample(batch, 0), meta)
    before = scorer.score(cells)
    probs = scorer.score(cells, grad=True)
    deviation_loss(probs[:1], probs[1:], "paper", 2.0, 1.0).sum().backward()
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    after = scorer.score(cells)
    assert after[0] < before[0], "P(insert) must fall"
    assert after[1] > before[1], "P(delete) must rise"
