from pathlib import Path

import pytest

from cluster.config import ConfigError, load_config, parse_overrides

CONFIGS = sorted((Path(__file__).parents[2] / "configs").rglob("*.yaml"))


def test_defaults_are_valid():
    cfg = load_config(None)
    assert cfg.model == "smollm2-135m-instruct"
    assert cfg.prompts.builtin == "arithmetic"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_config_validates(path):
    load_config(path)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_resolved_config_a_run_writes_loads_as_the_same_config(path, tmp_path):
    # what `selfcorrect status RUN_DIR` and the report read back: every default spelled out
    import yaml

    cfg = load_config(path, [f"run_dir={tmp_path}"])
    written = tmp_path / "config.yaml"
    written.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    again = load_config(written)
    # the same settings (model_cache's default "~" comes back expanded, as a path given in a config does)
    assert again.model_dump(exclude={"model_cache"}) == cfg.model_dump(exclude={"model_cache"})
    assert again.model_cache == str(Path(cfg.model_cache).expanduser().absolute())


def test_shipped_configs_cover_every_method():
    names = {p.stem for p in CONFIGS}
    assert {"quickstart", "scl", "selfee", "sima", "self_contrast", "score"} <= names


def test_yaml_holds_only_differences(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("generate:\n  n: 7\n")
    cfg = load_config(f)
    assert cfg.generate.n == 7 and cfg.generate.max_tokens == load_config(None).generate.max_tokens


def test_overrides_are_typed_and_dotted():
    cfg = load_config(None, ["generate.n=8", "generate.temperature=0.5", "prompts.limit=3", "run_dir=/x"])
    assert cfg.generate.n == 8 and cfg.generate.temperature == 0.5 and cfg.prompts.limit == 3
    assert cfg.run_dir == "/x"


def test_prompts_path_replaces_the_default_builtin():
    cfg = load_config(None, ["prompts.path=data.jsonl"])
    assert cfg.prompts.path == "data.jsonl" and cfg.prompts.builtin is None


def test_unknown_key_names_file_and_key(tmp_path):
    f = tmp_path / "typo.yaml"
    f.write_text("generate:\n  temprature: 0.5\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(f) in str(e.value) and "generate.temprature: unknown key" in str(e.value)


def test_bad_value_names_key_and_reason():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["generate.n=0"])
    assert "generate.n" in str(e.value) and "greater than or equal to 1" in str(e.value)


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["generate.mode=best"], "generate.mode"),
        (["generate.mode=sima", "generate.n=1"], "sima mode needs n >= 2"),
        (["generate.enforce_revisions=5", "generate.max_revisions=2"], "enforce_revisions"),
        (["prompts.path=a.jsonl", "prompts.builtin=arithmetic"], "only one of prompts.path"),
        (["generate.engine.min_actors=3", "generate.engine.max_actors=2"], "max_actors"),
        (["judge_pool.min_actors=2"], "judge_pool"),
    ],
)
def test_invalid_combinations(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(None, overrides)


@pytest.mark.parametrize("item", ["generate.n", "=3", "generate..n=3"])
def test_malformed_override(item):
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides([item])


def test_override_into_a_scalar_is_an_error():
    with pytest.raises(ConfigError, match="not a section"):
        parse_overrides(["model=x", "model.name=y"])


def test_unreadable_and_non_mapping_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    f = tmp_path / "list.yaml"
    f.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(f)
    g = tmp_path / "bad.yaml"
    g.write_text("generate: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(g)


def test_paths_are_made_absolute_where_the_command_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["run_dir=runs/a", "model_cache=~/models"])
    assert cfg.run_dir == str(tmp_path / "runs" / "a")
    assert cfg.model_cache == str(Path.home() / "models")
    assert cfg.stage_dir("train") == tmp_path / "runs" / "a" / "train"
