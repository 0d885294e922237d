"""The GPU preset's placement on a Ray node that declares 4 GPUs: engine i and learner rank i share GPU i."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.config import load_config
from cluster.placement import Placement, PlacementError, start_actors

GPU_PRESET = Path(__file__).resolve().parents[2] / "configs" / "bfcl-qwen2.5-1.5b-gpu.yaml"
# What a CPU machine cannot run of the preset (bf16 engines, a 16k context for a 2k-token model, 8 CPUs
# a GPU); the placement settings (workers, world size, GPU shares, cluster.placement) stay the preset's.
ON_CPU = ["rollout.dtype=float32", "rollout.max_total_tokens=1024", "rollout.max_new_tokens=64",
          "rollout.worker_cpus=1", "learner.cpus_per_rank=1", "learner.param_dtype=float32",
          "learner.attn_implementation=eager", "learner.gradient_checkpointing=false", "learner.kl_coef=0"]


@pytest.mark.slow
def test_the_gpu_preset_pairs_one_engine_with_one_learner_rank_per_gpu(tiny_model_dir, ray_local):
    config = load_config(GPU_PRESET, [f"trainer.model={tiny_model_dir}", *ON_CPU])
    assert (config.rollout.workers, config.learner.world_size, config.rollout.worker_gpus) == (2, 2, 0.5)
    pool, learners, placement = start_actors(config, tiny_model_dir)
    try:
        engines, ranks = pool.gpu_ids(), learners.gpu_ids()
        learners.push_weights(pool)  # rank 0 hands the weights to both engines across the group
    finally:
        pool.close()
        learners.close()
        placement.remove()
    # Without the placement group Ray packs both 0.5-GPU engines onto one GPU and both ranks onto another
    assert all(len(ids) == 1 for ids in engines + ranks), (engines, ranks)
    assert len({ids[0] for ids in engines}) == 2, f"two engines on one GPU: {engines}"
    assert engines == ranks, f"engine i and learner rank i must share a GPU: {engines} vs {ranks}"


def test_a_placement_the_cluster_cannot_hold_fails_in_one_line(ray_local):
    config = load_config(GPU_PRESET, ["rollout.workers=3", "learner.world_size=3", "rollout.worker_cpus=1",
                                      "learner.cpus_per_rank=1", "learner.gpus_per_rank=0.5"])
    config = config.model_copy(update={"rollout": config.rollout.model_copy(update={"workers": 5}),
                                       "learner": config.learner.model_copy(update={"world_size": 5})})
    with pytest.raises(PlacementError, match=r"^the run needs 5 GPU in its placement group \(5 bundles\) but the "
                                             r"Ray cluster has 4$"):
        Placement(config)


def test_custom_resources_go_into_the_bundles(ray_local):
    """rollout.resources / learner.resources reach the placement group: colocated bundles carry both, and a
    resource no node offers is named in the one-line error (the session's node offers none)."""
    config = load_config(GPU_PRESET, ["rollout.worker_cpus=1", "learner.cpus_per_rank=1",
                                      "rollout.resources={rollout_node: 1}", "learner.resources={learner_node: 0.5}"])
    with pytest.raises(PlacementError, match=r"^the run needs 1 learner_node in its placement group \(2 bundles\) "
                                             r"but the Ray cluster has 0$"):
        Placement(config)
