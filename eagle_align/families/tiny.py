"""Tiny, random, complete Qwen-VL checkpoints that load through `from_pretrained` with no network.

Tests and the demo need the real architectures, processors and tokenizers, not mocks, but cannot download
weights. A tiny checkpoint keeps each family's real vision geometry (patch and merge size, normalisation,
M-RoPE) and shrinks only the widths and depths.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

from eagle_align.families.registry import SPECIAL_TOKENS, ModelFamily, get_family

# Qwen's pre-tokenizer: single digits, words, punctuation runs, whitespace. Splitting digits one by one is
# what makes coordinate answers tokenise the same way as on the real models.
_QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_CORPUS_WORDS = (
    "click tap the on in at of a an button icon text field menu search settings save open close cancel ok "
    "submit login home back next page window tab bar toolbar link image red blue green grey white black "
    "square circle left right top bottom corner screen app desktop mobile web point action coordinate "
    "system user assistant You are a helpful GUI agent. Output where to click. name arguments"
).split()


def _training_corpus() -> list[str]:
    lines = [" ".join(_CORPUS_WORDS[i : i + 7]) for i in range(0, len(_CORPUS_WORDS), 3)]
    lines += [f"({x}, {y}) [{x}, {y}] {{\"x\": {x}, \"y\": {y}}} 0.{x}" for x, y in zip(range(0, 1000, 7), range(999, 0, -7))]
    lines += [string.ascii_letters + string.digits + string.punctuation + " \n\t"]
    return lines * 4


def build_tokenizer(vocab_size: int = 1024):
    """Train a byte-level BPE tokenizer with Qwen's digit splitting and the family special tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        model_max_length=32768,
        padding_side="right",
    )


def _tiny_config(family: ModelFamily, tokenizer, hidden: int, layers: int, vision_hidden: int, vision_layers: int):
    from transformers import AutoConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    heads = 4
    head_dim = hidden // heads
    half = head_dim // 2
    # M-RoPE sections (temporal, height, width) must sum to head_dim / 2.
    sections = [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": sections},
    )
    vision = dict(
        depth=vision_layers,
        num_heads=4,
        patch_size=family.patch_size,
        spatial_merge_size=family.merge_size,
        temporal_patch_size=family.temporal_patch_size,
    )
    if family.name == "qwen2_vl":
        vision.update(embed_dim=vision_hidden, hidden_size=hidden, mlp_ratio=2)
    elif family.name == "qwen2_5_vl":
        vision.update(
            hidden_size=vision_hidden,
            intermediate_size=vision_hidden * 2,
            out_hidden_size=hidden,
            window_size=family.factor * 4,
            fullatt_block_indexes=[vision_layers - 1],
        )
    else:
        text.update(head_dim=head_dim)
        text["rope_parameters"]["mrope_interleaved"] = True
        vision.update(
            hidden_size=vision_hidden,
            intermediate_size=vision_hidden * 2,
            out_hidden_size=hidden,
            num_position_embeddings=2304,
            deepstack_visual_indexes=[vision_layers - 1],
        )
    return AutoConfig.for_model(
        family.model_type,
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def build_processor(family: ModelFamily, tokenizer, min_pixels: int | None = None, max_pixels: int | None = None):
    """The family's real processor classes around `tokenizer`, with its published image settings."""
    import transformers

    size = {
        "shortest_edge": min_pixels or family.default_min_pixels,
        "longest_edge": max_pixels or family.default_max_pixels,
    }
    geometry = dict(
        patch_size=family.patch_size,
        merge_size=family.merge_size,
        temporal_patch_size=family.temporal_patch_size,
        image_mean=list(family.image_mean),
        image_std=list(family.image_std),
    )
    image_processor = transformers.Qwen2VLImageProcessor(size=size, **geometry)
    video_processor = getattr(transformers, family.video_processor_class)(**geometry)
    processor_cls = getattr(transformers, family.processor_class)
    return processor_cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=family.chat_template,
    )


def build_tiny_checkpoint(
    family: str,
    out_dir: str | Path,
    seed: int = 0,
    hidden_size: int = 128,
    num_layers: int = 2,
    vision_hidden_size: int = 64,
    vision_layers: int = 2,
    vocab_size: int = 1024,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> Path:
    """Write a complete random checkpoint of `family` to `out_dir` and return the directory.

    The result loads with `AutoModelForImageTextToText.from_pretrained(out_dir)` and
    `AutoProcessor.from_pretrained(out_dir)` offline.
    """
    import transformers

    fam = get_family(family)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(vocab_size)
    config = _tiny_config(fam, tokenizer, hidden_size, num_layers, vision_hidden_size, vision_layers)
    torch.manual_seed(seed)
    model = getattr(transformers, fam.model_class)(config)
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.save_pretrained(out)
    build_processor(fam, tokenizer, min_pixels, max_pixels).save_pretrained(out)
    return out
