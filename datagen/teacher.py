"""An OpenAI-compatible chat API as SelFee's teacher: it writes feedback, revisions and answers.

SelFee (Ye et al., 2023) distils ChatGPT's answers, feedback and revisions into a smaller model.
This client completes the same ``Request`` objects as the vLLM engine, so the turn logic does not
care who answers. Requests run concurrently under a concurrency limit and requests/min and
tokens/min buckets (``judges.api_support``); 429 (honouring Retry-After), 5xx, timeouts and cut
connections are retried with backoff. A request that still fails gives empty completions with
finish reason ``error``: the row is kept and its chain ends there. Answers are cached on disk keyed
by (model, messages, parameters, seed), so a shard redone after a crash gets the same text. The API
key is read from the named environment variable when a request is made, never stored, and
scrubbed from error texts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from dataclasses import dataclass
from typing import Any

from datagen.config import TeacherConfig
from datagen.turns import Completion, Request
from judges.api_support import (
    AsyncLimiter,
    DiskCache,
    backoff_delay,
    cache_key,
    estimate_tokens,
    parse_retry_after,
)

CACHE_VERSION = "teacher-1"
log = logging.getLogger(__name__)


@dataclass
class TeacherStats:
    calls: int = 0
    cache_hits: int = 0
    retries: int = 0
    errors: int = 0
    completion_tokens: int = 0

    def take(self) -> dict[str, int]:
        out = {f"teacher_{k}": v for k, v in self.__dict__.items()}
        self.__init__()  # type: ignore[misc]
        return out


class OpenAITeacher:
    """Completes ``Request`` batches through an OpenAI-compatible chat API."""

    def __init__(self, cfg: TeacherConfig, max_tokens: int, top_p: float = 1.0):
        if cfg.kind != "openai":
            raise ValueError(f"OpenAITeacher needs teacher.kind openai, not {cfg.kind}")
        if not os.environ.get(cfg.api_key_env):
            raise ValueError(
                f"generate.teacher.api_key_env: the variable {cfg.api_key_env} is not set in this process's "
                "environment (on a cluster: in the nodes' environment)"
            )
        self.cfg = cfg
        self.max_tokens = cfg.max_tokens or max_tokens
        self.top_p = top_p
        self.cache = DiskCache(cfg.cache_dir) if cfg.cache_dir else None
        self.stats = TeacherStats()

    @property
    def name(self) -> str:
        return f"openai:{self.cfg.model}"

    def complete(self, requests: list[Request]) -> list[list[Completion]]:
        return asyncio.run(self._complete_all(requests))

    async def _complete_all(self, requests: list[Request]) -> list[list[Completion]]:
        from openai import AsyncOpenAI

        env = self.cfg.api_key_env

        async def api_key() -> str:  # read when each request is made, never stored
            return os.environ.get(env, "")

        client = AsyncOpenAI(base_url=self.cfg.base_url, api_key=api_key, max_retries=0, timeout=self.cfg.timeout_s)
        sem = asyncio.Semaphore(self.cfg.concurrency)
        limiter = AsyncLimiter(self.cfg.requests_per_min, self.cfg.tokens_per_min)
        try:
            return list(await asyncio.gather(*(self._one(client, sem, limiter, r) for r in requests)))
        finally:
            await client.close()

    def _params(self, req: Request) -> dict[str, Any]:
        params: dict[str, Any] = {
            "n": req.n,
            "temperature": req.temperature,
            "top_p": self.top_p if req.temperature > 0 else 1.0,
            "max_tokens": self.max_tokens,
            "seed": req.seed,
        }
        if req.stop:
            params["stop"] = list(req.stop)
        return params

    async def _one(self, client: Any, sem: asyncio.Semaphore, limiter: AsyncLimiter, req: Request) -> list[Completion]:
        import openai

        if req.continue_final:
            raise ValueError("an OpenAI-compatible teacher cannot continue a reply (selfee_format chain)")
        params = self._params(req)
        key = cache_key(self.cfg.model, req.conversation, params, CACHE_VERSION)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.stats.cache_hits += 1
                return [Completion(**c) for c in hit["completions"]]
        c = self.cfg
        last = ""
        for attempt in range(c.max_retries + 1):
            retry_after = None
            await limiter.wait(estimate_tokens(req.conversation, self.max_tokens * req.n))
            async with sem:
                self.stats.calls += 1
                try:
                    response = await client.chat.completions.create(
                        model=c.model, messages=req.conversation, **params
                    )
                except openai.APIStatusError as e:
                    last = f"HTTP {e.status_code}: {self._scrub(e.message)}"
                    if e.status_code not in (408, 409, 429) and e.status_code < 500:
                        break
                    retry_after = parse_retry_after(e.response.headers.get("retry-after"))
                except Exception as e:  # timeouts, cut connections, a body that is not a completion
                    last = f"{type(e).__name__}: {self._scrub(str(e))}"
                else:
                    choices = getattr(response, "choices", None)
                    if choices and len(choices) == req.n:
                        return self._accept(key, response)
                    last = f"the API answered {len(choices or [])} choices for n={req.n}: {str(response)[:200]!r}"
            if attempt < c.max_retries:
                self.stats.retries += 1
                await asyncio.sleep(backoff_delay(attempt, c.backoff_s, c.max_backoff_s, retry_after, random.random()))
        self.stats.errors += 1
        log.warning("teacher %s gave up on a request: %s", c.model, last)
        return [Completion("", 0, "error")] * req.n

    def _accept(self, key: str, response: Any) -> list[Completion]:
        choices = sorted(response.choices, key=lambda ch: ch.index)
        usage = getattr(response, "usage", None)
        total = (usage.completion_tokens or 0) if usage is not None else 0
        self.stats.completion_tokens += total
        # The API counts tokens per request; each of its n choices gets an even share.
        each = total // len(choices)
        out = [
            Completion(
                ch.message.content or "",
                each,
                str(ch.finish_reason or "stop"),
                ch.stop_reason if isinstance(getattr(ch, "stop_reason", None), str) else None,
            )
            for ch in choices
        ]
        if self.cache is not None:
            self.cache.put(key, {"completions": [c.__dict__ for c in out]})
        return out

    def _scrub(self, text: str) -> str:
        secret = os.environ.get(self.cfg.api_key_env)
        return text.replace(secret, "***") if secret else text
