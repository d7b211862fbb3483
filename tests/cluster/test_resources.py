"""The resource check before a stage starts: what no node can give is refused, not waited for."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.cli import main
from cluster.config import load_config
from cluster.runtime import Demand, ResourceError, check_resources, describe_nodes, infeasible, stage_demands

ROOT = Path(__file__).parents[2]
CPU2 = {"CPU": 2.0, "memory": 8e9, "node:10.0.0.1": 1.0}
GPU_NODE = {"CPU": 8.0, "GPU": 2.0, "accelerator_type:H100": 1.0}


def test_infeasible_on_hand_made_nodes():
    gpu = Demand("g", {"CPU": 1, "GPU": 1})
    assert infeasible([gpu], [CPU2]) == ["g: needs 1 x {CPU: 1, GPU: 1} at once, but no node has 1 GPU"]
    assert infeasible([gpu], [CPU2, GPU_NODE]) == []
    # 2 GPUs per node, 1 per bundle: 2 bundles on the GPU node, none on the CPU node
    assert infeasible([Demand("w", {"CPU": 1, "GPU": 1}, 2)], [CPU2, GPU_NODE]) == []
    assert infeasible([Demand("w", {"CPU": 1, "GPU": 1}, 3)], [CPU2, GPU_NODE]) == [
        "w: needs 3 x {CPU: 1, GPU: 1} at once, but the cluster holds only 2 at once"
    ]
    # 3 CPUs per bundle: two fit the 8-CPU node (8 // 3), none the 2-CPU one
    assert infeasible([Demand("c", {"CPU": 3}, 2)], [CPU2, GPU_NODE]) == []
    assert infeasible([Demand("c", {"CPU": 3, "GPU": 0}, 1)], [CPU2]) == [
        "c: needs 1 x {CPU: 3} at once, but no node has 3 CPU"
    ]
    assert describe_nodes([CPU2, GPU_NODE]) == "2 nodes: {CPU: 2}, {CPU: 8, GPU: 2}"


def test_each_stage_names_its_keys():
    cfg = load_config(
        ROOT / "configs/quickstart.yaml",
        ["generate.engine.num_gpus=1", "train.use_gpu=true", "train.num_workers=2", "judges.embedding.num_gpus=0.5"],
    )
    (gen,) = stage_demands(cfg, "generate")
    assert gen.resources == {"CPU": 1, "GPU": 1} and gen.count == 1 and "generate.engine.num_gpus=1" in gen.key
    (judge,) = stage_demands(cfg, "judge")
    assert judge.resources == {"CPU": 1, "GPU": 0.5} and "judges.embedding.num_gpus=0.5" in judge.key
    (train,) = stage_demands(cfg, "train")
    assert train.resources == {"CPU": 1, "GPU": 1} and train.count == 2 and "train.use_gpu=true" in train.key
    assert [d.resources["GPU"] for d in stage_demands(cfg, "eval")] == [1, 0.5]
    assert stage_demands(cfg, "build") == []
    score = load_config(ROOT / "configs/score.yaml", [])
    trainers, engines = stage_demands(score, "train")
    assert trainers.count == 8 and trainers.resources["GPU"] == 1
    assert engines.count == 8 and engines.resources == {"CPU": 1, "GPU": 1}
    assert "train.score.rollout_actors=8" in engines.key


def test_check_resources_on_a_real_local_ray(ray_local):
    if ray_local.cluster_resources().get("GPU", 0):
        pytest.skip("this machine has a GPU")
    assert check_resources([Demand("cpu", {"CPU": 1})]) is None
    with pytest.raises(ResourceError, match=r"train.use_gpu=true: .* no node has 1 GPU .*no autoscaler"):
        check_resources([Demand("train.use_gpu=true", {"CPU": 1, "GPU": 1}, 1)])


def test_a_stage_asking_for_a_gpu_is_refused_at_once(ray_local, tmp_path, tiny_model_dir, capsys):
    if ray_local.cluster_resources().get("GPU", 0):
        pytest.skip("this machine has a GPU")
    code = main([
        "generate", str(ROOT / "configs/quickstart.yaml"), f"run_dir={tmp_path / 'run'}", f"model={tiny_model_dir}",
        "prompts.limit=2", "generate.engine.max_model_len=512", "generate.engine.num_gpus=1",
    ])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "error: generate.engine.num_gpus=1" in err and "no node has 1 GPU" in err
    assert not (tmp_path / "run" / "generate").exists()

    # `run`: a later stage's GPU is refused before the first stage starts
    code = main([
        "run", str(ROOT / "configs/quickstart.yaml"), f"run_dir={tmp_path / 'run'}", f"model={tiny_model_dir}",
        "prompts.limit=2", "generate.engine.max_model_len=512", "train.use_gpu=true",
    ])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "error: train.use_gpu=true, train.cpus_per_worker=1, train.num_workers=1: needs 1 x {CPU: 1, GPU: 1}" in err
    assert "generate" not in err and not (tmp_path / "run" / "generate").exists()
