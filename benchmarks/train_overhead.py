"""Training overhead of prior alignment: seconds and peak memory per optimizer step, aligned vs plain SFT.

Fixed configuration (printed with the result): batch 8, align_every 5, 64 grid regions, max_regions 10, run in
three modes, each against its own plain-SFT run:
- `default` (`overhead_ratio`): the library's default path (PriorAlignedConfig's search and losses) on a
  random tiny LoRA checkpoint and synthetic 256×256 screens, every sample eligible (selection="all": a random
  tiny model is never confident, and the point is the method's cost);
- `paper` (`paper_overhead_ratio`): the same with the paper's configuration (`preset="paper"`: efficient search
  with EAGLE's scope 10 / re-sort every 5, deviation and redundancy λ 0.5 / 0.5, linear losses, a = 2, b = 1);
- `realistic` (`realistic_overhead_ratio`): the default path as a user meets it: the demo's tiny Qwen3-VL after
  its SFT warm-up (the demo recipe's align_start_step steps of the demo, fully fine-tuned as there), on the
  demo's training screens, with the demo recipe's selection (confident_correct), so only samples the model
  gets right with confidence are attributed.
Both runs of a mode see the same batches; seconds are per optimizer step averaged over whole align_every
windows, after one warm-up window (`--clock cpu`: process CPU time instead of wall clock, for a CPU that other
jobs load). Each run has its own process so that peak memory (RSS on CPU, max_memory_allocated on CUDA) is
measured cleanly.

    python benchmarks/train_overhead.py [--family qwen2_5_vl] [--windows 2] [--modes default paper realistic]
    python benchmarks/train_overhead.py --modes default --search single_round --n-regions 16 --lambda-redundancy 0

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
from pathlib import Path

import torch
from transformers import TrainerCallback

from eagle_align.attribution.regions import REGION_METHODS
from eagle_align.attribution.settings import SEARCHES
from eagle_align.config import PriorAlignedConfig
from eagle_align.data import GroundingCollator, GroundingExample, load_examples, synth_record
from eagle_align.demo import PIXELS
from eagle_align.experimental import ExperimentalAlignmentConfig
from eagle_align.families import build_tiny_checkpoint, family_of, load_model_and_processor
from eagle_align.families.lora import apply_lora
from eagle_align.trainer import PriorAlignedTrainer

FIXED = dict(per_device_train_batch_size=8, align_every=5)
# Per mode, what differs from the command line's settings (the realistic mode also swaps model and data). The
# paper mode is PriorAlignedConfig(preset="paper"): efficient search with EAGLE's scope 10 / re-sort every 5,
# both losses λ 0.5 / 0.5, linear loss, a = 2, b = 1, black baseline; the fixed keys above still win.
MODES = {
    "default": {},
    "paper": {"preset": "paper"},
    "realistic": {"selection": "confident_correct"},
}
# Effective method settings each aligned run reports (the paper preset fills several of them); `selection`
# (every sample eligible, or confident-correct) is an experimental setting, so the runs use that config class.
REPORTED = ("preset", "search", "n_regions", "region_method", "max_regions", "ranked_regions", "lambda_deviation",
            "lambda_redundancy", "loss_variant", "insertion_weight", "deletion_weight", "baseline", "selection")


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
    """Seconds of every optimizer step: wall clock, or this process's CPU time (`clock="cpu"`).

    A step runs from the end of the previous one (or the start of training) to its own end, so it includes
    the Trainer's prefetch of the step's batches, where PriorAlignedTrainer attributes them (before
    on_step_begin). CPU time is what a quiet machine's wall clock would show for a single-threaded CPU run,
    so it stays comparable on a machine other jobs are loading; it means nothing for CUDA work.
    """

    def __init__(self, clock: str = "wall") -> None:
        self.seconds: list[float] = []
        self._clock = time.process_time if clock == "cpu" else time.perf_counter

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = self._clock()

    def on_step_end(self, args, state, control, **kwargs):
        now = self._clock()
        self.seconds.append(now - self._last)
        self._last = now


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
    steps = FIXED["align_every"] * (args.windows + 1)
    if args.train_data:  # realistic: the demo's warmed-up model, fully fine-tuned as the demo does
        model, processor = load_model_and_processor(args.checkpoint, dtype="float32", min_pixels=PIXELS,
                                                    max_pixels=PIXELS)
        model.requires_grad_(True)
        data = load_examples(args.train_data)
    else:
        model, processor = load_model_and_processor(args.checkpoint, dtype="float32")
        model = apply_lora(model, r=8, alpha=16, dropout=0.05)
        data = examples(FIXED["per_device_train_batch_size"] * steps)
    if cuda:
        model = model.cuda()
    # A preset fills only the settings not passed, so the paper mode passes no method setting of its own.
    method = {} if args.preset else dict(search=args.search, lambda_deviation=args.lambda_deviation,
                                         lambda_redundancy=args.lambda_redundancy)
    config = ExperimentalAlignmentConfig(
        output_dir=tempfile.mkdtemp(), max_steps=steps, alignment=args.mode == "aligned", learning_rate=1e-4,
        report_to="none", save_strategy="no", logging_steps=1000, seed=0, use_cpu=not cuda,
        dataloader_num_workers=0, disable_tqdm=True, loss_chunk_size=args.loss_chunk_size,
        attribution_batch_size=args.attribution_batch_size, n_regions=args.n_regions,
        region_method=args.region_method, max_regions=args.max_regions, selection=args.selection,
        preset=args.preset or None, **method, **FIXED,
    )
    timer = StepTimer(args.clock)
    trainer = PriorAlignedTrainer(model=model, args=config, train_dataset=data, callbacks=[timer],
                                  data_collator=GroundingCollator(processor, family_of(model).default_action_format))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with RssPeak() as rss:
        trainer.train()
    timed = timer.seconds[FIXED["align_every"] :]  # drop the warm-up window
    peak_mb = torch.cuda.max_memory_allocated() / 2**20 if cuda else rss.peak
    growth_mb = peak_mb - (0.0 if cuda else rss.start)
    return {"mode": args.mode, "step_seconds": sum(timed) / len(timed), "peak_mb": peak_mb, "growth_mb": growth_mb,
            "memory": "cuda max_memory_allocated" if cuda else "process RSS",
            "alignment": dict(trainer.alignment_state), "alignment_seconds": dict(trainer.alignment_seconds),
            "settings": {key: getattr(config, key) for key in REPORTED}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", default="qwen2_5_vl")
    parser.add_argument("--windows", type=int, default=2, help="timed align_every windows after the warm-up one")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="step seconds by wall clock, or by process CPU time (with --threads 1 on a loaded CPU)")
    parser.add_argument("--loss-chunk-size", type=int, default=PriorAlignedConfig.loss_chunk_size)
    parser.add_argument("--attribution-batch-size", type=int, default=PriorAlignedConfig.attribution_batch_size)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1 keeps timings stable on a shared machine)")
    parser.add_argument("--search", default=PriorAlignedConfig.search, choices=SEARCHES,
                        help="search of the default and realistic modes (paper: the preset's)")
    parser.add_argument("--n-regions", type=int, default=64, help="the fixed benchmark uses 64; change it to cost a recipe")
    parser.add_argument("--region-method", default="grid", choices=REGION_METHODS,
                        help="the fixed benchmark uses a grid (the library's default is slic)")
    parser.add_argument("--max-regions", type=int, default=10)
    parser.add_argument("--lambda-deviation", type=float, default=PriorAlignedConfig.lambda_deviation)
    parser.add_argument("--lambda-redundancy", type=float, default=PriorAlignedConfig.lambda_redundancy,
                        help="0 = deviation only (no prefix scores, no redundancy forwards)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--demo-root", default="outputs/train_overhead_demo",
                        help="where the realistic mode's warmed-up demo model is built once and reused")
    parser.add_argument("--mode", choices=["sft", "aligned"], help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--train-data", default="", help=argparse.SUPPRESS)
    parser.add_argument("--selection", default="all", help=argparse.SUPPRESS)
    parser.add_argument("--preset", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.clock == "cpu" and torch.cuda.is_available():
        parser.error("--clock cpu measures CPU work only; use the wall clock on CUDA")
    if args.mode:
        print(json.dumps(run_mode(args)))
        return

    torch.set_num_threads(args.threads)  # the realistic mode's warm-up trains in this process
    comparisons = {}
    with tempfile.TemporaryDirectory() as tmp:
        synthetic = str(build_tiny_checkpoint(args.family, os.path.join(tmp, "tiny"), seed=0))
        sft_runs: dict[tuple, dict] = {}
        for name in args.modes:
            settings = {**vars(args), "checkpoint": synthetic, **MODES[name]}
            if name == "realistic":
                settings["checkpoint"], settings["train_data"] = demo_warm_start(args.demo_root)
            runs = {}
            for mode in ("sft", "aligned"):
                if mode == "sft" and settings["checkpoint"] in sft_runs:  # SFT differs only by model and data
                    runs[mode] = sft_runs[settings["checkpoint"]]
                else:
                    tokens = [token for key, value in {**settings, "mode": mode}.items() if key != "modes"
                              for token in (f"--{key.replace('_', '-')}", str(value))]
                    output = subprocess.run([sys.executable, __file__, *tokens], check=True, capture_output=True,
                                            text=True).stdout
                    runs[mode] = json.loads(output.strip().splitlines()[-1])
                    if mode == "sft":
                        sft_runs[settings["checkpoint"]] = runs[mode]
                print(f"{name} {mode}: {runs[mode]['step_seconds']:.3f} s/step, peak {runs[mode]['peak_mb']:.0f} MB",
                      flush=True)
            comparisons[name] = compare(runs["sft"], runs["aligned"], runs["aligned"]["settings"])
            print(f"{name}: overhead_ratio {comparisons[name]['overhead_ratio']:.2f}, "
                  f"memory_ratio {comparisons[name]['memory_ratio']:.2f}", flush=True)

    result = {
        "config": {**FIXED, "n_regions": args.n_regions, "region_method": args.region_method,
                   "max_regions": args.max_regions,
                   "family": args.family, "windows": args.windows,
                   "loss_chunk_size": args.loss_chunk_size, "attribution_batch_size": args.attribution_batch_size,
                   "device": "cuda" if torch.cuda.is_available() else "cpu", "threads": args.threads,
                   "clock": args.clock,
                   "memory": next(iter(comparisons.values()))["memory"]},
        **comparisons.get("default", {}),
        **{f"{name}_{key}": comparisons[name][key] for name in ("paper", "realistic") if name in comparisons
           for key in ("overhead_ratio", "memory_ratio")},
        "modes": comparisons,
    }
    print(json.dumps(result))


def demo_warm_start(root: str) -> tuple[str, str]:
    """The demo's model after its SFT warm-up (align_start_step steps of seed 0) and its training screens.

    Built once under `root` and reused (the warm-up is most of the realistic mode's cost on a CPU) while the
    demo's data settings stay those it was built from (benchmark.json).
    """
    from eagle_align.demo import (
        FAMILIES,
        FAMILY,
        RECIPE,
        SIZES,
        TRAIN_CUE_FRACTION,
        synthetic_split,
        training_config,
    )
    from eagle_align.train import run_training

    out = Path(root)
    warm, train, marker = out / "warm", out / "data" / "train.jsonl", out / "benchmark.json"
    bench = {"family": FAMILY, **FAMILIES[FAMILY], "cue_fraction": TRAIN_CUE_FRACTION}
    current = marker.is_file() and json.loads(marker.read_text()) == bench
    if not current or not (warm / "config.json").is_file() or not train.is_file():
        checkpoint = build_tiny_checkpoint(FAMILY, out / "init", seed=0, min_pixels=PIXELS, max_pixels=PIXELS)
        train = synthetic_split(out / "data", "train", SIZES["full"]["train"], 0, TRAIN_CUE_FRACTION)
        config = training_config(RECIPE, checkpoint, train, warm, 0, False, {"disable_tqdm": True})
        config["max_steps"] = config["align_start_step"]
        run_training(config)
        marker.write_text(json.dumps(bench) + "\n")
    return str(warm), str(train)


def compare(sft: dict, aligned: dict, config: dict) -> dict:
    """Ratios and breakdown of one mode's aligned run against its SFT run."""
    state = aligned["alignment"]
    n_aligned_steps = max(state.get("alignment_steps", 0.0), 1.0)
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
        "alignment_seconds_per_window": (aligned["step_seconds"] - sft["step_seconds"]) * FIXED["align_every"],
    }
    return {
        "mode_config": config,
        "memory": sft["memory"],
        "sft_step_seconds": sft["step_seconds"],
        "aligned_step_seconds": aligned["step_seconds"],
        "overhead_ratio": aligned["step_seconds"] / sft["step_seconds"],
        "sft_peak_mb": sft["peak_mb"],
        "aligned_peak_mb": aligned["peak_mb"],
        "memory_ratio": aligned["peak_mb"] / sft["peak_mb"],
        "breakdown": breakdown,
    }


if __name__ == "__main__":
    main()
