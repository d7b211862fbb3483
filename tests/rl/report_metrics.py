"""A metrics.json as the eval stage writes it (every optional section filled), and a reader of the
report's Markdown tables, for the report tests."""

from __future__ import annotations

import re
from typing import Any


def iv(value: float, low: float, high: float) -> dict[str, float]:
    return {"value": value, "low": low, "high": high}


def model(name: str, t1: float, t2: float, transitions: dict[str, int], code: bool = False) -> dict[str, Any]:
    return {
        "model": name,
        "problems": 200,
        "samples": 200,
        "unjudgeable": 3,
        "acc_t1": iv(t1, t1 - 0.0687, t1 + 0.0712),
        "acc_t2": iv(t2, t2 - 0.0653, t2 + 0.0704),
        "delta": iv(t2 - t1, t2 - t1 - 0.0455, t2 - t1 + 0.0391),
        "delta_i2c": iv(transitions["i2c"] / 200, 0.0273, 0.0901),
        "delta_c2i": iv(transitions["c2i"] / 200, 0.0349, 0.1012),
        "transitions": transitions,
        "pass_at_k": {"t1": {"1": 0.3125, "5": 0.6078}, "t2": {"1": 0.2951, "5": 0.5834}} if code else None,
        "selfee_k": {str(k): iv(0.30 + 0.021 * k, 0.24 + 0.02 * k, 0.37 + 0.02 * k) for k in range(4)},
        "seconds": 95.24,
        "problems_per_s": 2.1,
    }


def sample_metrics() -> dict[str, Any]:
    return {
        "version": 1,
        "eval": {
            "prompts": "builtin arithmetic test (200)",
            "problems": 200,
            "n": 1,
            "temperature": 0.0,
            "max_tokens": 256,
            "review_prompt": "Review your previous answer and find problems with your answer.",
            "judge": "verifier",
            "interval": "wilson",
        },
        "models": {
            "base": model("smollm2-135m-instruct", 0.41, 0.38, {"c2c": 70, "c2i": 12, "i2c": 10, "i2i": 108}),
            "trained": model("/runs/x/train/model", 0.455, 0.4875, {"c2c": 80, "c2i": 9, "i2c": 15, "i2i": 96},
                             code=True),
        },
        "comparisons": [
            {"model": "trained", "against": "base", "metric": "acc_t1", "b": 4, "c": 9, "p_value": 0.2668,
             "test": "mcnemar_exact"},
            {"model": "trained", "against": "base", "metric": "acc_t2", "b": 3, "c": 25, "p_value": 3.47e-05,
             "test": "mcnemar_exact"},
        ],
        "pairwise": [
            {"model": "trained", "against": "base", "judge": "openai", "win": 0.5, "tie": 0.2, "loss": 0.3,
             "score": 0.6, "n": 200},
        ],
    }


def md_tables(text: str) -> list[list[list[str]]]:
    """Every Markdown table as rows of cells (header row first, the --- row left out)."""
    tables, current = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if not all(set(c) <= {"-"} for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables + ([current] if current else [])
