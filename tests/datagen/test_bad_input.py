"""Bad input: a clear error naming the file, line or key, exit status 2, and nothing written."""

import json
import shutil

import pytest

from cluster.cli import main


def run(tmp_path, capsys, *overrides, model=None):
    run_dir = tmp_path / "run"
    argv = ["generate", "configs/quickstart.yaml", f"run_dir={run_dir}", *overrides]
    if model is not None:
        argv.append(f"model={model}")
    code = main(argv)
    assert not run_dir.exists(), "bad input must leave nothing behind"
    return code, capsys.readouterr().err


def prompts_file(tmp_path, lines):
    f = tmp_path / "prompts.jsonl"
    f.write_text("\n".join(lines) + "\n")
    return f


def test_malformed_jsonl_line(tmp_path, capsys, tiny_model_dir):
    f = prompts_file(tmp_path, [json.dumps({"prompt_id": "a", "prompt": "hi"}), "{oops"])
    code, err = run(tmp_path, capsys, f"prompts.path={f}", model=tiny_model_dir)
    assert code == 2 and f"{f}:2: not valid JSON" in err


def test_missing_field(tmp_path, capsys, tiny_model_dir):
    f = prompts_file(tmp_path, [json.dumps({"prompt_id": "a", "question": "hi"})])
    code, err = run(tmp_path, capsys, f"prompts.path={f}", model=tiny_model_dir)
    assert code == 2 and f"{f}:1: missing field 'prompt'" in err


def test_empty_prompt_is_refused(tmp_path, capsys, tiny_model_dir):
    f = prompts_file(tmp_path, [json.dumps({"prompt_id": "a", "prompt": ""})])
    code, err = run(tmp_path, capsys, f"prompts.path={f}", model=tiny_model_dir)
    assert code == 2 and f"{f}:1" in err and "prompt is empty" in err


def test_prompt_longer_than_the_context_is_refused(tmp_path, capsys, tiny_model_dir):
    f = prompts_file(
        tmp_path,
        [
            json.dumps({"prompt_id": "short", "prompt": "hi"}),
            json.dumps({"prompt_id": "huge", "prompt": "word " * 600}),
        ],
    )
    code, err = run(tmp_path, capsys, f"prompts.path={f}", "generate.engine.max_model_len=512", model=tiny_model_dir)
    assert code == 2 and "1 prompt(s) do not fit the context of 512 tokens" in err and "huge (" in err
    assert "short" not in err


def test_prompts_are_measured_in_the_tokens_the_engine_sends(tiny_model_dir):
    # The driver measures with the generic fast tokenizer (no torch); vLLM prompts through AutoTokenizer.
    from transformers import AutoTokenizer

    from datagen.generate import prompt_tokenizer

    ours, engines = prompt_tokenizer(str(tiny_model_dir)), AutoTokenizer.from_pretrained(tiny_model_dir)
    chats = [
        [{"role": "user", "content": "What is 12 × 7? Put it in $\\boxed{84}$, **bold**."}],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "def f(x):\n\treturn x  # 日本語 <|im_end|>"},
        ],
    ]
    for chat in chats:
        text = ours.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        assert text == engines.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        assert ours(text, add_special_tokens=False)["input_ids"] == engines(text, add_special_tokens=False)["input_ids"]


def test_a_broken_model_config_is_named_when_the_context_is_read_from_it(tmp_path, capsys, tiny_model_dir):
    # generate.engine.max_model_len unset: the context length comes from the folder's config.json
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    config = model / "config.json"
    config.write_text(config.read_text()[:40])  # cut off, as by a full disk
    code, err = run(tmp_path, capsys, "prompts.limit=2", "generate.engine.max_model_len=null", model=model)
    assert code != 0 and f"{config}' is not a valid JSON file" in err, err


def test_config_typo(tmp_path, capsys):
    code, err = run(tmp_path, capsys, "generate.nn=3")
    assert code == 2 and "generate.nn: unknown key" in err


def test_wrong_model_path(tmp_path, capsys):
    code, err = run(tmp_path, capsys, model=str(tmp_path / "no-model"))
    assert code == 2 and "no such folder" in err


def test_folder_that_is_not_a_model(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, err = run(tmp_path, capsys, model=str(tmp_path / "empty"))
    assert code == 2 and "no config.json" in err


def test_unknown_hub_model_offline(tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # the hub reads the variable once, at import, and this process may have imported it already: without
    # this it would try the network (some 20 s of retries where there is none) before giving up
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    code, err = run(tmp_path, capsys, model="nobody-here/no-such-model-xyz")
    assert code == 2 and "is not a built-in alias" in err


@pytest.mark.parametrize("argv", [["generate"], ["nonsense", "configs/quickstart.yaml"]])
def test_usage_errors_exit_nonzero(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
