"""An OpenAI-compatible chat API as judge ("GPT-4"): pointwise 1-10 scores or pairwise preferences.

Pointwise (SelFee-style): the judge rates a response 1-10 with a rationale. Pairwise: it picks
the better of two responses, asked in both orders so that position bias cancels
(``combine_orders``). Answers are asked for as JSON and validated; a malformed answer is re-asked
a bounded number of times, then the row is flagged with the raw text and kept.

Requests run concurrently (``AsyncOpenAI``) under a concurrency limit and requests/min and
tokens/min buckets. 429 (honouring Retry-After), 5xx, timeouts and cut connections are retried
with exponential backoff; other errors flag the row. Every answer is cached on disk keyed by
(model, messages, parameters, judge version), so a rerun costs no calls. The API key is read from
the named environment variable when a request is made and is scrubbed from every error text.

A row with images sends them in the user message, before its text, as image content parts with
base64 data URLs, as GPT-4V (and vLLM's server) takes them.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import time
from collections.abc import Callable
from typing import Any

from judges.api_support import (
    AsyncLimiter,
    DiskCache,
    backoff_delay,
    cache_key,
    estimate_tokens,
    parse_retry_after,
)
from judges.base import (
    BaseJudge,
    JudgeResult,
    combine_orders,
    dumps,
    image_parts,
    pairs,
    parse_verdict,
    question_text,
    register,
)

POINTWISE_SYSTEM = (
    "You are a strict, fair grader. You rate how well a response answers a question: correctness "
    "first, then completeness and clarity."
)
POINTWISE_USER = """\
Question:
{question}
{reference_block}
Response:
{response}

Rate the response from 1 (useless or wrong) to 10 (fully correct and complete). Reply with only a
JSON object: {{"rationale": "<one or two sentences>", "score": <integer 1-10>}}"""

PAIRWISE_SYSTEM = (
    "You are a strict, fair judge. You compare two responses to the same question and pick the "
    "better one: correctness first, then completeness and clarity. Ignore the order they are shown in."
)
PAIRWISE_USER = """\
Question:
{question}
{reference_block}
[Response 1]
{first}
[End of Response 1]

[Response 2]
{second}
[End of Response 2]

Which response is better? Reply with only a JSON object:
{{"rationale": "<one or two sentences>", "verdict": "[[1]]" or "[[2]]" or "[[tie]]"}}"""

REASK = (
    "Your reply could not be used ({why}). Reply again with only the JSON object, nothing before or after it."
)

_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def parse_json_object(text: str) -> dict[str, Any] | None:
    """The JSON object in a reply (bare, fenced in a code block, or with words around it), or None.

    >>> parse_json_object('Sure! ```json\\n{"score": 7}\\n```')
    {'score': 7}
    >>> parse_json_object("7/10") is None
    True
    """
    match = _JSON_OBJECT.search(text or "")
    if not match:
        return None
    try:
        value = json.loads(match.group(0))
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def validate_score(text: str) -> tuple[float | None, str]:
    """(score 1-10, "") from a pointwise reply, or (None, why it is not valid).

    >>> validate_score('{"rationale": "ok", "score": 8}')
    (8.0, '')
    >>> validate_score('{"score": 11}')
    (None, 'score 11 is not an integer from 1 to 10')
    """
    obj = parse_json_object(text)
    if obj is None:
        return None, "no JSON object"
    score = obj.get("score")
    if isinstance(score, str) and score.strip().isdigit():
        score = int(score.strip())
    if (
        isinstance(score, bool)
        or not isinstance(score, (int, float))
        or score != int(score)
        or not 1 <= score <= 10
    ):
        return None, f"score {score!r} is not an integer from 1 to 10"
    return float(score), ""


def validate_preference(text: str) -> tuple[int | None, str]:
    """(1, 2 or 0 for a tie, "") from a pairwise reply, or (None, why it is not valid).

    >>> validate_preference('{"rationale": "x", "verdict": "[[2]]"}')
    (2, '')
    >>> validate_preference('{"verdict": "both"}')
    (None, 'verdict is not [[1]], [[2]] or [[tie]]')
    """
    obj = parse_json_object(text)
    if obj is None:
        return None, "no JSON object"
    verdict = parse_verdict(str(obj.get("verdict", "")))
    if verdict is None:
        return None, "verdict is not [[1]], [[2]] or [[tie]]"
    return verdict, ""


def _user(row: dict[str, Any], text: str) -> dict[str, Any]:
    """The user message: the text, after the row's images when it has any."""
    images = image_parts(row)
    return {"role": "user", "content": [*images, {"type": "text", "text": text}] if images else text}


def _reference_block(row: dict[str, Any]) -> str:
    ref = row.get("reference")
    return f"\nReference answer (for your judgement only):\n{ref}\n" if ref else ""


@register("openai")
class OpenAIJudge(BaseJudge):
    """Scores attempts (pointwise) or picks within each row's pair (pairwise) through a chat API."""

    def __init__(self, name: str, settings: Any):
        super().__init__(name, settings)
        if settings.mode == "pairwise":
            self.suffixes = ("pref", "raw", "error")
        self.cache = DiskCache(settings.cache_dir) if settings.cache_dir else None
        self.params = {"temperature": settings.temperature, "max_tokens": settings.max_tokens}
        if settings.json_mode:
            self.params["response_format"] = {"type": "json_object"}

    # -- the public call: synchronous, one event loop per batch ----------------------------------

    def judge(self, rows: list[dict[str, Any]]) -> list[JudgeResult]:
        return self._account(asyncio.run(self.judge_async(rows)))

    async def judge_async(self, rows: list[dict[str, Any]]) -> list[JudgeResult]:
        from openai import AsyncOpenAI

        results = [JudgeResult() for _ in rows]
        env = self.settings.api_key_env
        if not os.environ.get(env):
            for r in results:
                r.flag(f"API key variable {env} is not set")
            return results

        async def api_key() -> str:  # read when each request is made, never stored
            return os.environ.get(env, "")

        client = AsyncOpenAI(
            base_url=self.settings.base_url, api_key=api_key, max_retries=0, timeout=self.settings.timeout_s
        )
        self._client = client
        self._sem = asyncio.Semaphore(self.settings.concurrency)
        self._limiter = AsyncLimiter(self.settings.requests_per_min, self.settings.tokens_per_min)
        try:
            if self.settings.mode == "pointwise":
                await asyncio.gather(
                    *(self._pointwise(row, res) for row, res in zip(rows, results, strict=True))
                )
            else:
                jobs = [
                    self._pairwise(row, pair, res)
                    for row, pair, res in zip(rows, pairs(rows), results, strict=True)
                ]
                await asyncio.gather(*jobs)
        finally:
            await client.close()
        return results

    # -- one judgement per row --------------------------------------------------------------------

    async def _pointwise(self, row: dict[str, Any], res: JudgeResult) -> None:
        raw = {}
        for slot in ("1", "2"):
            response = row.get(f"attempt{slot}")
            if response is None:
                continue
            user = POINTWISE_USER.format(
                question=question_text(row), reference_block=_reference_block(row), response=response
            )
            messages = [{"role": "system", "content": POINTWISE_SYSTEM}, _user(row, user)]
            score, text, error = await self._structured(messages, validate_score)
            setattr(res, f"score{slot}", score)
            raw[slot] = text
            if error:
                res.flag(f"attempt{slot}: {error}")
        res.raw = dumps(raw)

    async def _pairwise(self, row: dict[str, Any], pair: tuple[str, str] | None, res: JudgeResult) -> None:
        if pair is None:
            res.raw = ""
            return
        a, b = pair
        asks = []
        for first, second in ((a, b), (b, a)):
            user = PAIRWISE_USER.format(
                question=question_text(row), reference_block=_reference_block(row), first=first, second=second
            )
            asks.append([{"role": "system", "content": PAIRWISE_SYSTEM}, _user(row, user)])
        (fwd, fwd_text, fwd_err), (swp, swp_text, swp_err) = await asyncio.gather(
            *(self._structured(m, validate_preference) for m in asks)
        )
        res.raw = dumps({"forward": fwd_text, "swapped": swp_text})
        res.pref = combine_orders(fwd, swp)
        if res.pref is None:
            res.pref = 0
            res.flag(
                "; ".join(
                    e for e in (fwd_err and f"forward: {fwd_err}", swp_err and f"swapped: {swp_err}") if e
                )
            )

    async def _structured(
        self, messages: list[dict[str, str]], validate: Callable[[str], tuple[Any, str]]
    ) -> tuple[Any, str, str]:
        """(valid value, raw text, "") or (None, last raw text, why), re-asking malformed answers."""
        text = ""
        for _ in range(self.settings.max_reasks + 1):
            answer, error = await self._ask(messages)
            if answer is None:
                return None, text, error
            text = answer
            value, why = validate(text)
            if value is not None:
                return value, text, ""
            messages = messages + [
                {"role": "assistant", "content": text},
                {"role": "user", "content": REASK.format(why=why)},
            ]
        return None, text, f"malformed judge output after {self.settings.max_reasks} re-asks: {why}"

    async def _ask(self, messages: list[dict[str, str]]) -> tuple[str | None, str]:
        """One chat completion through the cache, limits and retries: (text, "") or (None, why)."""
        import openai

        key = cache_key(self.settings.model, messages, self.params, self.settings.judge_version)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.stats.cache_hits += 1
                return hit["text"], ""
        s = self.settings
        last = ""
        for attempt in range(s.max_retries + 1):
            retry_after = None
            await self._limiter.wait(estimate_tokens(messages, s.max_tokens))
            async with self._sem:
                start = time.monotonic()
                self.stats.calls += 1
                try:
                    response = await self._client.chat.completions.create(
                        model=s.model, messages=messages, **self.params
                    )
                except openai.APIStatusError as e:
                    last = f"HTTP {e.status_code}: {self._scrub(e.message)}"
                    if e.status_code not in (408, 409, 429) and e.status_code < 500:
                        return None, last
                    retry_after = parse_retry_after(e.response.headers.get("retry-after"))
                except (openai.APITimeoutError, openai.APIConnectionError) as e:
                    last = f"{type(e).__name__}: {self._scrub(str(e))}"
                except Exception as e:  # a reply the client cannot read counts as a bad answer
                    last = f"{type(e).__name__}: {self._scrub(str(e))}"
                else:
                    self.stats.latencies.append(time.monotonic() - start)
                    if getattr(response, "choices", None):
                        return self._accept(key, response)
                    # An HTML error page or an empty body from a proxy: a server fault, retried.
                    last = (
                        f"the API answered something that is not a chat completion: {str(response)[:200]!r}"
                    )
            if attempt < s.max_retries:
                self.stats.retries += 1
                await asyncio.sleep(
                    backoff_delay(attempt, s.backoff_s, s.max_backoff_s, retry_after, random.random())
                )
        return None, f"gave up after {s.max_retries + 1} tries: {last}"

    def _accept(self, key: str, response: Any) -> tuple[str | None, str]:
        usage = getattr(response, "usage", None)
        if usage is not None:
            self.stats.prompt_tokens += usage.prompt_tokens or 0
            self.stats.completion_tokens += usage.completion_tokens or 0
        text = response.choices[0].message.content or ""
        if self.cache is not None:
            self.cache.put(key, {"text": text})
        return text, ""

    def _scrub(self, text: str) -> str:
        secret = os.environ.get(self.settings.api_key_env)
        return text.replace(secret, "***") if secret else text
