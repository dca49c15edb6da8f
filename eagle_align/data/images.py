"""Image loading through qwen-vl-utils, so training sees exactly what users' inference code feeds the model.

Most Qwen-VL agent code pre-resizes screenshots with `qwen_vl_utils.fetch_image` before the processor. Doing
the same here, with the processor's own pixel limits and patch size, makes the resized size (and therefore
every coordinate) identical between training, evaluation and deployment.
"""

from __future__ import annotations

import io

from PIL import Image

from eagle_align.data.schema import DataError, GroundingExample


def load_image(example: GroundingExample, min_pixels: int, max_pixels: int, patch_size: int = 14) -> Image.Image:
    """RGB image of `example`, pre-resized by qwen-vl-utils within [min_pixels, max_pixels].

    patch_size is the vision patch (14 for Qwen2/2.5-VL, 16 for Qwen3-VL): the resize rounds to multiples
    of patch_size · 2. A missing or corrupt image raises DataError naming the example.
    """
    from qwen_vl_utils import fetch_image

    image = example.image
    try:
        if isinstance(image, Image.Image):
            image = decoded_copy(image)
        else:
            with Image.open(image) as handle:
                image = handle.copy()  # read fully now so corrupt files fail here, not inside the processor
        return fetch_image(
            {"image": image, "min_pixels": int(min_pixels), "max_pixels": int(max_pixels)},
            image_patch_size=int(patch_size),
        )
    except Exception as exc:  # PIL and qwen-vl-utils raise many types (OSError, ValueError, AssertionError)
        raise DataError(f"example {example.id!r}: cannot load image {_describe(example.image)}: {exc}") from exc


def image_for_processor(example: GroundingExample, processor) -> Image.Image:
    """`load_image` with the pixel limits and patch size read from `processor` (the ones it resizes with)."""
    from eagle_align.families import pixel_limits

    min_pixels, max_pixels = pixel_limits(processor)
    return load_image(example, min_pixels, max_pixels, processor.image_processor.patch_size)


def decoded_copy(image: Image.Image) -> Image.Image:
    """Decode a lazily opened in-memory image into a new object, leaving the example's image compressed
    (decoding it in place would keep every screenshot of a dataset decoded in memory)."""
    if isinstance(getattr(image, "fp", None), io.BytesIO):  # only lazily opened files have fp
        image = Image.open(io.BytesIO(image.fp.getvalue()))
    image.load()  # corrupt data fails here, naming the example, not inside the processor
    return image


def _describe(image) -> str:
    return f"<PIL {image.size[0]}x{image.size[1]}>" if isinstance(image, Image.Image) else repr(str(image))
