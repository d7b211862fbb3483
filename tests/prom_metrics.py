"""Reading Ray's Prometheus endpoint back in tests: parse the text format, wait for series to appear."""

from __future__ import annotations

import re
import time
import urllib.request

SERIES = re.compile(r"^(\w+)\{(.*)\} (\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

Series = list[tuple[str, dict[str, str], float]]


def scrape(port: int, prefix: str = "ray_selfcorrect_") -> Series:
    """Every series whose name starts with ``prefix``: (name, labels, value)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = []
    for line in text.splitlines():
        m = SERIES.match(line)
        if m and m.group(1).startswith(prefix):
            out.append((m.group(1), dict(LABEL.findall(m.group(2))), float(m.group(3))))
    return out


def value(series: Series, name: str, labels: dict[str, str]) -> float | None:
    """One series over Ray's worker processes (a counter's sum, a gauge's largest), None until exported."""
    found = [v for n, tags, v in series if n == name and all(tags.get(k) == w for k, w in labels.items())]
    if not found:
        return None
    return sum(found) if re.search(r"_(total|sum|count|bucket)$", name) else max(found)


def wait_for(port: int, wanted: list[tuple[str, dict[str, str]]], timeout_s: float) -> list[float | None]:
    """The values of ``wanted`` once all are exported, or as they stand at the deadline (Ray exports
    periodically: every 10 s unless ``metrics_report_interval_ms`` says otherwise)."""
    deadline = time.monotonic() + timeout_s
    while True:
        series = scrape(port)
        got = [value(series, name, labels) for name, labels in wanted]
        if all(g is not None for g in got) or time.monotonic() > deadline:
            return got
        time.sleep(0.5)
