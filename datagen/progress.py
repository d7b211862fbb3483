"""Where the stages draw their progress bars.

The ``selfcorrect`` command sends the libraries' output (Ray, vLLM, transformers) to a log file
and keeps the terminal for progress bars and summaries: it points ``set_stream`` at the terminal.
Everything else (tests, notebooks, library use) gets the usual ``sys.stderr``.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

_stream: TextIO | None = None
_stage: str | None = None


def set_stream(stream: TextIO | None) -> None:
    """Draw bars on ``stream`` from now on (None: back to ``sys.stderr``)."""
    global _stream
    _stream = stream


def set_stage(name: str | None) -> None:
    """Name the stage running now: a bar another stage's code draws inside it says both (``eval generate``)."""
    global _stage
    _stage = name


def stream() -> TextIO:
    return _stream if _stream is not None else sys.stderr


def bar(**kwargs: Any):
    """A ``tqdm`` bar on the progress stream; takes tqdm's keyword arguments."""
    from tqdm import tqdm

    desc = kwargs.pop("desc", None)
    if _stage and desc != _stage:
        desc = f"{_stage} {desc}" if desc else _stage
    return tqdm(file=stream(), dynamic_ncols=True, desc=desc, **kwargs)
