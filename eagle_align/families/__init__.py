"""Model families, loading and tiny offline checkpoints."""

from eagle_align.families.loading import (
    family_of,
    load_model_and_processor,
    load_processor,
    pixel_limits,
    quantization_config,
    set_pixel_limits,
)
from eagle_align.families.registry import FAMILIES, ModelFamily, detect_family, get_family
from eagle_align.families.space import CoordinateSpace, coordinate_space_of, read_coordinate_space
from eagle_align.families.tiny import build_tiny_checkpoint

__all__ = [
    "FAMILIES",
    "CoordinateSpace",
    "ModelFamily",
    "build_tiny_checkpoint",
    "coordinate_space_of",
    "detect_family",
    "family_of",
    "get_family",
    "load_model_and_processor",
    "load_processor",
    "pixel_limits",
    "quantization_config",
    "read_coordinate_space",
    "set_pixel_limits",
]
