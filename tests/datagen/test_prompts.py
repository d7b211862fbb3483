import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datagen.config import PromptsConfig
from datagen.prompts import PromptError, load_prompts
from datagen.records import CODE_ENTRY_POINT, CODE_PROMPT, CODE_TEST


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_jsonl_text_and_chat_prompts(tmp_path):
    f = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt_id": "a", "prompt": "What is 2+2?", "reference": 4, "task": "math", "source": "x"},
            {
                "prompt_id": "b",
                "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
            },
        ],
    )
    a, b = load_prompts(PromptsConfig(path=str(f)))
    assert a.messages == [{"role": "user", "content": "What is 2+2?"}]
    assert a.reference == "4" and a.task == "math" and a.metadata == {"source": "x"}
    assert b.messages[0]["role"] == "system" and b.task == "open" and b.reference is None


def test_field_names_are_configurable(tmp_path):
    f = write_jsonl(tmp_path / "p.jsonl", [{"id": 7, "question": "Q?", "answer": "A"}])
    (p,) = load_prompts(PromptsConfig(path=str(f), id_field="id", prompt_field="question", reference_field="answer"))
    assert (p.prompt_id, p.reference) == ("7", "A")


def test_malformed_line_names_file_and_line(tmp_path):
    f = write_jsonl(tmp_path / "p.jsonl", [{"prompt_id": "a", "prompt": "ok"}, '{"prompt_id": "b", "prompt": '])
    with pytest.raises(PromptError, match=rf"{f}:2: not valid JSON"):
        load_prompts(PromptsConfig(path=str(f)))


@pytest.mark.parametrize(
    "row, needle",
    [
        ({"prompt": "x"}, "missing field 'prompt_id'"),
        ({"prompt_id": "a"}, "missing field 'prompt'"),
        ({"prompt_id": "a", "prompt": "   "}, "prompt is empty"),
        ({"prompt_id": "a", "prompt": []}, "non-empty"),
        ({"prompt_id": "a", "prompt": [{"role": "assistant", "content": "x"}]}, "last message must come from the user"),
        ({"prompt_id": "a", "prompt": [{"role": "robot", "content": "x"}]}, "role 'robot'"),
        ({"prompt_id": "a", "prompt": "x", "task": "poetry"}, "field 'task' is 'poetry'"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_bad_rows_name_line_and_field(tmp_path, row, needle):
    f = write_jsonl(tmp_path / "p.jsonl", [{"prompt_id": "ok", "prompt": "fine"}, row])
    with pytest.raises(PromptError) as e:
        load_prompts(PromptsConfig(path=str(f)))
    assert f"{f}:2" in str(e.value) and needle in str(e.value)


def test_duplicate_ids_are_refused(tmp_path):
    f = write_jsonl(tmp_path / "p.jsonl", [{"prompt_id": "a", "prompt": "x"}, {"prompt_id": "a", "prompt": "y"}])
    with pytest.raises(PromptError, match="'a' appears twice"):
        load_prompts(PromptsConfig(path=str(f)))


def test_parquet_file_and_missing_column(tmp_path):
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"prompt_id": ["a", "b"], "prompt": ["x", "y"], "reference": ["1", None]}), good)
    ps = load_prompts(PromptsConfig(path=str(good)))
    assert [p.prompt_id for p in ps] == ["a", "b"] and ps[1].reference is None
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"prompt_id": ["a"], "text": ["x"]}), bad)
    with pytest.raises(PromptError, match=rf"{bad}: missing column 'prompt'"):
        load_prompts(PromptsConfig(path=str(bad)))


def test_folder_of_files_in_name_order(tmp_path):
    write_jsonl(tmp_path / "b.jsonl", [{"prompt_id": "b1", "prompt": "x"}])
    pq.write_table(pa.table({"prompt_id": ["a1"], "prompt": ["y"]}), tmp_path / "a.parquet")
    assert [p.prompt_id for p in load_prompts(PromptsConfig(path=str(tmp_path)))] == ["a1", "b1"]


def test_saved_hf_dataset(tmp_path):
    import datasets

    d = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"prompt_id": ["t1"], "prompt": ["x"]}),
            "test": datasets.Dataset.from_dict({"prompt_id": ["e1"], "prompt": ["y"]}),
        }
    )
    d.save_to_disk(str(tmp_path / "ds"))
    (p,) = load_prompts(PromptsConfig(path=str(tmp_path / "ds"), split="test"))
    assert p.prompt_id == "e1"


def test_missing_path_and_limit(tmp_path):
    with pytest.raises(PromptError, match="no such file"):
        load_prompts(PromptsConfig(path=str(tmp_path / "nope.jsonl")))
    f = write_jsonl(tmp_path / "p.jsonl", [{"prompt_id": str(i), "prompt": "x"} for i in range(10)])
    assert len(load_prompts(PromptsConfig(path=str(f), limit=3))) == 3


def test_arithmetic_is_seeded_exact_and_splits_never_share_a_problem():
    train = load_prompts(PromptsConfig(builtin="arithmetic", size=400))
    again = load_prompts(PromptsConfig(builtin="arithmetic", size=400))
    test = load_prompts(PromptsConfig(builtin="arithmetic", split="test", size=400))
    assert [p.prompt_id for p in train] == [p.prompt_id for p in again]
    assert len(train) == len(test) == 400
    questions = lambda ps: {p.metadata["question"] for p in ps}  # noqa: E731
    assert not questions(train) & questions(test)
    assert all(p.task == "math" and p.reference for p in train)
    # every answer is exact: an integer or a reduced fraction
    from fractions import Fraction

    for p in train:
        assert str(Fraction(p.reference)) == p.reference


def test_humaneval_from_its_package():
    ps = load_prompts(PromptsConfig(builtin="humaneval"))
    assert len(ps) == 164 and ps[0].prompt_id == "HumanEval/0"
    assert ps[0].task == "code" and {CODE_TEST, CODE_ENTRY_POINT, CODE_PROMPT} <= set(ps[0].metadata)
