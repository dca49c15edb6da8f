"""`eagle-align tiny`."""

from __future__ import annotations

from eagle_align.families.tiny import build_tiny_checkpoint


def tiny_arguments(parser) -> None:
    from eagle_align.families.registry import FAMILIES

    parser.add_argument("--family", required=True, choices=sorted(FAMILIES))
    parser.add_argument("--out", required=True, help="directory to write the checkpoint to")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--vision-hidden-size", type=int, default=64)
    parser.add_argument("--vision-layers", type=int, default=2)
    parser.add_argument("--min-pixels", type=int, default=None)
    parser.add_argument("--max-pixels", type=int, default=None)


def tiny_command(args) -> int:
    out = build_tiny_checkpoint(
        args.family,
        args.out,
        seed=args.seed,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        vision_hidden_size=args.vision_hidden_size,
        vision_layers=args.vision_layers,
        min_pixels=args.min_pixels,
        max_pixels=args.max_pixels,
    )
    print(f"tiny {args.family} checkpoint written to {out}")
    return 0
