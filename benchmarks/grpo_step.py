"""Cost of a GRPO step with prior alignment: seconds per optimizer step, plain GRPO vs aligned, in one run.

A tiny random Qwen2.5-VL is first fully fine-tuned (SFT, alignment off) on a few grey screens with one red
button each, so that it answers in its format and samples in-box clicks, as a policy GRPO starts from would.
Then `PriorAlignedGRPOTrainer` (LoRA on q/v, `prompts` × `generations` completions per step) takes GRPO steps
in four modes:
- `plain`: alignment off (TRL's GRPOTrainer on the same rows);
- `default_every1`: the default method, aligning the step's sampled in-box clicks on every step;
- `paper_every1`: `preset: paper` (64-cell grid, efficient search, both losses), on every step;
- `default_every5`: the default method on its default schedule (`align_every` 5).
Each mode runs in its own process (so each has its own peak RSS), `repeats` times, in alternating order (ABCD,
DCBA, ...) to spread the drift of a shared machine over all modes. A run drops its first step (warm-up) and
times the next 5 × `windows` steps, whole `align_every` windows for every mode, by wall clock and by the
process's CPU time (on CPU with one thread, what a quiet machine's wall clock would show, so it stays
comparable while other jobs load the machine; meaningless for CUDA work). Ratios are to `plain` within this
run; compare them, not seconds, across machines.

    python benchmarks/grpo_step.py [--prompts 8] [--generations 4] [--windows 2] [--repeats 2] [--threads 1]

The last output line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from statistics import mean

import numpy as np
import peft
import torch
import transformers
import trl
from PIL import Image
from transformers import TrainerCallback

import eagle_align
from eagle_align.config import PriorAlignedConfig
from eagle_align.data import GroundingCollator, GroundingExample
from eagle_align.families import build_tiny_checkpoint, family_of, load_model_and_processor
from eagle_align.grpo import PriorAlignedGRPOConfig, PriorAlignedGRPOTrainer
from eagle_align.trainer import PriorAlignedTrainer

FAMILY = "qwen2_5_vl"
WINDOW = 5  # the default align_every: every mode times whole windows of it
# Per mode, what its PriorAlignedGRPOConfig sets beyond the shared GRPO settings.
MODES: dict[str, dict] = {
    "plain": {"alignment": False},
    "default_every1": {"align_every": 1},
    "paper_every1": {"preset": "paper", "align_every": 1},
    "default_every5": {},
}
# Mean over the timed steps' logs of these entries (a step without the entry, e.g. no alignment, is left out).
LOGGED = ("rewards/click_in_box/mean", "rewards/answer_format/mean", "align/correct_samples", "align/selected",
          "align/deviation_examples", "align/redundancy_examples", "align/attribution_forwards",
          "align/attribution_seconds", "align/loss_seconds")


def screens(n: int) -> list[GroundingExample]:
    """Grey 196×140 screens, each with one red 40×30 button at one of eight places."""
    out = []
    for index in range(n):
        pixels = np.full((140, 196, 3), 210, dtype=np.uint8)
        x, y = 16 + 37 * (index % 4), 20 + 50 * (index // 4 % 2)
        pixels[y : y + 30, x : x + 40] = (220, 30, 30)
        out.append(GroundingExample(image=Image.fromarray(pixels), image_size=(196, 140),
                                    instruction="click the red button", bbox=(x, y, x + 40, y + 30), id=f"s{index}"))
    return out


def grounded_policy(out_dir: str, n_screens: int, steps: int, use_cpu: bool) -> str:
    """A tiny Qwen2.5-VL fully fine-tuned on the screens (alignment off): it answers in format and its
    samples land in the box often. Returns its folder."""
    checkpoint = build_tiny_checkpoint(FAMILY, os.path.join(out_dir, "tiny"), seed=0, min_pixels=64 * 64,
                                       max_pixels=320 * 320)
    model, processor = load_model_and_processor(str(checkpoint), dtype="float32")
    model.requires_grad_(True)
    sft_dir = os.path.join(out_dir, "sft")
    args = PriorAlignedConfig(output_dir=sft_dir, alignment=False, max_steps=steps, per_device_train_batch_size=4,
                              learning_rate=2e-3, lr_scheduler_type="constant", report_to="none", use_cpu=use_cpu,
                              save_strategy="no", logging_steps=max(steps // 5, 1), seed=0, disable_tqdm=True,
                              dataloader_num_workers=0)
    trainer = PriorAlignedTrainer(model=model, args=args, train_dataset=screens(n_screens), processing_class=processor,
                                  data_collator=GroundingCollator(processor, family_of(model).default_action_format))
    trainer.train()
    trainer.save_model()
    return sft_dir


class StepClock(TrainerCallback):
    """Wall-clock and process CPU seconds of every optimizer step, generation and alignment included (both
    run inside it)."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter(), time.process_time()

    def on_step_end(self, args, state, control, **kwargs):
        self.wall.append(time.perf_counter() - self._start[0])
        self.cpu.append(time.process_time() - self._start[1])


def run_mode(mode: str, policy: str, prompts: int, generations: int, windows: int) -> dict:
    """`1 + WINDOW × windows` GRPO steps of one mode in this process; the timed steps' figures."""
    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    model, processor = load_model_and_processor(policy, dtype="float32")
    if cuda:
        model = model.cuda()
    args = PriorAlignedGRPOConfig(
        output_dir=os.path.join(os.path.dirname(policy), f"grpo_{mode}"), max_steps=1 + WINDOW * windows,
        per_device_train_batch_size=prompts * generations, num_generations=generations, max_completion_length=32,
        temperature=1.0, beta=0.0, learning_rate=1e-4, lr_scheduler_type="constant", bf16=False,
        gradient_checkpointing=False, use_cpu=not cuda, report_to="none", save_strategy="no", logging_steps=1,
        seed=0, dataloader_num_workers=0, disable_tqdm=True, **MODES[mode],
    )
    clock = StepClock()
    trainer = PriorAlignedGRPOTrainer(model, args=args, train_dataset=screens(prompts), processing_class=processor,
                                      peft_config=peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                                  target_modules=["q_proj", "v_proj"]),
                                      callbacks=[clock])
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    timed_logs = [h for h in trainer.state.log_history if "loss" in h][1:]
    logged = {}
    for key in LOGGED:
        values = [h[key] for h in timed_logs if key in h]
        if values:
            logged[key] = mean(values)
    peak_mb = (torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
               * 1024) / 2**20
    return {"mode": mode, "wall_seconds": clock.wall[1:], "cpu_seconds": clock.cpu[1:], "logged": logged,
            "peak_mb": peak_mb, "aligned_steps": trainer.alignment_state.get("alignment_steps", 0.0)}


def summarise(runs: dict[str, list[dict]]) -> dict:
    """Per mode: wall and CPU seconds per step over every timed step of every repeat, their ratios to plain's,
    the logged means and the peak memory."""
    summary = {}
    for clock in ("wall", "cpu"):
        for mode, mode_runs in runs.items():
            seconds = mean(s for run in mode_runs for s in run[f"{clock}_seconds"])
            summary.setdefault(mode, {})[f"{clock}_seconds_per_step"] = round(seconds, 3)
    for mode, mode_runs in runs.items():
        logged = {key: mean(run["logged"][key] for run in mode_runs if key in run["logged"])
                  for key in LOGGED if any(key in run["logged"] for run in mode_runs)}
        for clock in ("wall", "cpu"):
            plain = summary.get("plain", {}).get(f"{clock}_seconds_per_step")
            summary[mode][f"{clock}_ratio_to_plain"] = (
                round(summary[mode][f"{clock}_seconds_per_step"] / plain, 3) if plain else None)
        summary[mode].update({
            "wall_per_repeat": [round(mean(run["wall_seconds"]), 3) for run in mode_runs],
            "aligned_steps_per_run": mode_runs[0]["aligned_steps"],
            "peak_mb": round(max(run["peak_mb"] for run in mode_runs)),
            **{key.replace("/", "_"): round(value, 4) for key, value in logged.items()},
        })
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=8, help="distinct screens per step (each its own prompt)")
    parser.add_argument("--generations", type=int, default=4, help="completions per prompt (num_generations)")
    parser.add_argument("--windows", type=int, default=2,
                        help=f"timed windows of {WINDOW} steps after one warm-up step")
    parser.add_argument("--repeats", type=int, default=2, help="runs per mode, in alternating order")
    parser.add_argument("--sft-steps", type=int, default=300, help="SFT steps that make the tiny model a policy")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (1 keeps timings stable on a shared machine)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--run", choices=list(MODES), help=argparse.SUPPRESS)  # one mode, in a child process
    parser.add_argument("--policy", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.run:
        print(json.dumps(run_mode(args.run, args.policy, args.prompts, args.generations, args.windows)))
        return

    load_before = os.getloadavg()
    started = time.perf_counter()
    runs: dict[str, list[dict]] = {mode: [] for mode in args.modes}
    with tempfile.TemporaryDirectory() as tmp:
        policy = grounded_policy(tmp, args.prompts, args.sft_steps, use_cpu=not torch.cuda.is_available())
        print(f"SFT policy ready ({time.perf_counter() - started:.0f} s)", flush=True)
        for repeat in range(args.repeats):
            order = args.modes if repeat % 2 == 0 else args.modes[::-1]
            for mode in order:
                command = [sys.executable, __file__, "--run", mode, "--policy", policy, "--prompts", str(args.prompts),
                           "--generations", str(args.generations), "--windows", str(args.windows),
                           "--threads", str(args.threads)]
                output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
                run = json.loads(output.strip().splitlines()[-1])
                runs[mode].append(run)
                print(f"repeat {repeat} {mode}: {mean(run['wall_seconds']):.2f} s/step "
                      f"({mean(run['cpu_seconds']):.2f} CPU), {run['aligned_steps']:.0f} aligned steps, "
                      f"peak {run['peak_mb']:.0f} MB", flush=True)

    modes = summarise(runs)
    cuda = torch.cuda.is_available()
    result = {
        "config": {"family": FAMILY, "prompts": args.prompts, "generations": args.generations,
                   "completions_per_step": args.prompts * args.generations, "max_completion_length": 32,
                   "lora": "r8 q_proj,v_proj", "timed_steps_per_run": WINDOW * args.windows,
                   "repeats": args.repeats, "sft_steps": args.sft_steps, "threads": args.threads,
                   "memory": "cuda max_memory_allocated" if cuda else "peak RSS of the mode's process"},
        "ratios": {mode: {"wall": summary["wall_ratio_to_plain"], "cpu": summary["cpu_ratio_to_plain"]}
                   for mode, summary in modes.items() if mode != "plain"},
        "modes": modes,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "device":
                    torch.cuda.get_device_name(0) if cuda else "cpu",
                    "load_average_before": [round(v, 2) for v in load_before],
                    "load_average_after": [round(v, 2) for v in os.getloadavg()],
                    "wall_seconds": round(time.perf_counter() - started)},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "trl": trl.__version__, "peft": peft.__version__,
                     "eagle_align": eagle_align.__version__},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
