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
