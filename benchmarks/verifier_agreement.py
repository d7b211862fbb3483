"""How often a verifier's 0/1 math scores agree with a person's reading of the same responses, and
with math-verify's.

    python benchmarks/verifier_agreement.py [--labels tests/judges/data/hand_checked.jsonl] [--code DIR]
    python benchmarks/verifier_agreement.py --forms [--code DIR]

The labels (one line per attempt: the response, its finish reason, the reference, the final answer a
person read in it or null, and whether that answer is right) are regrouped into sample rows and
scored by the ``verifier`` judge exactly as the judge stage calls it, so finish reasons travel in
``attempt1_finish``/``attempt2_finish``. ``--code DIR`` imports the judges package from another
checkout, to compare versions of the verifier on the same labels. Prints per-attempt and per-row
agreement of the scores, agreement of the extracted answers, and the disagreements.

``--forms`` scores the MATH/GSM8K answer forms of tests/judges/math_form_cases.py (tuples, intervals,
sets, matrices, relations, words and letters, several boxes, number forms, ``#### N``) the same way,
in both modes (default and ``explicit_answers_only``), and prints per kind how often each mode
agrees with math-verify's own ``verify(parse(reference), parse(response))`` and with the person's
verdict, then every case where the verifier credits what math-verify rejects, with the reason.

How the labels were read: the final answer is the last explicit statement that holds a value ("The
answer is 12", "Final answer: 12", "The correct answer is 12"); "The answer is N" holds none, and a
response that computes a value and then says "The answer is N" commits to the computed value; with
no explicit statement, the value the closing sentence commits to; a response cut off by max_tokens
commits only to an explicit statement finished before the cut.

Measured on tests/judges/data/hand_checked.jsonl (208 rows of SmolLM2-135M-Instruct on the built-in
arithmetic prompts, 25 of 416 attempts right): this verifier 415/416 attempts (0.998), 207/208 rows;
the extract-then-last-number verifier it replaced 397/416 (0.954), 191/208 rows (8 right answers
scored 0, 11 wrong or cut-off ones scored 1).

Measured with ``--forms`` (228 cases): both modes agree with the person's verdict on all 228 and
with math-verify's on 183 (default) and 173 (explicit); math-verify agrees with the person on 183
and credits 10 wrong answers, the verifier none. Every case where the verifier credits what
math-verify rejects is listed with its reason. The verifier before the form-aware reader agreed
with the person on 140 (default) and 159 (explicit) and credited 18 wrong answers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--labels", default=str(ROOT / "tests" / "judges" / "data" / "hand_checked.jsonl"))
    ap.add_argument("--code", default=str(ROOT), help="checkout whose judges package is measured")
    ap.add_argument("--quiet", action="store_true", help="no list of disagreements")
    ap.add_argument("--forms", action="store_true", help="the MATH/GSM8K answer forms, against math-verify")
    args = ap.parse_args()
    sys.path.insert(0, args.code)
    if args.forms:
        forms(args.code)
        return
    from judges.base import build
    from judges.config import judge_settings
    from judges.verifier import answers_match

    labels = [json.loads(line) for line in Path(args.labels).read_text().splitlines() if line.strip()]
    rows: dict[tuple[str, int], dict] = {}
    for lab in labels:
        row = rows.setdefault(
            (lab["prompt_id"], lab["sample_idx"]),
            {"prompt_id": lab["prompt_id"], "sample_idx": lab["sample_idx"], "task": "math",
             "reference": lab["reference"], "metadata": "{}", "labels": {}},
        )
        row[f"attempt{lab['attempt']}"] = lab["text"]
        row[f"attempt{lab['attempt']}_finish"] = lab["finish"]
        row["labels"][lab["attempt"]] = lab
    judge = build("verifier", judge_settings("verifier", {}))
    results = judge.judge(list(rows.values()))

    n = score_ok = answer_ok = rows_ok = 0
    both_right = missed = false_credit = 0
    misses = []
    for row, res in zip(rows.values(), results, strict=True):
        raw = json.loads(res.raw or "{}")
        row_ok = True
        for slot, lab in sorted(row["labels"].items()):
            score = getattr(res, f"score{slot}")
            got = raw.get(f"answer{slot}")
            want = lab["label_answer"]
            same_score = (score == 1.0) == lab["label_correct"]
            same_answer = got == want or (got is not None and want is not None and answers_match(got, want))
            n += 1
            both_right += score == 1.0 and lab["label_correct"]
            missed += score != 1.0 and lab["label_correct"]
            false_credit += score == 1.0 and not lab["label_correct"]
            score_ok += same_score
            answer_ok += same_answer
            row_ok &= same_score
            if not same_score:
                misses.append(
                    f"  {row['prompt_id']} s{row['sample_idx']} attempt{slot} ({lab['finish']}): "
                    f"ref {lab['reference']}, "
                    f"label {want!r} ({'right' if lab['label_correct'] else 'wrong'}), verifier {got!r} -> {score}"
                    + (f" [{raw.get(f'rule{slot}')}]" if raw.get(f"rule{slot}") else "")
                )
        rows_ok += row_ok
    print(f"verifier from {args.code}: {len(rows)} rows, {n} judgements")
    print(f"  score agreement per judgement: {score_ok}/{n} = {score_ok / n:.3f}")
    print(f"  score agreement per row (both attempts): {rows_ok}/{len(rows)} = {rows_ok / len(rows):.3f}")
    print(f"  extracted answer = labelled answer: {answer_ok}/{n} = {answer_ok / n:.3f}")
    print(f"  labelled right and scored 1: {both_right}; labelled right, scored 0: {missed}; "
          f"labelled wrong or no answer, scored 1: {false_credit}")
    if misses and not args.quiet:
        print("score disagreements:")
        print("\n".join(misses))


def forms(code: str) -> None:
    sys.path.insert(1, str(ROOT / "tests" / "judges"))
    from math_form_cases import CASES, KINDS, math_verify_verdict

    from judges.base import build
    from judges.config import judge_settings

    rows = [
        {"prompt_id": f"p{i}", "sample_idx": 0, "task": "math", "reference": c.reference, "metadata": "{}",
         "attempt1": c.text, "attempt1_finish": c.finish, "attempt2": None}
        for i, c in enumerate(CASES)
    ]
    default, explicit = (
        [r.score1 == 1.0 for r in build("verifier", judge_settings("verifier", s)).judge(rows)]
        for s in ({}, {"explicit_answers_only": True})
    )
    mv = [math_verify_verdict(c.text, c.reference) for c in CASES]
    person = [c.right for c in CASES]
    strict = [c.right if c.strict is None else c.strict for c in CASES]
    print(f"verifier from {code}: {len(CASES)} MATH/GSM8K-form cases (tests/judges/math_form_cases.py)")
    print("| kind | cases | default = math-verify | explicit = math-verify | math-verify = person "
          "| default = person | explicit = person |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for kind in (*KINDS, "all"):
        idx = [i for i, c in enumerate(CASES) if kind in ("all", c.kind)]

        def share(a: list[bool], b: list[bool], idx: list[int] = idx) -> str:
            return f"{sum(a[i] == b[i] for i in idx)}/{len(idx)} ({sum(a[i] == b[i] for i in idx) / len(idx):.0%})"

        print(f"| {kind} | {len(idx)} | {share(default, mv)} | {share(explicit, mv)} | {share(mv, person)} "
              f"| {share(default, person)} | {share(explicit, strict)} |")
    wrong = sum((default[i] or explicit[i]) and not person[i] for i in range(len(CASES)))
    mv_wrong = sum(mv[i] and not person[i] for i in range(len(CASES)))
    print(f"wrong answers credited: verifier {wrong}, math-verify {mv_wrong}")
    print("credited by the verifier, rejected by math-verify:")
    for i, c in enumerate(CASES):
        if (default[i] or explicit[i]) and not mv[i]:
            modes = "+".join(m for m, got in (("default", default[i]), ("explicit", explicit[i])) if got)
            print(f"  [{c.kind}, {modes}] {c.text[:70]!r} vs {c.reference[:30]!r}: {c.why or 'NOT EXPLAINED'}")


if __name__ == "__main__":
    main()
