"""`eagle-align hub`."""

from __future__ import annotations

from eagle_align.hub import merge_adapter, push_adapter


def push_arguments(parser) -> None:
    parser.add_argument("adapter_dir", help="directory written by `eagle-align train`")
    parser.add_argument("--repo-id", required=True, help="namespace/name on the Hub")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--token", default=None, help="defaults to the cached login / HF_TOKEN")
    parser.add_argument("--commit-message", default="Upload eagle-align adapter")


def push_command(args) -> int:
    url = push_adapter(args.adapter_dir, args.repo_id, args.private, args.token, args.commit_message)
    print(f"pushed {args.adapter_dir} to {args.repo_id}: {url}")
    return 0


def merge_arguments(parser) -> None:
    parser.add_argument("--base", required=True, help="base model Hub id or directory")
    parser.add_argument("--adapter", required=True, help="LoRA adapter directory or Hub id")
    parser.add_argument("--out", required=True, help="directory for the merged model")
    parser.add_argument("--dtype", default="float32", help="dtype to merge and save in (float32, bfloat16)")


def merge_command(args) -> int:
    report = merge_adapter(args.base, args.adapter, args.out, args.dtype)
    print(
        f"merged {report['merged_modules']} LoRA modules into {report['out_dir']} "
        f"(max logit diff vs base+adapter {report['max_logit_diff']:.2e})"
    )
    return 0
