"""In-context self-critic (SIMA): the policy model itself picks the better of two responses.

On a row with images the model (in vLLM) sees the images and SIMA's own critic prompt
(``judges.sima_critic``: the question, the ground truth, two responses and its three metrics of
object, relationship and attribute accuracy, with its two worked examples). On a text row it sees
the question, the reference answer, a few worked examples and SIMA's three criteria carried over
from image description to text answers. Either way it ends with "[[1]]" or "[[2]]". The verdict is
parsed leniently (``parse_verdict``); an unparseable one gives pref 0 with an error, and the row
is kept. The pair of each row follows ``judges.base.pairs``; ``order: swapped`` shows its second
response first (SIMA's seed shows the sampled answer before the greedy one) and maps the verdict back;
``order: both`` asks in both orders and keeps a verdict only where they agree (``combine_orders``).
``verdict: forced`` asks for no writing: the critic's answer is begun with "[[" and its verdict is the
more probable of the tokens "1" and "2" (greedy over those two only), the way a multiple-choice
benchmark reads a small model's choice from its probabilities rather than from its prose.
"""

from __future__ import annotations

import gc
from typing import Any

from judges.base import (
    BaseJudge,
    JudgeResult,
    combine_orders,
    image_parts,
    pairs,
    parse_verdict,
    question_text,
    register,
)
from judges.sima_critic import sima_critic_prompt

CRITERIA = """\
1. Accuracy of the final answer: does the response reach the same result as the reference answer?
2. Accuracy of each reasoning step: are the steps, calculations and relations between quantities correct?
3. Relevance and completeness: does the response answer exactly what the question asks, without \
missing or invented parts?"""

FEW_SHOT = """\
Example 1
Question: What is 15 + 27?
Reference answer: 42
[Response 1] 15 + 27 = 32. The answer is 32.
[Response 2] 15 + 20 = 35, and 35 + 7 = 42. The answer is 42.
Judgement: Response 2 reaches the reference answer with correct steps; Response 1 adds wrongly. [[2]]

Example 2
Question: A box holds 6 eggs. How many eggs are in 4 boxes?
Reference answer: 24
[Response 1] 4 boxes with 6 eggs each: 4 * 6 = 24 eggs.
[Response 2] 6 + 4 = 10 eggs.
Judgement: Response 1 uses the right relation (multiplication) and gets 24; Response 2 adds instead. [[1]]
"""

PROMPT = """\
You are judging two responses to a question, using the reference answer.
Criteria, in order of importance:
{criteria}

{few_shot}Now judge:
Question: {question}
Reference answer: {reference}
[Response 1] {first}
[Response 2] {second}
Give a one-sentence judgement, then end with [[1]] if Response 1 is better, [[2]] if Response 2 is."""

FORCED_LEAD = "The better response is [["


def critic_prompt(
    question: str, reference: str | None, first: str, second: str, few_shot: bool = True
) -> str:
    """The self-critic's user message for one pair."""
    return PROMPT.format(
        criteria=CRITERIA,
        few_shot=(FEW_SHOT + "\n") if few_shot else "",
        question=question,
        reference=reference or "(none given)",
        first=first,
        second=second,
    )


@register("self_critic")
class SelfCriticJudge(BaseJudge):
    suffixes = ("pref", "raw", "error")

    def __init__(self, name: str, settings: Any):
        super().__init__(name, settings)
        if not settings.model:
            raise ValueError(
                f"judges.{name}.model is not set (the judge stage sets it to the config's model)"
            )
        from vllm import LLM, SamplingParams

        gc.collect()  # then the loaded libraries, which live as long as the actor, are frozen: vLLM's start
        gc.freeze()  # skips them in its collections (datagen.engine)
        self.llm = LLM(model=settings.model, **settings.engine)
        self.forced = settings.verdict == "forced"
        if self.forced:
            choices = [self.llm.get_tokenizer().encode(c, add_special_tokens=False) for c in ("1", "2")]
            if any(len(ids) != 1 for ids in choices):
                raise ValueError(f"judges.{name}.verdict: forced needs '1' and '2' as one token each")
            self.sampling = SamplingParams(
                temperature=0.0, max_tokens=1, allowed_token_ids=[ids[0] for ids in choices], seed=0
            )
        else:
            self.sampling = SamplingParams(
                temperature=settings.temperature, max_tokens=settings.max_tokens, seed=0
            )

    def generate(self, conversations: list[list[dict[str, Any]]]) -> list[str]:
        if self.forced:  # the answer so far is "[[": its next token is the verdict
            conversations = [[*c, {"role": "assistant", "content": FORCED_LEAD}] for c in conversations]
            outputs = self.llm.chat(
                conversations, self.sampling, use_tqdm=False, add_generation_prompt=False, continue_final_message=True
            )
            return [f"{FORCED_LEAD}{o.outputs[0].text}]]" for o in outputs]
        outputs = self.llm.chat(conversations, self.sampling, use_tqdm=False)
        return [o.outputs[0].text for o in outputs]

    def answers(self, conversations: list[list[dict[str, Any]]]) -> list[tuple[str, str]]:
        """(the critic's text, "") per conversation, or ("", why vLLM refused it): a critic prompt longer than
        the context (SIMA's, with its examples and the picture, is over a thousand tokens) is one row's
        problem, not the batch's. The batch is tried whole first, then one by one to find the refused."""
        from vllm.exceptions import VLLMClientError

        try:
            return [(text, "") for text in self.generate(conversations)]
        except VLLMClientError as e:
            if len(conversations) == 1:
                return [("", f"vLLM refused the critic's prompt: {str(e).splitlines()[0]}")]
        return [answer for c in conversations for answer in self.answers([c])]

    def ask(self, row: dict[str, Any], first: str, second: str) -> list[dict[str, Any]]:
        """The critic's conversation about one pair: SIMA's own prompt beside the images, else the text one."""
        images = image_parts(row)
        few_shot = self.settings.few_shot
        if not images:
            text = critic_prompt(question_text(row), row.get("reference"), first, second, few_shot=few_shot)
            return [{"role": "user", "content": text}]
        text = sima_critic_prompt(question_text(row), row.get("reference"), first, second, few_shot=few_shot)
        return [{"role": "user", "content": [*images, {"type": "text", "text": text}]}]

    def _verdicts(self, rows: list[dict[str, Any]], where: list[int], swapped: bool) -> list[tuple[Any, str, str]]:
        """(the verdict as given on the pair shown, the critic's text, why there is none) per pair in ``where``."""
        found = pairs(rows)
        asks = [self.ask(rows[i], *(found[i][::-1] if swapped else found[i])) for i in where]
        self.stats.calls += len(asks)
        out = []
        for text, refused in self.answers(asks) if asks else []:
            verdict = None if refused else parse_verdict(text)
            out.append((verdict, text, refused or ("" if verdict is not None else "no verdict in the critic's answer")))
        return out

    def judge(self, rows: list[dict[str, Any]]) -> list[JudgeResult]:
        results = [JudgeResult() for _ in rows]
        where = [i for i, pair in enumerate(pairs(rows)) if pair is not None]
        order = self.settings.order
        answers = self._verdicts(rows, where, swapped=order == "swapped")
        if order == "swapped":
            answers = [({1: 2, 2: 1}.get(v, v), t, e) for v, t, e in answers]
        elif order == "both":
            back = self._verdicts(rows, where, swapped=True)
            answers = [
                (combine_orders(v1, v2), f"{t1}\n---\n{t2}", e1 or e2)
                for (v1, t1, e1), (v2, t2, e2) in zip(answers, back, strict=True)
            ]
        for i, (verdict, text, error) in zip(where, answers, strict=True):
            results[i].raw = text
            results[i].pref = 0 if verdict is None else verdict
            if error:
                results[i].flag(error)
        return self._account(results)

    def close(self) -> None:
        del self.llm
