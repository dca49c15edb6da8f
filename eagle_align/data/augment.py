"""Box-guided crop augmentation: the paper's "Box-Guided Aug. SFT" baseline, as an option of any training run.

Per training example, with probability `probability`, the screenshot is cut to a random window whose width and
height are each an independent U(scale) multiple of the image's own (a window larger than the image pads it),
placed so that the target box stays whole inside it; box and click are then moved into the new image's pixels.
The model sees the target at other positions, other scales and with other surroundings, so context that merely
co-occurs with the target (a cue beside it, a position prior) predicts the answer less often. Since the result
is an ordinary GroundingExample in pixels of the new image, every action format and coordinate space renders
it correctly without knowing about the crop.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import replace

from PIL import Image

from eagle_align.data.schema import DataError, GroundingExample, _is_number
from eagle_align.errors import UsageError

AUGMENT_KINDS = ("box_crop",)


class BoxGuidedCrop:
    """Callable GroundingExample -> GroundingExample: a random window around the target box (see the module).

    Per axis the window spans `scale` times the image side, drawn uniformly; where it is smaller than the image
    it lies inside it, where larger it holds the whole image, padded with `pad_colour`; among those positions it
    is drawn uniformly from the ones that keep the box (a point-only example: the point) whole inside. A box too
    large for the window's size leaves the example as it is. The crop is recorded in the new example's
    `extra["box_guided_crop"]`: the window in the original image's pixels (beyond its edges where padded) and
    the original size.

    Deterministic: each draw uses its own random.Random seeded by (seed, example id, how often this object has
    drawn for that id), so the k-th view of an example is the same in every run with the same seed, and differs
    between epochs. Inside a DataLoader worker the worker's seed (drawn per epoch from the training seed) is
    mixed in as well, because the workers' copies of this object start each epoch with their counts at zero.
    """

    def __init__(self, probability: float = 0.5, scale: tuple[float, float] = (0.5, 1.5),
                 pad_colour: tuple[int, int, int] = (0, 0, 0), seed: int = 0):
        if not _is_number(probability) or not 0.0 <= probability <= 1.0:
            raise UsageError(f"probability={probability!r} must be a number within [0, 1]")
        if not (isinstance(scale, (list, tuple)) and len(scale) == 2 and all(_is_number(s) and s > 0 for s in scale)
                and scale[0] <= scale[1]):
            raise UsageError(f"scale={scale!r} must be [low, high] with 0 < low <= high, e.g. [0.5, 1.5]")
        if not (isinstance(pad_colour, (list, tuple)) and len(pad_colour) == 3
                and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in pad_colour)):
            raise UsageError(f"pad_colour={pad_colour!r} must be [R, G, B] with integers 0-255")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise UsageError(f"seed={seed!r} must be an integer")
        self.probability = float(probability)
        self.scale = (float(scale[0]), float(scale[1]))
        self.pad_colour = tuple(pad_colour)
        self.seed = seed
        self._draws: Counter[str] = Counter()  # example id -> draws made for it so far

    def __call__(self, example: GroundingExample) -> GroundingExample:
        if self.probability == 0.0:
            return example
        rng = self._rng(example.id)
        if rng.random() >= self.probability:
            return example
        window = self._window(rng, example)
        if window is None:
            return example
        return self._crop(example, window)

    def _rng(self, example_id: str) -> random.Random:
        """The generator of this object's next draw for `example_id` (see the class docstring)."""
        from torch.utils.data import get_worker_info

        worker = get_worker_info()
        count = self._draws[example_id]
        self._draws[example_id] += 1
        return random.Random(f"box-crop:{self.seed}:{example_id}:{count}:{worker.seed if worker else ''}")

    def _window(self, rng: random.Random, example: GroundingExample) -> tuple[int, int, int, int] | None:
        """A window (left, top, right, bottom) in the image's pixels that keeps the target whole, or None."""
        if example.bbox is not None:
            target = example.bbox
        else:  # a point: the pixel it falls in, so the moved point stays strictly inside the new image
            x, y = math.floor(example.point[0]), math.floor(example.point[1])
            target = (x, y, x + 1, y + 1)
        window = []
        for axis in (0, 1):
            side = example.image_size[axis]
            size = max(1, round(rng.uniform(*self.scale) * side))
            # Inside the image where the window is smaller, holding all of it where larger; keeping the target.
            low = max(math.ceil(target[axis + 2]) - size, min(0, side - size))
            high = min(math.floor(target[axis]), max(0, side - size))
            if low > high:
                return None
            window.append((rng.randint(low, high), size))
        (left, width), (top, height) = window
        return left, top, left + width, top + height

    def _crop(self, example: GroundingExample, window: tuple[int, int, int, int]) -> GroundingExample:
        """`example` seen through `window`: new image (padded where the window leaves the image), box and point
        moved by the window's corner."""
        left, top, right, bottom = window
        canvas = Image.new("RGB", (right - left, bottom - top), self.pad_colour)
        canvas.paste(_rgb(example), (-left, -top))
        bbox = None if example.bbox is None else (example.bbox[0] - left, example.bbox[1] - top,
                                                  example.bbox[2] - left, example.bbox[3] - top)
        point = None if example.point is None else (example.point[0] - left, example.point[1] - top)
        crop = {"window": list(window), "source_size": list(example.image_size)}
        return replace(example, image=canvas, image_size=canvas.size, bbox=bbox, point=point,
                       extra={**example.extra, "box_guided_crop": crop})


def augment_from_config(value: dict | None, seed: int = 0) -> BoxGuidedCrop | None:
    """The augmentation a recipe's `augment` key asks for: None (off) or a mapping such as
    {kind: box_crop, probability: 0.5, scale: [0.5, 1.5], pad_colour: [0, 0, 0]}; a bad value raises a one-line
    UsageError naming `augment`. `seed` is the run's, so a run's crops repeat with its seed."""
    if value is None:
        return None
    example = "e.g. {kind: box_crop, probability: 0.5, scale: [0.5, 1.5]}"
    if not isinstance(value, dict):
        raise UsageError(f"augment={value!r} must be null or a mapping, {example}")
    if value.get("kind") not in AUGMENT_KINDS:
        raise UsageError(f"augment: kind={value.get('kind')!r}; choose one of {', '.join(AUGMENT_KINDS)}, {example}")
    settings = {key: item for key, item in value.items() if key != "kind"}
    allowed = ("probability", "scale", "pad_colour")
    unknown = [key for key in settings if key not in allowed]
    if unknown:
        raise UsageError(f"augment: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                         f"box_crop takes {', '.join(allowed)}")
    try:
        return BoxGuidedCrop(**settings, seed=seed)
    except UsageError as error:
        raise UsageError(f"augment: {error}") from None


def _rgb(example: GroundingExample) -> Image.Image:
    """The example's screenshot decoded as RGB; DataError naming the example when it cannot be read."""
    try:
        if isinstance(example.image, Image.Image):
            return example.image.convert("RGB")
        with Image.open(example.image) as handle:
            return handle.convert("RGB")
    except Exception as exc:  # PIL raises several types for unreadable files
        raise DataError(f"example {example.id!r}: cannot load image for box-guided crop: {exc}") from exc

