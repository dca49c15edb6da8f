"""Training overhead of prior alignment: seconds and peak memory per optimizer step, aligned vs plain SFT.

Fixed configuration (printed with the result): tiny checkpoint, synthetic 256×256 screens, batch 8,
align_every 5, n_regions 64, max_regions 10, the default search, and every sample eligible for alignment
(selection="all": a random tiny model is never confident, and the point is the method's cost). Both runs see
the same batches; seconds are per optimizer step averaged over whole align_every windows, after one warm-up
window. Each mode runs in its own process so that peak memory (RSS on CPU, max_memory_allocated on CUDA)
is measured cleanly.

    python benchmarks/train_overhead.py [--family qwen2_5_vl] [--windows 2]
    python benchmarks/train_overhead.py --search single_round --n-regions 16 --lambda-redundancy 0   # demo recipe

The last output line is one JSON object with the figures, so runs can be compared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import torch
from transformers import TrainerCallback

from eagle_align.data import GroundingCollator, GroundingExample, synth_record
from eagle_align.models import build_tiny_checkpoint, get_family, load_model_and_processor
from eagle_align.models.lora import apply_lora
from eagle_align.trainer import PriorAlignedConfig, PriorAlignedTrainer

FIXED = dict(per_device_train_batch_size=8, align_every=5, selection="all")


class RssPeak:
    """Peak resident set size (MB) of this process while active, sampled from /proc every few ms."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval, self.peak, self._stop = interval, 0.0, threading.Event()
        self._page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20

    def rss_mb(self) -> float:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * self._page_mb

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss_mb())
            time.sleep(self.interval)

    def __enter__(self) -> RssPeak:
        self.start = self.peak = self.rss_mb()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class StepTimer(TrainerCallback):
    """Wall-clock seconds of every optimizer step."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self._start)


def examples(n: int) -> list[GroundingExample]:
    """Synthetic shortcut screens (256×256, squares in slots), kept in memory."""
    out = []
    for index in range(n):
        image, record = synth_record(index, seed=0)
        out.append(GroundingExample(image=image, image_size=tuple(record["image_size"]),
                                    instruction=record["instruction"], bbox=tuple(record["bbox"]), id=record["id"]))
    return out


def run_mode(args: argparse.Namespace) -> dict:
    """One mode (sft or aligned) in this process: warm-up window, then `windows` timed windows."""
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    model, processor = load_model_and_processor(args.checkpoint, dtype="float32")
    if cuda:
        model = model.cuda()
    model = apply_lora(model, r=8, alpha=16, dropout=0.05)
    steps = FIXED["align_every"] * (args.windows + 1)
    data = examples(FIXED["per_device_train_batch_size"] * steps)
    config = PriorAlignedConfig(
        output_dir=tempfile.mkdtemp(), max_steps=steps, alignment=args.mode == "aligned", learning_rate=1e-4,
        report_to="none", save_strategy="no", logging_steps=1000, seed=0, use_cpu=not cuda,
        dataloader_num_workers=0, disable_tqdm=True, loss_chunk_size=args.loss_chunk_size,
        attribution_batch_size=args.attribution_batch_size, search=args.search, n_regions=args.n_regions,
        max_regions=args.max_regions, lambda_redundancy=args.lambda_redundancy, **FIXED,
    )
    timer = StepTimer()
    trainer = PriorAlignedTrainer(model=model, args=config, train_dataset=data, callbacks=[timer],
                                  data_collator=GroundingCollator(processor, get_family(args.family).default_action_format))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with RssPeak() as rss:
        trainer.train()
    timed = timer.seconds[FIXED["align_every"] :]  # drop the warm-up window
    peak_mb = torch.cuda.max_memory_allocated() / 2**20 if cuda else rss.peak
    growth_mb = peak_mb - (0.0 if cuda else rss.start)
    return {"mode": args.mode, "step_seconds": sum(timed) / len(timed), "peak_mb": peak_mb, "growth_mb": growth_mb,
            "memory": "cuda max_memory_allocated" if cuda else "process RSS",
            "alignment": dict(trainer.alignment_state), "alignment_seconds": dict(trainer.alignment_seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", default="qwen2_5_vl")
    parser.add_argument("--windows", type=int, default=2, help="timed align_every windows after the warm-up one")
    parser.add_argument("--loss-chunk-size", type=int, default=PriorAlignedConfig.loss_chunk_size)
    parser.add_argument("--attribution-batch-size", type=int, default=PriorAlignedConfig.attribution_batch_size)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1 keeps timings stable on a shared machine)")
    parser.add_argument("--search", default=PriorAlignedConfig.search, choices=["exact", "efficient", "single_round"])
    parser.add_argument("--n-regions", type=int, default=64, help="the fixed benchmark uses 64; change it to cost a recipe")
    parser.add_argument("--max-regions", type=int, default=10)
    parser.add_argument("--lambda-redundancy", type=float, default=PriorAlignedConfig.lambda_redundancy,
                        help="0 = deviation only (no prefix scores, no redundancy forwards)")
    parser.add_argument("--mode", choices=["sft", "aligned"], help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = str(build_tiny_checkpoint(args.family, os.path.join(tmp, "tiny"), seed=0))
        results = {}
        for mode in ("sft", "aligned"):
            settings = [token for key, value in vars(args).items() if key not in ("mode", "checkpoint")
                        for token in (f"--{key.replace('_', '-')}", str(value))]
            command = [sys.executable, __file__, "--mode", mode, "--checkpoint", checkpoint, *settings]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[mode] = json.loads(output.strip().splitlines()[-1])
            print(f"{mode}: {results[mode]['step_seconds']:.3f} s/step, peak {results[mode]['peak_mb']:.0f} MB", flush=True)

    sft, aligned = results["sft"], results["aligned"]
    state = aligned["alignment"]
    n_aligned_steps = max(state.get("alignment_steps", 0.0), 1.0)
    window = FIXED["align_every"]
    breakdown = {
        "per_alignment_step": {
            "selected": state.get("selected", 0) / n_aligned_steps,
            "deviation_examples": state.get("deviation_examples", 0) / n_aligned_steps,
            "redundancy_examples": state.get("redundancy_examples", 0) / n_aligned_steps,
            "attribution_forwards": state.get("attribution_forwards", 0) / n_aligned_steps,
            "attribution_seconds": aligned["alignment_seconds"].get("attribution", 0) / n_aligned_steps,
            "loss_forwards": state.get("loss_forwards", 0) / n_aligned_steps,
            "loss_seconds": aligned["alignment_seconds"].get("loss", 0) / n_aligned_steps,
        },
        "sft_seconds_per_step": sft["step_seconds"],
        # On CPU the RSS peak includes the interpreter, libraries and weights; growth is what training added.
        "sft_peak_growth_mb": sft["growth_mb"],
        "aligned_peak_growth_mb": aligned["growth_mb"],
        "alignment_seconds_per_step": aligned["step_seconds"] - sft["step_seconds"],
        "alignment_seconds_per_window": (aligned["step_seconds"] - sft["step_seconds"]) * window,
    }
    result = {
        "config": {**FIXED, "n_regions": args.n_regions, "max_regions": args.max_regions, "search": args.search,
                   "lambda_redundancy": args.lambda_redundancy,
                   "family": args.family, "windows": args.windows,
                   "loss_chunk_size": args.loss_chunk_size, "attribution_batch_size": args.attribution_batch_size,
                   "device": "cuda" if torch.cuda.is_available() else "cpu", "threads": args.threads,
                   "memory": sft["memory"]},
        "sft_step_seconds": sft["step_seconds"],
        "aligned_step_seconds": aligned["step_seconds"],
        "overhead_ratio": aligned["step_seconds"] / sft["step_seconds"],
        "sft_peak_mb": sft["peak_mb"],
        "aligned_peak_mb": aligned["peak_mb"],
        "memory_ratio": aligned["peak_mb"] / sft["peak_mb"],
        "breakdown": breakdown,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
