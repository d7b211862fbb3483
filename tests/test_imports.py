"""The import direction: the data contract, the judges and the report load without ray or vllm."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["datagen.records", "datagen.registry", "judges", "rl.report", "rl.report_plots"])
def test_imports_without_ray_or_vllm(module):
    code = (
        f"import sys, {module}\n"
        "heavy = sorted(m for m in ('ray', 'vllm') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_help_is_quick_to_load():
    # --help must not pull in ray, vllm or torch: a newcomer's first command should answer at once.
    code = (
        "import sys\n"
        "from cluster import cli\n"
        "heavy = sorted(m for m in ('ray', 'vllm', 'torch') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_planning_generate_and_a_verifier_actor_load_no_torch(tiny_model_dir, tmp_path):
    # The driver measures prompts with the model's tokenizer, and a verifier's actor holds no weights:
    # neither needs torch, which added 1.7 to 3 s to the start of every driver and judge actor.
    code = (
        "import sys\n"
        "from datagen.config import EngineConfig, GenerateConfig, PromptsConfig\n"
        "from datagen.generate import plan_generate\n"
        "from datagen.judging import JudgeWorker\n"
        "plan = plan_generate(PromptsConfig(limit=3), GenerateConfig(engine=EngineConfig(max_model_len=None)),\n"
        f"                     {str(tiny_model_dir)!r}, {str(tmp_path)!r}, 0)\n"
        "assert len(plan.prompts) == 3\n"
        "JudgeWorker({'verifier': {'type': 'verifier'}})\n"
        "heavy = sorted(m for m in ('torch', 'vllm') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
