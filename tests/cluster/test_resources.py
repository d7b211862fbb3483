"""The resource check before a stage starts: what no node can give is refused, not waited for."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.cli import main
from cluster.config import load_config
from cluster.runtime import (
    Demand,
    ResourceError,
    check_resources,
    configured_node_types,
    describe_nodes,
    infeasible,
    pack,
)

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


def test_demands_that_fit_alone_but_not_together():
    # SCoRe on 2 CPUs: a 1.5-CPU trainer worker fits, two 0.5-CPU rollout engines fit, all three do not
    # (first-fit-decreasing: 1.5, then 0.5 fill the node; the second 0.5 finds no room)
    trainer, engines = Demand("t", {"CPU": 1.5, "GPU": 0}), Demand("r", {"CPU": 0.5}, 2)
    assert infeasible([trainer], [CPU2]) == [] and infeasible([engines], [CPU2]) == []
    assert pack([trainer, engines], [CPU2]) == 2
    assert infeasible([trainer, engines], [CPU2], stage="train") == [
        "t and r: the train stage runs 1 x {CPU: 1.5} + 2 x {CPU: 0.5} at once (CPU: 2.5 in all), "
        "but the nodes fit only 2 of these 3 together"
    ]
    assert infeasible([trainer, engines], [CPU2, CPU2]) == []  # 1.5 + 0.5 on one node, 0.5 on the other
    # a DPO trainer with 2 workers x 1.5 CPUs on 2 CPUs fails alone already, and says so
    assert infeasible([Demand("w", {"CPU": 1.5}, 2), engines], [CPU2]) == [
        "w: needs 2 x {CPU: 1.5} at once, but the cluster holds only 1 at once"
    ]
    # fractional GPUs add up: 2 engines x 0.5 GPU + 1 trainer x 1 GPU fill the 2-GPU node exactly
    gpu_trainer = Demand("g", {"CPU": 1, "GPU": 1})
    assert infeasible([gpu_trainer, Demand("e", {"CPU": 1, "GPU": 0.5}, 2)], [CPU2, GPU_NODE]) == []
    assert pack([gpu_trainer, Demand("e", {"CPU": 1, "GPU": 0.5}, 3)], [CPU2, GPU_NODE]) == 3


def test_packing_places_the_largest_bundles_first():
    # 2 x {CPU: 1} + 2 x {CPU: 2} on two 3-CPU nodes: in the order given, both 1s take the first
    # node and one 2 is left over; largest first, each node gets a 2 and a 1
    small, large = Demand("s", {"CPU": 1}, 2), Demand("l", {"CPU": 2}, 2)
    assert pack([small, large], [{"CPU": 3.0}, {"CPU": 3.0}]) == 4
    # a GPU bundle goes first, so a CPU-only bundle does not take the GPU node's CPUs from it
    assert pack([Demand("c", {"CPU": 7}), Demand("g", {"CPU": 2, "GPU": 1})], [GPU_NODE, {"CPU": 8.0}]) == 2
    assert pack([Demand("z", {"CPU": 0}, 5)], [CPU2]) == 5  # bundles that ask for nothing always fit


def test_an_autoscaler_is_told_by_its_node_types():
    # `ray start --head` without a cluster config: the autoscaler mirrors each node as node_<id>
    mirror = {"autoscaler_report": {"active_nodes": {"node_d8c5b5": 1}, "node_type_mapping": {"d8c5b5": "node_d8c5b5"}}}
    assert configured_node_types(mirror) == set()
    launcher = {"autoscaler_report": {"active_nodes": {"ray.head.default": 1},
                                      "node_type_mapping": {"ff00": "ray.head.default", "ff01": "gpu_workers"}}}
    assert configured_node_types(launcher) == {"ray.head.default", "gpu_workers"}
    assert configured_node_types({"gcs_request_time": 0.1}) == set()  # no autoscaler report yet


def stage_demands(cfg, name):
    from cluster.stages import STAGES

    return STAGES[name].demands(cfg)


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
    assert train.resources == {"CPU": 2, "GPU": 1} and train.count == 2 and "train.use_gpu=true" in train.key
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
    # stages run one after another: 2 CPUs for generate, then 2 CPUs for train, fit on 2 CPUs
    two = {"CPU": 2}
    assert check_resources({"generate": [Demand("e", two)], "train": [Demand("w", two)]}) is None
    # the eval generates, then judges: its engines and judge actors never run at once
    assert check_resources({"eval": [Demand("e", two, phase="generate"), Demand("j", two, phase="judge")]}) is None
    with pytest.raises(ResourceError, match=r"w and e: the train stage runs .* fit only 1 of these 2 together"):
        check_resources({"train": [Demand("w", {"CPU": 1.5}), Demand("e", {"CPU": 1})]})
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
    assert "error: train.use_gpu=true, train.cpus_per_worker=2, train.num_workers=1: needs 1 x {CPU: 2, GPU: 1}" in err
    assert "generate" not in err and not (tmp_path / "run" / "generate").exists()


def test_a_stage_whose_actors_fit_only_alone_is_refused(ray_local, tmp_path, tiny_model_dir, capsys):
    # SCoRe on the local 2-CPU Ray: one 1.5-CPU trainer worker beside two 0.5-CPU rollout engines
    run_dir = tmp_path / "run"
    code = main([
        "run", str(ROOT / "configs/quickstart.yaml"), f"run_dir={run_dir}", f"model={tiny_model_dir}",
        "prompts.limit=2", "generate.engine.max_model_len=512", "train.algorithm=score",
        "train.cpus_per_worker=1.5", "train.score.rollout_actors=2", "generate.engine.num_cpus=0.5",
    ])
    err = capsys.readouterr().err
    assert code == 2, err
    assert (
        "error: train.use_gpu=false, train.cpus_per_worker=1.5, train.num_workers=1 and generate.engine.num_gpus=0, "
        "generate.engine.num_cpus=0.5 per rollout engine, train.score.rollout_actors=2: the train stage runs "
        "1 x {CPU: 1.5} + 2 x {CPU: 0.5} at once (CPU: 2.5 in all), but the nodes fit only 2 of these 3 together"
    ) in err
    assert not (run_dir / "generate").exists()
