"""Two real processes (accelerate launch --multi_gpu → gloo on a CPU machine) with uneven alignment work.

One run trains under DDP; the other shards the model with FSDP2 itself (accelerate does not shard on CPU) and
runs one alignment step, where every forward is a collective.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from scripts.sharded_align import recipe_wrap_policy

from eagle_align import distributed
from eagle_align.families import load_model_and_processor
from eagle_align.families.lora import apply_lora
from eagle_align.recipes import RECIPES_DIR, copy_recipe

SCRIPTS = Path(__file__).parent / "scripts"
REPO = Path(__file__).parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_single_process_helpers_are_no_ops():
    assert not distributed.is_distributed() and distributed.world_size() == 1
    assert distributed.gather_counts([3, 1.5]).tolist() == [[3.0, 1.5]]
    assert distributed.all_reduce_sum([2, 4]) == [2.0, 4.0]
    calls = []
    assert distributed.pad_passes(2, 5, lambda: calls.append(1)) == 3 and len(calls) == 3
    assert distributed.pad_passes(5, 2, lambda: calls.append(1)) == 0 and len(calls) == 3
    model = torch.nn.Linear(2, 2)
    with distributed.Lockstep(model, lambda: calls.append(1)) as lockstep:
        model(torch.ones(1, 2))
        assert not model._forward_pre_hooks  # no process group: no flag exchange
    assert lockstep.padded == 0 and len(calls) == 3


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}


def accelerate_launch(setup: list[str], script: str, checkpoint: str, out_dir: Path) -> list[str]:
    """The `accelerate launch` command line for a script in tests/scripts with launcher options `setup`."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    return [accelerate, "launch", *setup, "--dynamo_backend", "no", str(SCRIPTS / script), checkpoint, str(out_dir)]


def read_ranks(out_dir: Path, stderr: str) -> list[dict]:
    missing = [r for r in (0, 1) if not (out_dir / f"rank{r}.json").exists()]
    assert not missing, f"ranks {missing} wrote nothing (not a 2-process run?)\n{stderr[-3000:]}"
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in (0, 1)]


def launch_two_ranks(script: str, checkpoint: str, out_dir: Path, config_file: str | None = None) -> list[dict]:
    """`accelerate launch` the script on two CPU processes; each rank's rank{r}.json, in rank order.

    Without `config_file` the launch is plain `--multi_gpu` (gloo DDP); with one, that recipe's settings, run
    from the repository root as a user would.
    """
    setup = ["--config_file", config_file] if config_file else ["--multi_gpu", "--mixed_precision", "no"]
    setup += ["--num_processes", "2", "--num_machines", "1", "--main_process_port", str(free_port())]
    result = subprocess.run(accelerate_launch(setup, script, checkpoint, out_dir), env=ENV, capture_output=True,
                            text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return read_ranks(out_dir, result.stderr)


def assert_ranks_in_step(ranks: list[dict], out_dir: Path) -> None:
    """Same passes on both ranks, padding used, identical logs and identical LoRA weights afterwards."""
    assert [r["world_size"] for r in ranks] == [2, 2]
    for key in ("grad_forwards", "no_grad_forwards", "backwards"):
        assert ranks[0][key] == ranks[1][key], (key, ranks)
    # Both ranks aligned two samples per micro-step, so gradient chunks beyond the SFT forwards did run.
    assert ranks[0]["grad_forwards"] > 4 and ranks[0]["no_grad_forwards"] > 4
    logs = ranks[0]["logs"]
    # Step 1: rank 1 selected nothing (2 samples per micro-step, all rank 0's); then 2 on each rank.
    assert [h["align/selected"] for h in logs] == [2, 4], logs
    # Rank 1 selected nothing, then its search settled after one region per sample while rank 0 ranked three.
    assert all(h["align/padded_passes"] > 0 for h in logs), logs
    assert ranks[1]["attribution_forwards"] < ranks[0]["attribution_forwards"], ranks
    assert logs == ranks[1]["logs"]

    weights = [torch.load(out_dir / f"lora_rank{r}.pt") for r in (0, 1)]
    assert weights[0].keys() == weights[1].keys() and weights[0]
    for name in weights[0]:
        assert weights[0][name].numel() > 0 and torch.equal(weights[0][name], weights[1][name]), name


@pytest.mark.slow
def test_two_ranks_with_uneven_selection_stay_in_step(tiny_checkpoints, tmp_path):
    ranks = launch_two_ranks("ddp_align.py", tiny_checkpoints["qwen2_5_vl"], tmp_path)
    assert ranks[0]["distributed_type"] == "MULTI_CPU"
    assert_ranks_in_step(ranks, tmp_path)


@pytest.mark.slow
def test_multi_node_recipe_on_two_local_machines(tiny_checkpoints, tmp_path):
    """eagle_align/recipes/accelerate/multi_node.yaml as two `accelerate launch` commands (machine ranks 0 and 1)."""
    port = str(free_port())
    launches = [
        subprocess.Popen(
            accelerate_launch(
                ["--config_file", str(RECIPES_DIR / "accelerate" / "multi_node.yaml"), "--num_machines", "2", "--num_processes", "2",
                 "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", port,
                 "--mixed_precision", "no"],
                "ddp_align.py", tiny_checkpoints["qwen2_5_vl"], tmp_path,
            ),
            env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for rank in (0, 1)
    ]
    try:
        outputs = [launch.communicate(timeout=600) for launch in launches]
    finally:
        for launch in launches:
            launch.kill()  # no-op once finished; a machine left waiting for a failed peer must not linger
    for launch, (stdout, stderr) in zip(launches, outputs):
        assert launch.returncode == 0, stdout[-2000:] + stderr[-4000:]
    ranks = read_ranks(tmp_path, outputs[0][1])
    assert ranks[0]["distributed_type"] == "MULTI_CPU"
    assert_ranks_in_step(ranks, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_recipe_trains_with_uneven_selection(tiny_checkpoints, tmp_path, stage):
    """The shipped ZeRO recipe, on DeepSpeed's CPU accelerator: the trainer's DeepSpeed backward and, for
    ZeRO-3, attribution forwards that each gather partitioned parameters."""
    pytest.importorskip("deepspeed")
    config = str(copy_recipe(f"deepspeed_zero{stage}", tmp_path / "recipes")[0])  # the JSON copied beside it
    ranks = launch_two_ranks("ddp_align.py", tiny_checkpoints["qwen2_5_vl"], tmp_path, config_file=config)
    assert ranks[0]["distributed_type"] == "DEEPSPEED" and ranks[0]["zero_stage"] == stage
    if stage == 3:
        assert ranks[0]["partitioned_params"] > 0
    assert_ranks_in_step(ranks, tmp_path)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_fsdp_recipe_wraps_every_layer_and_vision_block(tiny_checkpoints, family):
    """accelerate's own FSDP2 policy for eagle_align/recipes/accelerate/fsdp.yaml, on a LoRA model of each family."""
    model, _ = load_model_and_processor(tiny_checkpoints[family], dtype="float32")
    model = apply_lora(model, r=4, alpha=8)
    policy, plugin = recipe_wrap_policy(model)
    units = [m for m in model.modules() if policy(m)]
    config = model.config
    assert len(units) == config.text_config.num_hidden_layers + config.vision_config.depth
    assert {type(m).__name__ for m in units} == set(model._no_split_modules)
    # The final save must write the adapter itself, which only a full state dict does.
    assert "FULL_STATE_DICT" in str(plugin.state_dict_type)


@pytest.mark.slow
def test_sharded_alignment_step_keeps_every_forward_paired(tiny_checkpoints, tmp_path):
    """Under FSDP2 a rank with nothing to attribute must join each of its peer's parameter gathers."""
    ranks = launch_two_ranks("sharded_align.py", tiny_checkpoints["qwen2_5_vl"], tmp_path)
    assert ranks[0]["fsdp_units"] == 4  # 2 decoder layers + 2 vision blocks of the tiny model
    for key in ("forwards", "backwards"):
        assert ranks[0][key] == ranks[1][key], (key, ranks)
    assert ranks[0]["metrics"]["align/selected"] == 2  # both of rank 0's samples; none of rank 1's
    assert ranks[0]["metrics"]["align/padded_passes"] > 0 and ranks[1]["padded_after"] > 0, ranks
    assert ranks[0]["backwards"] > 0 and ranks[0]["grad_norm"] > 0
    # Attribution on sharded parameters (gathered per forward) ranks and scores as before sharding.
    assert ranks[0]["ranking_after"] == ranks[0]["ranking_before"]
    assert ranks[0]["prob_diff"] < 1e-5
