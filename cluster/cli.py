"""The ``selfcorrect`` command."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import yaml

from cluster import jobs, status
from cluster.config import Config, ConfigError, load_config
from cluster.console import LOG_DIR, Console, summarize
from cluster.stages import RUN_STAGES, STAGES, Stage, check_run_dir
from datagen import progress
from datagen.shards import atomic_write_bytes
from datagen.storage import StorageError, as_location, makedirs

DESCRIPTION = """\
Teach a language model to correct itself: generate samples and second attempts with vLLM,
score them with judges, build training sets, and train — each stage a resumable step over
Parquet files in RUN_DIR, on a local Ray or a Ray cluster.

Every command takes a YAML config (only what differs from the defaults; see configs/) and
KEY=VALUE overrides with dotted keys, e.g.

  selfcorrect run configs/quickstart.yaml
  selfcorrect generate configs/quickstart.yaml run_dir=runs/try2 generate.n=8 prompts.limit=16
  selfcorrect config configs/scl.yaml            # print the full config with every default
  selfcorrect submit configs/scl.yaml run_dir=/mnt/shared/runs/scl   # as a Ray job on a cluster
  selfcorrect status /mnt/shared/runs/scl        # which stages are done, partial, failed or not started

A stage that finished is skipped; one that was killed resumes where it stopped. --overwrite
redoes it. The terminal shows a progress bar and a summary line per stage; what Ray, vLLM and
the workers print goes to RUN_DIR/logs/ (-v shows it instead). The report (RUN_DIR/report/) is
rebuilt from RUN_DIR/eval/metrics.json every time.
"""

EPILOG = """\
Useful keys: run_dir, model (smollm2-135m-instruct, an HF name or a folder), seed,
prompts.path (JSONL/Parquet file or folder, or a saved HF dataset) or prompts.builtin
(arithmetic | humaneval | pictures), prompts.limit, generate.mode (two_attempt | selfee | sima | single),
generate.n, generate.max_tokens, generate.temperature, generate.engine.num_gpus,
generate.engine.max_actors, ray.address (auto joins a cluster).
"""

EXIT_BAD_INPUT = 2


def _input_errors() -> tuple[type[BaseException], ...]:
    from datagen.models import ModelNotFoundError
    from datagen.prompts import PromptError
    from datagen.shards import StageInputError, StageMismatchError

    return (ConfigError, PromptError, ModelNotFoundError, StageMismatchError, StageInputError, StorageError)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file (configs/quickstart.yaml, ...)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted-key overrides, YAML values")


def _add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show Ray's, vLLM's and the workers' own output on the terminal (otherwise in RUN_DIR/logs/)",
    )


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
    p.add_argument("--until", metavar="STAGE", choices=RUN_STAGES,
                   help=f"stop after this stage, to look at its output first ({', '.join(RUN_STAGES)})")
    _add_verbose(p)
    for stage in STAGES.values():
        p = sub.add_parser(stage.name, help=stage.help)
        _add_config_args(p)
        p.add_argument("--overwrite", action="store_true", help="discard this stage's output and redo it")
        _add_verbose(p)
    p = sub.add_parser("config", help="print the full config (defaults filled in) and exit")
    _add_config_args(p)
    jobs.add_parser(sub)
    status.add_parser(sub)
    return parser


class StageFailed(Exception):
    """A stage raised while it ran (past its checks): ``hint`` says what is intact and what redoes it."""

    def __init__(self, stage: str, error: BaseException, hint: str):
        super().__init__(f"{stage} failed: {_last_line(error)}; {hint}")
        self.stage, self.error, self.hint = stage, error, hint


def _failure_hint(cfg: Config, stage: Stage, stages: list[Stage], command: list[str]) -> str:
    """What a failed stage leaves usable and the one command that takes it up again.

    The stages before it that finished keep their output (a stage's output is published whole, or
    resumed shard by shard), so only the failed one needs running again: by name when it is the last
    of the command, by ``run`` (which skips the finished ones) when more stages would have followed.
    """
    before = list(STAGES.values())[: list(STAGES).index(stage.name)]
    intact = [s.name for s in before if s.output(cfg).done()]
    names = " and ".join([", ".join(intact[:-1]), intact[-1]] if len(intact) > 1 else intact)
    kept = f"the {names} output{'s are' if len(intact) > 1 else ' is'} intact: " if intact else ""
    if stage is stages[-1]:
        redo = shlex.join(["selfcorrect", stage.name, *command])
        verb = f"redoes only the {stage.name}" if stage.always else f"takes up the {stage.name} where it stopped"
    else:
        until = ["--until", stages[-1].name] if stages[-1].name != RUN_STAGES[-1] else []
        redo = shlex.join(["selfcorrect", "run", *until, *command])
        verb = f"goes on from the {stage.name} (finished stages are skipped)"
    return f"{kept}`{redo}` {verb}"


def _run_stages(
    cfg: Config, stages: list[Stage], overwrite: bool, console: Console, command: list[str] | None = None
) -> None:
    """Run ``stages`` in order; ``command`` (the config and overrides as given) goes into a failure's hint.

    A stage that raises is recorded as failed in its output directory (``_FAILED.json``, which
    ``selfcorrect status`` shows) and surfaces as ``StageFailed``; running it again clears that.
    """
    from cluster.runtime import check_resources, init_ray

    checked = False
    local_logs = check_run_dir(cfg, stages)
    if local_logs:
        console.say(f"logs: {local_logs} (run_dir is on object storage; the logs stay on this machine)")
    for stage in stages:
        out = stage.output(cfg)
        plan = stage.prepare(cfg)
        if not overwrite and not stage.always and out.done():
            fingerprint = getattr(plan, "fingerprint", None)
            if fingerprint is not None:
                out.check(fingerprint)
            console.say(f"{stage.name}: done already ({out.path}); --overwrite redoes it")
            continue
        # Past the checks: from here on the run directory holds the log (and the config, for the report).
        console.settle(Path(local_logs) if local_logs else Path(cfg.run_dir) / LOG_DIR)
        if not stage.always:
            _write_config(cfg)
        if stage.needs_ray:
            started = init_ray(cfg.ray, log_to_driver=console.verbose)
            if started:
                console.say(started)
            if not checked:
                # A stage asking for what the cluster can never give would wait forever: refused here,
                # for this stage and the unfinished ones after it, before hours of work go before them.
                later = [s for s in stages[stages.index(stage) :] if overwrite or not s.output(cfg).done()]
                warning = check_resources({s.name: s.demands(cfg) for s in later})
                if warning:
                    console.say(warning)
                checked = True
        progress.set_stage(stage.name)
        out.clear_failure()  # running again: a stage killed from here on reads as partial, not failed
        try:
            summary = stage.run(cfg, plan, overwrite)
        except Exception as e:
            hint = _failure_hint(cfg, stage, stages, command or [])
            try:
                out.mark_failed({"stage": stage.name, "error": _last_line(e), "hint": hint,
                                 "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            except (OSError, StorageError) as unrecorded:  # an unwritable run dir: the message still says it
                print(f"could not record the failure in {out.path}: {unrecorded}", file=sys.stderr)
            raise StageFailed(stage.name, e, hint) from e
        finally:
            progress.set_stage(None)
        console.say(summarize(stage.name, summary))


def _write_config(cfg: Config) -> None:
    """The resolved config (every default filled in) beside the stages' output, for the report."""
    run_dir = as_location(cfg.run_dir)
    makedirs(run_dir)
    atomic_write_bytes(run_dir / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).encode())


def _last_line(err: BaseException) -> str:
    lines = [x for x in str(err).splitlines() if x.strip()]
    return f"{type(err).__name__}: {lines[-1][:300] if lines else ''}"


def main(argv: list[str] | None = None, *, release_output: bool = True) -> int:
    """Run a command; 0 on success, 2 on bad input, 1 when a stage fails.

    Without ``-v`` the libraries' output goes to ``RUN_DIR/logs/``; ``release_output=False`` leaves
    it there until the process exits, so that what the libraries print at exit lands there too.
    """
    args = build_parser().parse_args(argv)
    if hasattr(args, "handler"):  # submit, status: commands of their own, no stage runs here
        return args.handler(args)
    console = Console(verbose=getattr(args, "verbose", False))
    failed = False
    try:
        cfg = load_config(args.config, args.overrides)
        if args.command == "config":
            yaml.safe_dump(cfg.model_dump(), sys.stdout, sort_keys=False)
            return 0
        console.capture()
        names = [args.command]
        if args.command == "run":
            names = []
            for name, stage in STAGES.items():
                reason = stage.skip_in_run(cfg) if stage.in_run and stage.skip_in_run else None
                if reason:
                    console.say(f"{name}: not part of this run ({reason})")
                elif stage.in_run:
                    names.append(name)
                if name == args.until:
                    break
        _run_stages(cfg, [STAGES[n] for n in names], args.overwrite, console, [args.config, *args.overrides])
        if getattr(args, "until", None) and args.until != RUN_STAGES[-1]:
            go_on = shlex.join(["selfcorrect", "run", args.config, *args.overrides])
            console.say(f"run: stopped after {args.until} (--until); `{go_on}` goes on from there")
    except StageFailed as e:
        traceback.print_exception(e.error)  # into the log: the stage's own error, not the wrapper
        if isinstance(e.error, _input_errors()):
            console.say(f"error: {e.error}\n({e.hint})")
            return EXIT_BAD_INPUT
        failed = True
        where = f"\n(the whole traceback and the libraries' output: {console.driver_log})" if console.driver_log else ""
        console.say(f"error: {e}{where}")
        return 1
    except _input_errors() as e:
        console.say(f"error: {e}")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        console.say("interrupted: the same command resumes where this one stopped")
        return 130
    except Exception as e:
        if console.driver_log is None:
            raise
        failed = True
        traceback.print_exc()  # into the log
        console.say(f"error: {_last_line(e)}\n(the whole traceback and the libraries' output: {console.driver_log})")
        return 1
    finally:
        _shutdown_ray(console)
        console.release(keep_log=failed, restore=release_output)
    return 0


def _shutdown_ray(console: Console) -> None:
    """Stop the Ray this command started and keep its workers' logs with the run."""
    from cluster.runtime import shutdown_ray

    logs = shutdown_ray()
    try:
        console.copy_ray_logs(logs)
    except OSError as e:
        print(f"could not copy Ray's logs from {logs}: {e}", file=sys.stderr)


def entry() -> Any:
    sys.exit(main(release_output=False))


if __name__ == "__main__":
    entry()
