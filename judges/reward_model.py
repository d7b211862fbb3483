"""A reward model judge: any ``AutoModelForSequenceClassification`` (Starling-RM style).

Each (prompt, response) conversation is rendered with the reward model's chat template (or as
plain "question\\n\\nresponse" when it has none), tokenized in batches with padding, and the chosen
logit is the reward. The judge stage runs it in a Ray actor pool, on GPU when ``num_gpus > 0``.
"""

from __future__ import annotations

from typing import Any

from judges.base import BaseJudge, JudgeResult, register


@register("reward_model")
class RewardModelJudge(BaseJudge):
    def __init__(self, name: str, settings: Any):
        super().__init__(name, settings)
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.torch = torch
        self.device = "cuda" if settings.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        dtype = "auto" if settings.dtype == "auto" else getattr(torch, settings.dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(settings.model)
        self.tokenizer.padding_side = "right"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(settings.model, dtype=dtype)
        if self.model.config.pad_token_id is None:
            # Sequence classifiers pool at the last non-pad token, which needs the pad id.
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(self.device).eval()

    def render(self, messages: list[dict[str, str]], response: str) -> str:
        """The text the reward model scores: the conversation plus the response as the assistant turn."""
        conversation = [{"role": m["role"], "content": m["content"]} for m in messages]
        conversation.append({"role": "assistant", "content": response})
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(conversation, tokenize=False)
        return "\n\n".join(m["content"] for m in conversation)

    def judge(self, rows: list[dict[str, Any]]) -> list[JudgeResult]:
        results = [JudgeResult() for _ in rows]
        jobs: list[tuple[int, str, str]] = []
        for i, row in enumerate(rows):
            for slot in ("1", "2"):
                response = row.get(f"attempt{slot}")
                if response is not None:
                    try:
                        jobs.append((i, slot, self.render(list(row.get("messages") or []), response)))
                    except Exception as e:  # a template that rejects the conversation flags the row
                        results[i].flag(f"attempt{slot}: cannot apply chat template: {e}")
        for start in range(0, len(jobs), self.settings.batch_size):
            chunk = jobs[start : start + self.settings.batch_size]
            for (i, slot, _), score in zip(chunk, self._score([text for _, _, text in chunk]), strict=True):
                setattr(results[i], f"score{slot}", score)
                if results[i].raw:
                    results[i].raw += f",{slot}={score:.6g}"
                else:
                    results[i].raw = f"{slot}={score:.6g}"
        return self._account(results)

    def _score(self, texts: list[str]) -> list[float]:
        torch = self.torch
        batch = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.settings.max_length,
            return_tensors="pt",
            add_special_tokens=False,
        ).to(self.device)
        with torch.inference_mode():
            logits = self.model(**batch).logits
        return logits[:, self.settings.score_index].float().cpu().tolist()

    def close(self) -> None:
        del self.model
