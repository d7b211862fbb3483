"""What a well-behaved API client needs besides the client: rate limits, backoff, an on-disk cache.

Everything here is plain Python with no network, so it is tested on hand-computed values.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
import uuid
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any


def backoff_delay(
    attempt: int, base: float, cap: float, retry_after: float | None = None, jitter: float = 1.0
) -> float:
    """Seconds to wait before retry number ``attempt`` (0 for the first retry).

    The server's ``Retry-After`` wins when given (capped at ``cap``); otherwise exponential
    ``base * 2**attempt`` capped at ``cap`` and scaled by ``0.5 + 0.5 * jitter`` (``jitter`` in
    [0, 1], random in use) so that many clients do not retry in lockstep.

    >>> backoff_delay(0, 1.0, 60), backoff_delay(3, 1.0, 60), backoff_delay(10, 1.0, 60)
    (1.0, 8.0, 60.0)
    >>> backoff_delay(2, 1.0, 60, jitter=0.0), backoff_delay(5, 1.0, 60, retry_after=2.5)
    (2.0, 2.5)
    """
    if retry_after is not None:
        return max(0.0, min(cap, retry_after))
    return min(cap, base * 2**attempt) * (0.5 + 0.5 * jitter)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: a number of seconds or an HTTP date; None when absent or odd.

    >>> parse_retry_after("3"), parse_retry_after("0.5"), parse_retry_after("soon")
    (3.0, 0.5, None)
    >>> parse_retry_after("Thu, 01 Jan 1970 00:00:10 GMT", now=4.0)
    6.0
    """
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


class TokenBucket:
    """A token bucket: ``rate_per_min`` units a minute, bursts up to ``capacity`` units.

    ``reserve(amount, now)`` takes ``amount`` units and returns how long the caller must wait
    before using them. The balance may go negative, which queues later callers behind earlier ones
    in order (first come, first served) instead of letting them race.

    >>> b = TokenBucket(60, capacity=2, now=0.0)   # 1 unit/s, 2 in the bucket
    >>> [b.reserve(1, now=0.0) for _ in range(4)]
    [0.0, 0.0, 1.0, 2.0]
    >>> b.reserve(1, now=10.0)                     # refilled (to capacity) meanwhile
    0.0
    """

    def __init__(self, rate_per_min: float, capacity: float | None = None, now: float | None = None):
        self.rate = rate_per_min / 60.0
        self.capacity = capacity if capacity is not None else max(1.0, rate_per_min / 60.0)
        self.level = self.capacity
        self.stamp = time.monotonic() if now is None else now

    def reserve(self, amount: float, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        self.level -= amount
        return 0.0 if self.level >= 0 else -self.level / self.rate


class AsyncLimiter:
    """Requests/min and tokens/min limits shared by one judge's concurrent requests."""

    def __init__(self, requests_per_min: float | None, tokens_per_min: float | None):
        # A burst of a few seconds' worth: smooth enough for the server, never below one request.
        self.requests = (
            TokenBucket(requests_per_min, max(1.0, requests_per_min / 20)) if requests_per_min else None
        )
        self.tokens = TokenBucket(tokens_per_min, max(1.0, tokens_per_min / 20)) if tokens_per_min else None

    async def wait(self, tokens: int) -> None:
        delay = 0.0
        if self.requests:
            delay = max(delay, self.requests.reserve(1))
        if self.tokens:
            # A request larger than the burst still goes, after the wait its size needs.
            delay = max(delay, self.tokens.reserve(tokens))
        if delay > 0:
            await asyncio.sleep(delay)


IMAGE_TOKENS = 765  # what GPT-4V bills a 1024 x 1024 picture in high detail: a bound for small ones


def estimate_tokens(messages: list[dict[str, Any]], max_tokens: int) -> int:
    """Rough upper bound of a request's token use (4 characters a token, an image ``IMAGE_TOKENS``,
    plus the answer budget)."""
    chars = images = 0
    for m in messages:
        content = m.get("content") or ""
        if isinstance(content, str):
            chars += len(content)
        else:
            chars += sum(len(part.get("text", "")) for part in content)
            images += sum(1 for part in content if part.get("type") == "image_url")
    return chars // 4 + images * IMAGE_TOKENS + 8 * len(messages) + max_tokens


def cache_key(model: str, messages: list[dict[str, str]], params: dict[str, Any], version: str) -> str:
    """A stable key for one request: what was asked, of which model, how, by which judge version.

    The base URL and the API key are left out on purpose: the key must never be stored, and the
    same model behind another URL answers the same request.
    """
    blob = json.dumps(
        {"model": model, "messages": messages, "params": params, "version": version},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()


class DiskCache:
    """One JSON file per key under ``root/ab/KEY.json``, written atomically (tmp file + rename).

    Several processes may share the directory: a reader sees a whole entry or none, and two
    writers of the same key both write the same answer, the later rename winning.
    """

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._path(key).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def put(self, key: str, value: dict[str, Any]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(value, ensure_ascii=False))
        os.replace(tmp, path)
