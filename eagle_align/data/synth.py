"""Synthetic GUI screenshots with a controllable spurious cue.

The point of this generator is a test of *why* a model clicks: in training the cue (a small marker at a
fixed relation to the target, outside its box) predicts the answer in a chosen fraction of samples; in the
`shifted` split the same marker sits beside a distractor. A model that learned the target keeps clicking
it; a model that learned the shortcut follows the marker. Everything is drawn with PIL from a per-sample
seed, so the same (seed, split, preset, index) always gives the same screen.

The `shortcut` preset has several kinds of shortcut (`SHORTCUTS`), so a method is tested on evidence that sits
off the box in different ways: beside it (`adjacent`), far from it in a title bar whose colour names the slot
(`title_bar`), as a number of dots in a corner (`count`), or nowhere but in the target's usual position
(`position_prior`).
"""

from __future__ import annotations

import json
import random
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from eagle_align.data.schema import DataError
from eagle_align.errors import UsageError

PRESETS = ("shortcut", "gui")
SPLITS = ("train", "test", "shifted")
LAYOUTS = ("mobile", "desktop", "web", "mixed")
RELATIONS = ("top_left", "right", "left", "above", "below")
# Kinds of shortcut of the `shortcut` preset: what, off the target's box, tells where the target is.
SHORTCUTS = ("adjacent", "title_bar", "count", "position_prior")
# The kinds whose cue is drawn in the cue colour (title_bar's colour names the slot; position_prior draws nothing).
COLOURED_SHORTCUTS = ("adjacent", "count")
# Cue colours by name (the presets' defaults are white for shortcut, magenta for gui). How salient the cue is
# decides whether a model takes the shortcut: tiny Qwen3-VL models learn a magenta cue fast, a white one not.
CUE_COLOURS = {"white": (255, 255, 255), "magenta": (255, 0, 255), "cyan": (0, 255, 255), "green": (0, 200, 0),
               "yellow": (255, 230, 0)}
_SHORTCUT_SCREEN = 256  # side of every `shortcut` screen in pixels
# shortcut difficulty → (slots per side, position jitter as a fraction of the slot)
_SHORTCUT_LEVELS = {1: (2, 0.0), 2: (2, 0.12), 3: (3, 0.0), 4: (4, 0.1)}
# Height of the strip that title_bar (top of the screen) and count (bottom) keep free of the slot grid.
_CUE_STRIP = 20
# title_bar: the band's colour per slot index (difficulty 4 has 16 slots), none of them a square's colour
# (red or a DISTRACTOR_COLOURS one) or the screen's grey.
TITLE_BAR_COLOURS = ((255, 230, 0), (0, 200, 220), (0, 170, 60), (255, 255, 255), (0, 0, 0), (255, 150, 200),
                     (120, 70, 20), (0, 0, 110), (160, 255, 0), (110, 110, 0), (200, 170, 255), (110, 0, 30),
                     (150, 255, 200), (60, 60, 60), (255, 200, 150), (120, 190, 255))
# count: side of one dot, and the most pixels between the left edges of two dots: 32 (one merged cell of a 256-px
# Qwen3-VL screen per dot, so a tiny model counts by which cells are lit) where the screen's width allows.
_DOT, _DOT_MAX_PITCH = 8, 32
# position_prior: the slot the target sits in on the screens that carry the prior (top-left).
PRIOR_SLOT = 0
# gui difficulty → (screen scale, content columns, content rows)
_GUI_LEVELS = {1: (1.0, 2, 2), 2: (1.5, 3, 3), 3: (2.5, 4, 4)}
_GUI_BASE = {"mobile": (216, 384), "desktop": (384, 240), "web": (384, 288)}
_WORDS = ("Save", "Open", "Cancel", "Search", "Settings", "Login", "Submit", "Next", "Back", "Home", "Share",
          "Delete", "Edit", "Send", "Close", "Help", "Print", "Export", "Upload", "Profile")
_FIELDS = ("email", "password", "search", "name", "address", "phone", "city", "comment")
_COLOURS = {"red": (220, 50, 47), "blue": (38, 110, 210), "green": (40, 160, 70), "orange": (240, 140, 20),
            "purple": (130, 70, 190), "teal": (20, 150, 150), "black": (30, 30, 30)}
_SHAPES = ("circle", "square", "triangle", "diamond", "plus")
# Colours of the shortcut preset's non-target squares, from most to least distinct from the red target
# (RGB distance 251 … 48): the closer, the weaker the target's own evidence against the cue.
# "red" (distance 0) only with a distractor shape other than the target's square: then the shape alone tells
# the target apart.
DISTRACTOR_COLOURS = {"blue": _COLOURS["blue"], "purple": _COLOURS["purple"], "orange": _COLOURS["orange"],
                      "pumpkin": (235, 118, 28), "vermilion": (230, 95, 35), "red": _COLOURS["red"]}
# Colours the shortcut preset's target square may take (`target_colour`, default red): a colour a pretrained
# grounding model never saw as the target makes fine-tuning teach the target anew, as a new domain does.
TARGET_COLOURS = {name: _COLOURS[name] for name in ("red", "green", "teal", "blue", "purple", "orange")}
# Shapes of the shortcut preset's non-target items (the target is always a square, "click the red square").
DISTRACTOR_SHAPES = ("square", "circle", "diamond")


def shortcut_square(difficulty: int) -> int:
    """The `shortcut` preset's default square side: half a slot (64 px at difficulty 1)."""
    return _SHORTCUT_SCREEN // _SHORTCUT_LEVELS[difficulty][0] // 2


def shortcut_margin(difficulty: int, square_size: int | None = None) -> int:
    """Free pixels between a `shortcut` square and its slot's edge: the largest cue that fits beside it."""
    side, jitter = _SHORTCUT_LEVELS[difficulty]
    slot = _SHORTCUT_SCREEN // side
    return (slot - (square_size or shortcut_square(difficulty))) // 2 - round(jitter * slot)


@lru_cache(maxsize=16)
def _font(size: int):
    try:
        return ImageFont.load_default(size)
    except (TypeError, OSError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _label(draw: ImageDraw.ImageDraw, left_middle, text: str, colour, font) -> None:
    """Text vertically centred on `left_middle` (bitmap fonts do not support anchors)."""
    top, bottom = draw.textbbox((0, 0), text, font=font)[1::2]
    draw.text((left_middle[0], left_middle[1] - (top + bottom) / 2), text, fill=colour, font=font)


def _box_relation(box, size: int, gap: int, relation: str) -> list[int]:
    """A size×size square outside `box` at `relation`, `gap` pixels away."""
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    h = size // 2
    origin = {
        "top_left": (x1 - gap - size, y1 - gap - size),
        "right": (x2 + gap, cy - h),
        "left": (x1 - gap - size, cy - h),
        "above": (cx - h, y1 - gap - size),
        "below": (cx - h, y2 + gap),
    }[relation]
    return [origin[0], origin[1], origin[0] + size, origin[1] + size]


def _shape(draw: ImageDraw.ImageDraw, shape: str, box, colour) -> None:
    x1, y1, x2, y2 = box
    cx, cy, w = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1
    if shape == "circle":
        draw.ellipse([x1, y1, x2 - 1, y2 - 1], fill=colour)
    elif shape == "square":
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, y1), (x2 - 1, y2 - 1), (x1, y2 - 1)], fill=colour)
    elif shape == "diamond":
        draw.polygon([(cx, y1), (x2 - 1, cy), (cx, y2 - 1), (x1, cy)], fill=colour)
    else:
        t = max(2, w // 4)
        draw.rectangle([cx - t / 2, y1, cx + t / 2, y2 - 1], fill=colour)
        draw.rectangle([x1, cy - t / 2, x2 - 1, cy + t / 2], fill=colour)


def _shortcut_screen(rng: random.Random, difficulty: int, cue_size: int | None, distractor_colour: str,
                     square_size: int | None = None, unmarked: bool = False, empty_slot_fraction: float = 0.0,
                     decoy_fraction: float = 0.0, empty_rng: random.Random | None = None,
                     decoy_rng: random.Random | None = None, distractor_shape: str = "square",
                     target_slot: int | None = None, grid_span: tuple[int, int] = (0, _SHORTCUT_SCREEN),
                     target_colour: str = "red") -> dict:
    """Grey screen, one square per slot; the target is the only one in `target_colour` ("click the red square").

    `cue_size` (None: half the margin around a default-sized square), `distractor_colour` and `square_size`
    (None: half a slot) set how salient the cue is against the target's own evidence (a red square of that side
    among squares of that colour). The cue sits in the middle of the free margin beside the target. `unmarked`
    draws the target in the distractors' colour too: nothing on the screen but a cue tells it apart.
    `empty_slot_fraction` leaves that share of distractor slots without a square (drawn from `empty_rng`; one
    distractor always stays): an empty slot is not the target either, so "the one slot unlike the others" no
    longer identifies it and only the target's own red does. On `decoy_fraction` of the screens (drawn from
    `decoy_rng`) one drawn distractor is red too: a look-alike that only the cue tells apart, while the
    target's box still holds its own red. `distractor_shape` draws the distractors as circles or diamonds in
    their boxes: with red distractors only the target's corners tell it apart. `target_slot` puts the target in
    that slot instead of a random one (the random draw is made anyway, so the rest of the screen stays as
    drawn); `grid_span` is the rows (top, bottom) the slot grid fills, leaving the rest free for a cue.
    """
    side, jitter = _SHORTCUT_LEVELS[difficulty]
    screen = _SHORTCUT_SCREEN
    slot = screen // side
    grid_top, grid_bottom = grid_span
    slot_height = (grid_bottom - grid_top) // side
    square = square_size or shortcut_square(difficulty)
    image = Image.new("RGB", (screen, screen), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    drawn_slot = rng.randrange(side * side)
    target_slot = drawn_slot if target_slot is None else target_slot
    distractor_slots = [i for i in range(side * side) if i != target_slot]
    empty = {i for i in distractor_slots if empty_slot_fraction and empty_rng.random() < empty_slot_fraction}
    if len(empty) == len(distractor_slots):  # one distractor stays: a shifted screen's cue sits beside one
        empty.remove(empty_rng.choice(distractor_slots))
    decoy = (decoy_rng.choice([i for i in distractor_slots if i not in empty])
             if decoy_fraction and decoy_rng.random() < decoy_fraction else None)
    boxes = []
    for index in range(side * side):
        row, col = divmod(index, side)
        dx = round(rng.uniform(-jitter, jitter) * slot) if jitter else 0
        dy = round(rng.uniform(-jitter, jitter) * slot) if jitter else 0
        x1 = col * slot + (slot - square) // 2 + dx
        y1 = grid_top + row * slot_height + (slot_height - square) // 2 + dy
        box = [x1, y1, x1 + square, y1 + square]
        boxes.append(box)
        if index in empty:
            continue
        in_target_colour = (index == target_slot and not unmarked) or index == decoy
        _shape(draw, "square" if index in (target_slot, decoy) else distractor_shape, box,
               TARGET_COLOURS[target_colour] if in_target_colour else DISTRACTOR_COLOURS[distractor_colour])
    margin = shortcut_margin(difficulty, square)
    cue = cue_size or max(6, shortcut_margin(difficulty) // 2)
    kept = [i for i in distractor_slots if i not in empty]
    return dict(image=image, draw=draw, target=boxes[target_slot], distractors=[boxes[i] for i in kept],
                slot_boxes=boxes, target_slot=target_slot, distractor_slots=kept,
                instruction=f"click the {target_colour} square", platform=None, ui_type="icon",
                cue_size=cue, cue_gap=max(0, (margin - cue) // 2), cue_colour=(255, 255, 255),
                relation="top_left", extra={"slot": target_slot, "target_marked": not unmarked,
                                            "empty_slots": sorted(empty), "decoy_slot": decoy})


def _bars(draw: ImageDraw.ImageDraw, layout: str, size, scale: float, rng: random.Random) -> tuple[int, int, int, int]:
    """Draw the chrome of a layout; return the content area (x1, y1, x2, y2)."""
    width, height = size
    bar = round(22 * scale)
    text = _font(max(8, round(10 * scale)))
    accent = rng.choice(list(_COLOURS.values()))
    if layout == "mobile":
        draw.rectangle([0, 0, width, bar // 2 + 4], fill=(20, 20, 20))
        draw.text((6, 2), "9:41", fill=(255, 255, 255), font=_font(max(7, round(8 * scale))))
        draw.rectangle([0, bar // 2 + 4, width, bar * 2], fill=accent)
        draw.text((10, bar // 2 + 10), rng.choice(("Inbox", "Shop", "Photos", "Notes")), fill=(255, 255, 255), font=text)
        draw.rectangle([0, height - bar - 4, width, height], fill=(235, 235, 235))
        for i in range(4):
            cx = width * (2 * i + 1) // 8
            _shape(draw, _SHAPES[i], [cx - bar // 4, height - bar + 2, cx + bar // 4, height - bar // 2 + 2], (90, 90, 90))
        return 0, bar * 2, width, height - bar - 4
    if layout == "desktop":
        draw.rectangle([0, 0, width, bar], fill=(225, 225, 230))
        for i, colour in enumerate(((240, 90, 80), (245, 190, 50), (90, 200, 90))):
            draw.ellipse([6 + i * bar * 0.7, bar * 0.3, 6 + i * bar * 0.7 + bar * 0.4, bar * 0.7], fill=colour)
        draw.rectangle([0, bar, width, bar * 2], fill=(245, 245, 245))
        for i, word in enumerate(("File", "Edit", "View", "Help")):
            draw.text((8 + i * 36 * scale, bar + 4), word, fill=(40, 40, 40), font=text)
        side = round(width * 0.18)
        draw.rectangle([0, bar * 2, side, height], fill=(210, 214, 220))
        for i in range(3):
            draw.rectangle([8, bar * 2 + 10 + i * bar, side - 8, bar * 2 + 10 + i * bar + bar // 2], fill=(180, 186, 196))
        return side, bar * 2, width, height
    draw.rectangle([0, 0, width, bar * 2], fill=accent)
    draw.text((8, bar // 2), "Acme", fill=(255, 255, 255), font=_font(max(9, round(13 * scale))))
    for i, word in enumerate(("Products", "Docs", "About")):
        draw.text((width * 0.45 + i * 48 * scale, bar * 0.7), word, fill=(255, 255, 255), font=text)
    draw.rectangle([0, height - bar, width, height], fill=(60, 60, 60))
    draw.text((8, height - bar + 4), "(c) 2024 Acme", fill=(200, 200, 200), font=text)
    return 0, bar * 2, width, height - bar


def _gui_screen(rng: random.Random, difficulty: int, layout: str, relation: str) -> dict:
    """A mobile/desktop/web screen with buttons, text fields and icons; one of them is the target."""
    layout = rng.choice(LAYOUTS[:3]) if layout == "mixed" else layout
    scale, cols, rows = _GUI_LEVELS[difficulty]
    base_w, base_h = _GUI_BASE[layout]
    size = (round(base_w * scale / 4) * 4, round(base_h * scale / 4) * 4)
    image = Image.new("RGB", size, (250, 250, 250) if layout != "desktop" else (255, 255, 255))
    draw = ImageDraw.Draw(image)
    cx1, cy1, cx2, cy2 = _bars(draw, layout, size, scale, rng)
    cue = max(5, round(6 * scale))
    gap = max(2, round(2 * scale))
    cell_w, cell_h = (cx2 - cx1) // cols, (cy2 - cy1) // rows
    pad = cue + 2 * gap  # room for the cue on every side of every element
    cells = rng.sample(range(cols * rows), k=min(cols * rows, 2 + difficulty * 2))
    words, fields = rng.sample(_WORDS, len(cells)), rng.sample(_FIELDS, min(len(cells), len(_FIELDS)))
    icons = rng.sample([(c, s) for c in _COLOURS for s in _SHAPES], len(cells))
    font = _font(max(8, round(10 * scale)))
    elements = []
    for n, cell in enumerate(cells):
        row, col = divmod(cell, cols)
        ax1, ay1 = cx1 + col * cell_w + pad, cy1 + row * cell_h + pad
        avail_w, avail_h = cell_w - 2 * pad, cell_h - 2 * pad
        kind = rng.choice(("button", "field", "icon")) if n < len(fields) else rng.choice(("button", "icon"))
        if kind == "icon":
            side = min(avail_w, avail_h, round(rng.uniform(16, 24) * scale))
            w, h = side, side
        else:
            w = min(avail_w, round(rng.uniform(0.7, 1.0) * avail_w))
            h = min(avail_h, round(rng.uniform(16, 22) * scale))
        x1 = ax1 + rng.randint(0, avail_w - w)
        y1 = ay1 + rng.randint(0, avail_h - h)
        box = [x1, y1, x1 + w, y1 + h]
        if kind == "button":
            colour = rng.choice(list(_COLOURS.values()))
            draw.rounded_rectangle([x1, y1, x1 + w - 1, y1 + h - 1], radius=max(2, h // 4), fill=colour)
            _label(draw, (x1 + 4, y1 + h / 2), words[n], (255, 255, 255), font)
            instruction = f"click the {words[n]} button"
        elif kind == "field":
            draw.rectangle([x1, y1, x1 + w - 1, y1 + h - 1], fill=(255, 255, 255), outline=(150, 150, 150))
            _label(draw, (x1 + 4, y1 + h / 2), fields[n].capitalize(), (160, 160, 160), font)
            instruction = f"click the {fields[n]} field"
        else:
            colour_name, shape = icons[n]
            _shape(draw, shape, box, _COLOURS[colour_name])
            instruction = f"click the {colour_name} {shape} icon"
        elements.append((box, instruction, "icon" if kind == "icon" else "text"))
    target = rng.randrange(len(elements))
    return dict(image=image, draw=draw, target=elements[target][0],
                distractors=[e[0] for i, e in enumerate(elements) if i != target],
                slot_boxes=[e[0] for e in elements], target_slot=target,
                distractor_slots=[i for i in range(len(elements)) if i != target],
                instruction=elements[target][1], platform=layout, ui_type=elements[target][2],
                cue_size=cue, cue_gap=gap, cue_colour=(255, 0, 255), relation=relation, extra={"layout": layout})


def _position_prior_target(prior_rng: random.Random, cue_fraction: float, split: str,
                           difficulty: int) -> tuple[bool, int | None]:
    """position_prior's (prior shown, target slot): on `cue_fraction` of the screens the target sits in
    PRIOR_SLOT (train/test) or in any other slot (shifted: the prior slot holds a distractor); elsewhere the
    slot is left to the screen's own draw (None)."""
    if prior_rng.random() >= cue_fraction:
        return False, None
    if split != "shifted":
        return True, PRIOR_SLOT
    slots = _SHORTCUT_LEVELS[difficulty][0] ** 2
    return True, prior_rng.choice([i for i in range(slots) if i != PRIOR_SLOT])


def _cue_slot(shortcut: str, split: str, screen: dict, rng: random.Random) -> int:
    """The slot (gui: the element) the cue names: the target's, or on shifted screens a distractor's (for
    position_prior always PRIOR_SLOT, where the target is moved away from instead)."""
    if shortcut == "position_prior":
        return PRIOR_SLOT
    return rng.choice(screen["distractor_slots"]) if split == "shifted" else screen["target_slot"]


def _draw_cue(shortcut: str, screen: dict, slot: int, colour, relation: str) -> tuple[list[int] | None, tuple | None]:
    """Draw the cue of kind `shortcut` naming `slot`; its (xyxy box, colour), (None, None) where nothing is drawn."""
    draw, (width, height) = screen["draw"], screen["image"].size
    if shortcut == "position_prior":
        return None, None
    if shortcut == "title_bar":
        colour = TITLE_BAR_COLOURS[slot]
        draw.rectangle([0, 0, width - 1, _CUE_STRIP - 1], fill=colour)
        return [0, 0, width, _CUE_STRIP], colour
    if shortcut == "count":  # slot + 1 dots, left to right from the bottom-left corner
        left, top = (_CUE_STRIP - _DOT) // 2, height - _CUE_STRIP + (_CUE_STRIP - _DOT) // 2
        pitch = min(_DOT_MAX_PITCH, (width - 2 * left) // len(screen["slot_boxes"]))
        for dot in range(slot + 1):
            x = left + dot * pitch
            draw.ellipse([x, top, x + _DOT - 1, top + _DOT - 1], fill=colour)
        return [left, top, left + slot * pitch + _DOT, top + _DOT], colour
    box = _box_relation(screen["slot_boxes"][slot], screen["cue_size"], screen["cue_gap"], relation)
    draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=colour)
    return box, colour


def synth_record(index: int, seed: int, split: str = "train", preset: str = "shortcut", cue_fraction: float = 0.0,
                 difficulty: int = 1, layout: str = "mixed", cue_relation: str | None = None,
                 cue_colour: str | None = None, cue_size: int | None = None,
                 distractor_colour: str = "blue", square_size: int | None = None,
                 unmarked_target_fraction: float = 0.0, empty_slot_fraction: float = 0.0,
                 decoy_fraction: float = 0.0, distractor_shape: str = "square",
                 shortcut: str = "adjacent", target_colour: str = "red") -> tuple[Image.Image, dict]:
    """One screenshot and its JSONL record (image path left to the caller); deterministic per arguments.

    `cue_colour` (a CUE_COLOURS name, None = the preset's own), `cue_size` and `distractor_colour` (shortcut
    preset only) change only pixels, not the layout or the answer; `square_size` changes the boxes' size, not
    their centres. Shortcut only: `unmarked_target_fraction` draws that share of targets in the distractors'
    colour, `empty_slot_fraction` leaves that share of distractor slots empty and `decoy_fraction` draws a
    second red square on that share of screens, each decided by draws of its own, so that with any of them at 0
    the screens stay as they were; `distractor_shape` changes only the distractors' pixels and `target_colour`
    only the target's (and a decoy's) pixels and the instruction's colour word. `shortcut` (a
    SHORTCUTS kind) is what the cue is; "adjacent" draws exactly the screens of before the other kinds existed.
    """
    rng = random.Random(f"eagle-synth:{preset}:{seed}:{split}:{index}")
    prior_shown = False
    if preset == "shortcut":
        unmarked = random.Random(f"eagle-synth-unmarked:{seed}:{split}:{index}").random() < unmarked_target_fraction
        target_slot = None
        if shortcut == "position_prior":  # the target's slot is the cue: decided before the screen is drawn
            prior_rng = random.Random(f"eagle-synth-prior:{seed}:{split}:{index}")
            prior_shown, target_slot = _position_prior_target(prior_rng, cue_fraction, split, difficulty)
        grid_span = {"title_bar": (_CUE_STRIP, _SHORTCUT_SCREEN),
                     "count": (0, _SHORTCUT_SCREEN - _CUE_STRIP)}.get(shortcut, (0, _SHORTCUT_SCREEN))
        screen = _shortcut_screen(rng, difficulty, cue_size, distractor_colour, square_size, unmarked,
                                  empty_slot_fraction, decoy_fraction,
                                  random.Random(f"eagle-synth-empty:{seed}:{split}:{index}"),
                                  random.Random(f"eagle-synth-decoy:{seed}:{split}:{index}"), distractor_shape,
                                  target_slot, grid_span, target_colour)
    else:
        screen = _gui_screen(rng, difficulty, layout, cue_relation or "right")
    relation = cue_relation or screen["relation"]
    has_cue = prior_shown if shortcut == "position_prior" else rng.random() < cue_fraction
    colour = CUE_COLOURS[cue_colour] if cue_colour is not None else screen["cue_colour"]
    cue_box, anchor, cue_slot, drawn_colour = None, None, None, None
    if has_cue:
        cue_slot = _cue_slot(shortcut, split, screen, rng)
        anchor = screen["slot_boxes"][cue_slot]
        cue_box, drawn_colour = _draw_cue(shortcut, screen, cue_slot, colour, relation)
    image = screen["image"]
    record = {
        "instruction": screen["instruction"],
        "bbox": screen["target"],
        "image_size": list(image.size),
        "platform": screen["platform"],
        "ui_type": screen["ui_type"],
        "source": f"synthetic-{preset}",
        "id": f"synth-{preset}-{split}-{seed}-{index:05d}",
        "extra": {"split": split, "preset": preset, "seed": seed, "difficulty": difficulty, "shortcut": shortcut,
                  "cue_bbox": cue_box, "cue_on": None if not has_cue else ("distractor" if split == "shifted" else "target"),
                  "cue_anchor_bbox": anchor,
                  "cue_relation": relation if has_cue and shortcut == "adjacent" else None,
                  "cue_colour": list(drawn_colour) if drawn_colour is not None else None,
                  "distractor_bboxes": screen["distractors"], **screen["extra"]},
    }
    if preset == "shortcut":
        record["extra"]["cue_slot"] = cue_slot
    return image, record


def generate_synthetic(out_dir: str | Path, n: int, seed: int = 0, preset: str = "shortcut",
                       cue_fraction: float = 0.0, split: str = "train", difficulty: int = 1,
                       layout: str = "mixed", cue_relation: str | None = None, cue_colour: str | None = None,
                       cue_size: int | None = None, distractor_colour: str = "blue",
                       square_size: int | None = None, unmarked_target_fraction: float = 0.0,
                       empty_slot_fraction: float = 0.0, decoy_fraction: float = 0.0,
                       distractor_shape: str = "square", shortcut: str = "adjacent",
                       target_colour: str = "red") -> Path:
    """Write `n` screenshots to `out_dir/images/` and their records to `out_dir/{split}.jsonl`; return that path.

    preset "shortcut": 256×256 grey screen, squares in slots, the red one is the target (tiny models learn
    it on CPU); "gui": mobile/desktop/web screens with buttons, text fields and icons. cue_fraction: share of
    samples with the cue; it sits at `cue_relation` of the target in "train"/"test" and of a distractor in
    "shifted". difficulty: 1 (easiest) and up; see the synthetic data card for what each level means.
    cue_colour: a CUE_COLOURS name; None keeps the preset's own (shortcut: white, gui: magenta).
    shortcut only: cue_size in pixels (None: the preset's, 16 at difficulty 1; at most `shortcut_margin`),
    distractor_colour, the other squares' colour (how distinct the red target is), and square_size, every
    square's side in pixels (None: half a slot, 64 at difficulty 1; how much evidence the target itself offers),
    and unmarked_target_fraction, the share of screens whose target is not red but the distractors' colour
    (there the cue is the only evidence: a cue more reliable than the target's own look), and
    empty_slot_fraction, the share of distractor slots left empty (one distractor always stays), so that finding
    the target by elimination ("the square unlike the others") stops working and only its red does, and
    decoy_fraction, the share of screens with a second red square (a look-alike distractor): there only the cue
    tells the target apart, yet its box still holds its own red, and
    distractor_shape, the distractors' shape ("square", "circle", "diamond"): with distractor_colour "red" the
    target's square corners are its only evidence, weaker than its colour, and
    shortcut, what the cue is (SHORTCUTS; data_cards/synthetic.md): "adjacent" (default) a square beside the
    element, "title_bar" a band across the top whose colour names the slot, "count" slot + 1 dots in the
    bottom-left corner, "position_prior" no mark at all but the target in PRIOR_SLOT; cue_relation and cue_size
    belong to "adjacent", cue_colour to "adjacent" and "count", and
    target_colour, the target square's colour (TARGET_COLOURS, default "red"; the instruction names it): a colour
    a pretrained model never saw as the target makes fine-tuning learn the target anew.
    """
    levels = _SHORTCUT_LEVELS if preset == "shortcut" else _GUI_LEVELS
    fractions = {"unmarked_target_fraction": unmarked_target_fraction, "empty_slot_fraction": empty_slot_fraction,
                 "decoy_fraction": decoy_fraction}
    checks = [
        (preset in PRESETS, f"preset={preset!r}; choose one of {', '.join(PRESETS)}"),
        (split in SPLITS, f"split={split!r}; choose one of {', '.join(SPLITS)}"),
        (layout in LAYOUTS, f"layout={layout!r}; choose one of {', '.join(LAYOUTS)}"),
        (cue_relation is None or cue_relation in RELATIONS, f"cue_relation={cue_relation!r}; choose one of {RELATIONS}"),
        (cue_colour is None or cue_colour in CUE_COLOURS,
         f"cue_colour={cue_colour!r}; choose one of {', '.join(CUE_COLOURS)}"),
        (0.0 <= cue_fraction <= 1.0, f"cue_fraction={cue_fraction} must be within [0, 1]"),
        (isinstance(n, int) and n > 0, f"n={n!r} must be a positive integer"),
        (difficulty in levels, f"difficulty={difficulty!r}; preset {preset!r} has levels {sorted(levels)}"),
        (preset == "shortcut" or (cue_size is None and distractor_colour == "blue" and square_size is None
                                  and distractor_shape == "square" and not any(fractions.values())),
         f"cue_size, distractor_colour, distractor_shape, square_size, {', '.join(fractions)} apply to the "
         "shortcut preset only"),
        *[(0.0 <= value <= 1.0, f"{name}={value} must be within [0, 1]") for name, value in fractions.items()],
        (distractor_colour in DISTRACTOR_COLOURS,
         f"distractor_colour={distractor_colour!r}; choose one of {', '.join(DISTRACTOR_COLOURS)}"),
        (shortcut in SHORTCUTS, f"shortcut={shortcut!r}; choose one of {', '.join(SHORTCUTS)}"),
        (preset == "shortcut" or shortcut == "adjacent", f"shortcut={shortcut!r} applies to the shortcut preset "
         "only (the gui preset's cue is always adjacent)"),
        (shortcut == "adjacent" or (cue_relation is None and cue_size is None),
         f"cue_relation and cue_size apply to shortcut='adjacent' only, not {shortcut!r}"),
        (cue_colour is None or shortcut in COLOURED_SHORTCUTS,
         f"cue_colour applies to shortcut {' or '.join(map(repr, COLOURED_SHORTCUTS))} only: {shortcut!r} "
         + ("colours its band by the slot" if shortcut == "title_bar" else "draws no cue")),
        (distractor_shape in DISTRACTOR_SHAPES,
         f"distractor_shape={distractor_shape!r}; choose one of {', '.join(DISTRACTOR_SHAPES)}"),
        (target_colour in TARGET_COLOURS,
         f"target_colour={target_colour!r}; choose one of {', '.join(TARGET_COLOURS)}"),
        (preset == "shortcut" or target_colour == "red", "target_colour applies to the shortcut preset only"),
        (not (DISTRACTOR_COLOURS.get(distractor_colour) == TARGET_COLOURS.get(target_colour)
              and distractor_shape == "square"),
         f"distractor_colour={distractor_colour!r} is the target's colour: it needs a distractor_shape other than "
         "'square' (the target is the square of that colour)"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    if preset == "shortcut" and square_size is not None and not 8 <= square_size <= shortcut_square(difficulty):
        raise UsageError(f"square_size={square_size!r} must be within [8, {shortcut_square(difficulty)}] at "
                         f"difficulty {difficulty} (half a slot)")
    margin = shortcut_margin(difficulty, square_size) if preset == "shortcut" else 0
    if cue_size is not None and not 1 <= cue_size <= margin:
        raise UsageError(f"cue_size={cue_size!r} must be within [1, {margin}] at difficulty {difficulty} "
                         f"(the free margin beside a square)")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    path = out / f"{split}.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for index in range(n):
            image, record = synth_record(index, seed, split, preset, cue_fraction, difficulty, layout, cue_relation,
                                         cue_colour, cue_size, distractor_colour, square_size,
                                         unmarked_target_fraction, empty_slot_fraction, decoy_fraction,
                                         distractor_shape, shortcut, target_colour)
            name = f"images/{split}_{index:05d}.png"
            image.save(out / name)
            # Stated, so a screen wider than 1000 px whose boxes all sit below 1000 is not taken for 0-1000 space.
            record = {"image": name, **record, "bbox_format": "xyxy"}
            _check(record)
            handle.write(json.dumps(record) + "\n")
    return path


def _check(record: dict) -> None:
    """The generator's own guarantees: cue outside the target and inside the screen."""
    cue, (x1, y1, x2, y2) = record["extra"]["cue_bbox"], record["bbox"]
    if cue is None:
        return
    width, height = record["image_size"]
    overlaps = cue[0] < x2 and x1 < cue[2] and cue[1] < y2 and y1 < cue[3]
    if overlaps or cue[0] < 0 or cue[1] < 0 or cue[2] > width or cue[3] > height:
        raise DataError(f"synthetic record {record['id']}: cue {cue} overlaps the target or leaves the screen")
