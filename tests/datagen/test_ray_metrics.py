"""The Ray metrics: read back from a real Prometheus endpoint, silent without Ray, and charted by
a Grafana dashboard that names only metrics the code defines."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from prom_metrics import wait_for
from vllm_server import free_port

from datagen import metrics

ROOT = Path(__file__).parents[2]
DASHBOARD = ROOT / "cluster" / "grafana" / "selfcorrect.json"
DRIVER = Path(__file__).with_name("ray_metrics_driver.py")


def test_stage_tags():
    assert metrics.stage_tags("/r/quick/judge") == {"stage": "judge", "run": "quick"}
    assert metrics.stage_tags("/r/quick/eval/base/judge", "/r/quick") == {"stage": "eval/base/judge", "run": "quick"}
    assert metrics.stage_tags("/elsewhere/judge", "/r/quick") == {"stage": "judge", "run": "quick"}
    assert metrics.run_name("runs/quickstart/") == "quickstart"


def test_exported_names():
    names = metrics.exported_names()
    assert "ray_selfcorrect_judge_rows_total" in names and "ray_selfcorrect_judge_rows" not in names
    assert {"ray_selfcorrect_judge_latency_s_bucket", "ray_selfcorrect_judge_latency_s_count"} <= names
    assert "ray_selfcorrect_kl" in names and "ray_selfcorrect_kl_total" not in names


def test_without_ray_recording_does_nothing():
    # A process that never started Ray records nothing and does not import it.
    code = (
        "import sys\n"
        "from datagen import metrics\n"
        "tags = {'stage': 'judge', 'run': 'r'}\n"
        "metrics.record_generate(tags, prompts=1, samples=2, tokens=3, seconds=1.0)\n"
        "metrics.record_judge(tags, 'verifier', {'rows': 2, 'latencies': [0.1], 'scores': [1.0]})\n"
        "metrics.record_train(tags, step=1, loss=0.5, learning_rate=1e-5)\n"
        "metrics.record_rl(tags, step=1, kl=0.1, rewards={'turn2': 1.0}, weight_sync_s=0.2, weight_sync_bytes=9)\n"
        "assert not metrics.enabled() and not metrics._made, metrics._made\n"
        "assert 'ray' not in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env)


def _exprs(dashboard: dict) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_grafana_dashboard_loads_and_names_only_defined_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    defined = metrics.exported_names()
    known_labels = {*metrics.TAG_KEYS, *(k for spec in metrics.SPECS.values() for k in spec.extra_tags), "le"}
    used = set()
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and all("gridPos" in panel and t["refId"] for t in panel["targets"])
        for target in panel["targets"]:
            expr = target["expr"]
            names = set(re.findall(r"\bray_\w+", expr))
            assert names, expr
            assert names <= defined, (panel["title"], names - defined)
            used |= names
            for open_, close in ("()", "{}", "[]"):
                assert expr.count(open_) == expr.count(close), expr
            # grouped and matched only by labels the metrics carry
            labels = {x.strip() for group in re.findall(r"by \(([^)]*)\)", expr) for x in group.split(",")}
            labels |= set(re.findall(r"(\w+)=~?\"", expr))
            assert labels <= known_labels, (expr, labels - known_labels)
    # ... and every metric the code defines is on some panel.
    charted = {n.removeprefix("ray_").removesuffix("_total") for n in used}
    charted |= {re.sub(r"_(bucket|sum|count)$", "", n) for n in charted}
    assert set(metrics.SPECS) <= charted, set(metrics.SPECS) - charted


def test_metrics_read_back_from_prometheus(tmp_path):
    run_dir = tmp_path / "metrics-run"
    port, dashboard = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    driver = subprocess.Popen(
        [sys.executable, str(DRIVER), str(run_dir), str(port), str(dashboard)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / "driver.log", "w"),
        text=True,
        cwd=ROOT,
        env=env,
    )
    try:
        line = driver.stdout.readline()
        assert line, (tmp_path / "driver.log").read_text()[-3000:]
        report = json.loads(line)
        # Ray Data names the actors after the worker class (datagen.pipeline._named_udf).
        assert "MapWorker(MapBatches(JudgeWorker))" in report["actor_classes"], report["actor_classes"]
        run = {"run": "metrics-run"}
        judge = {**run, "stage": "judge", "judge": "verifier"}
        gen, train = {**run, "stage": "generate"}, {**run, "stage": "train"}
        expected = [
            ("ray_selfcorrect_judge_rows_total", judge, 8.0),
            # attempt 1 always wrong, attempt 2 right for half the samples: mean score 1/4 in every shard
            ("ray_selfcorrect_reward_mean", {**run, "stage": "judge", "name": "verifier"}, 0.25),
            ("ray_selfcorrect_prompts_total", gen, 4.0),
            ("ray_selfcorrect_samples_total", gen, 8.0),
            ("ray_selfcorrect_generated_tokens_total", gen, 120.0),
            ("ray_selfcorrect_tokens_per_s", gen, 60.0),
            ("ray_selfcorrect_train_step", train, 3.0),
            ("ray_selfcorrect_train_loss", train, 0.5),
            ("ray_selfcorrect_train_value", {**train, "name": "learning_rate"}, 1e-5),
            ("ray_selfcorrect_kl", {**train, "name": "turn2"}, 0.25),
            ("ray_selfcorrect_reward_mean", {**train, "name": "turn2"}, 0.75),
            ("ray_selfcorrect_tokens_per_s", train, 16.0),
            ("ray_selfcorrect_weight_sync_s_count", train, 1.0),
            # 0.3 s lands in the (0.25, 0.5] bucket (Ray's _sum adds the bucket's midpoint, not 0.3)
            ("ray_selfcorrect_weight_sync_s_bucket", {**train, "le": "0.25"}, 0.0),
            ("ray_selfcorrect_weight_sync_s_bucket", {**train, "le": "0.5"}, 1.0),
            ("ray_selfcorrect_weight_sync_bytes_total", train, 1000.0),
        ]
        # Ray exports every second here (every 10 s by default)
        got = wait_for(port, [(name, labels) for name, labels, _ in expected], timeout_s=30)
        for (name, labels, want), g in zip(expected, got, strict=True):
            assert g == pytest.approx(want), (name, labels, g)
        assert report["judge"]["rows"] == 8
    finally:
        driver.stdin.close()
        try:
            driver.wait(timeout=60)
        except subprocess.TimeoutExpired:
            driver.kill()
