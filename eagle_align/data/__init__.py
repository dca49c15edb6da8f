"""Grounding data: the example type, loaders for our JSONL / HF datasets / ScreenSpot layouts and imported formats
(LLaMA-Factory / ShareGPT, other column names), the JSONL writer, image loading, synthetic shortcut GUIs, the
box-guided crop augmentation and the collator that turns examples into Qwen-VL batches."""

from eagle_align.data.augment import BoxGuidedCrop
from eagle_align.data.collator import IGNORE_INDEX, GroundingCollator, SampleMeta, box_mask
from eagle_align.data.images import image_for_processor, load_image
from eagle_align.data.importers import write_jsonl
from eagle_align.data.loaders import BBOX_FORMATS, FORMATS, detect_format, load_examples
from eagle_align.data.schema import DataError, ExampleSet, GroundingExample, read_image_size, validate_example
from eagle_align.data.synth import PRESETS, SPLITS, generate_synthetic, synth_record

__all__ = [
    "BBOX_FORMATS",
    "BoxGuidedCrop",
    "FORMATS",
    "IGNORE_INDEX",
    "PRESETS",
    "SPLITS",
    "DataError",
    "ExampleSet",
    "GroundingCollator",
    "GroundingExample",
    "SampleMeta",
    "detect_format",
    "generate_synthetic",
    "image_for_processor",
    "load_examples",
    "load_image",
    "box_mask",
    "read_image_size",
    "synth_record",
    "validate_example",
    "write_jsonl",
]
