"""The ``selfcorrect`` command."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml

from cluster.config import Config, ConfigError, load_config
from cluster.stages import STAGES, Stage

DESCRIPTION = """\
Teach a language model to correct itself: generate samples and second attempts with vLLM,
score them with judges, build training sets, and train — each stage a resumable step over
Parquet files in RUN_DIR, on a local Ray or a Ray cluster.

Every command takes a YAML config (only what differs from the defaults; see configs/) and
KEY=VALUE overrides with dotted keys, e.g.

  selfcorrect run configs/quickstart.yaml
  selfcorrect generate configs/quickstart.yaml run_dir=runs/try2 generate.n=8 prompts.limit=16
  selfcorrect config configs/scl.yaml            # print the full config with every default

A stage that finished is skipped; one that was killed resumes where it stopped. --overwrite
redoes it.
"""

EPILOG = """\
Useful keys: run_dir, model (smollm2-135m-instruct, an HF name or a folder), seed,
prompts.path (JSONL/Parquet file or folder, or a saved HF dataset) or prompts.builtin
(arithmetic | humaneval), prompts.limit, generate.mode (two_attempt | selfee | sima | single),
generate.n, generate.max_tokens, generate.temperature, generate.engine.num_gpus,
generate.engine.max_actors, ray.address (auto joins a cluster).
"""

EXIT_BAD_INPUT = 2


def _input_errors() -> tuple[type[BaseException], ...]:
    from datagen.models import ModelNotFoundError
    from datagen.prompts import PromptError
    from datagen.shards import StageInputError, StageMismatchError

    return (ConfigError, PromptError, ModelNotFoundError, StageMismatchError, StageInputError)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file (configs/quickstart.yaml, ...)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted-key overrides, YAML values")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfcorrect",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("run", help="run every stage in order, skipping finished ones")
    _add_config_args(p)
    p.add_argument("--overwrite", action="store_true", help="redo every stage, discarding its output")
    for stage in STAGES.values():
        p = sub.add_parser(stage.name, help=stage.help)
        _add_config_args(p)
        p.add_argument("--overwrite", action="store_true", help="discard this stage's output and redo it")
    p = sub.add_parser("config", help="print the full config (defaults filled in) and exit")
    _add_config_args(p)
    return parser


def _run_stages(cfg: Config, stages: list[Stage], overwrite: bool) -> None:
    from cluster.runtime import init_ray

    for stage in stages:
        out = stage.output(cfg)
        plan = stage.prepare(cfg)
        if not overwrite and out.done():
            fingerprint = getattr(plan, "fingerprint", None)
            if fingerprint is not None:
                out.check(fingerprint)
            print(f"[{stage.name}] done already ({out.path}); --overwrite redoes it", file=sys.stderr)
            continue
        if stage.needs_ray:
            init_ray(cfg.ray)
        summary = stage.run(cfg, plan, overwrite)
        print(f"[{stage.name}] {json.dumps(summary, default=str)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        if args.command == "config":
            yaml.safe_dump(cfg.model_dump(), sys.stdout, sort_keys=False)
            return 0
        names = [n for n, s in STAGES.items() if s.in_run] if args.command == "run" else [args.command]
        _run_stages(cfg, [STAGES[n] for n in names], args.overwrite)
    except _input_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def entry() -> Any:
    sys.exit(main())


if __name__ == "__main__":
    entry()
