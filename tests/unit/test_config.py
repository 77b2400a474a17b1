"""The strict config tree: every file in configs/ loads, overrides coerce, every bad input is one clear error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cluster.config import Config, ConfigError, build, dump, load, reference_markdown

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_file_loads_and_round_trips(path: Path) -> None:
    cfg = load(path)
    assert isinstance(cfg, Config)
    assert build(yaml.safe_load(dump(cfg))) == cfg


def test_configs_folder_is_not_empty() -> None:
    assert any(p.name == "quickstart.yaml" for p in CONFIGS)


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    p = tmp_path / "empty.yaml"
    p.write_text("")
    assert load(p) == Config()


def test_overrides_coerce_to_field_types() -> None:
    cfg = build({}, ["memory.lam=0.25", "memory.k1=7", "memory.enabled=false", "rollout.seeds=[1, 2, 3]",
                     "run.name=123", "memory.q_floor=-0.5", "cluster.address=null", "memory.alpha=1"])
    assert cfg.memory.lam == 0.25 and cfg.memory.k1 == 7 and cfg.memory.enabled is False
    assert cfg.rollout.seeds == [1, 2, 3]
    assert cfg.run.name == "123"  # str fields keep the text as written
    assert cfg.memory.q_floor == -0.5 and cfg.cluster.address is None
    assert cfg.memory.alpha == 1.0 and isinstance(cfg.memory.alpha, float)


def test_override_creates_missing_section() -> None:
    assert build({"run": {"name": "x"}}, ["learner.lr=0.001"]).learner.lr == 0.001


@pytest.mark.parametrize(
    ("raw", "overrides", "expected"),
    [
        ({}, ["memory.lam=1.5"], "memory.lam: must be in [0, 1], got 1.5"),
        ({}, ["memory.alpha=0"], "memory.alpha: must be in (0, 1], got 0"),
        ({}, ["memory.delta=1.2"], "memory.delta: must be in [-1, 1]"),
        ({}, ["memory.k1=3", "memory.k2=4"], "memory.k2: must be <= k1 (3), got 4"),
        ({}, ["rollout.actors=-1"], "rollout.actors: must be > 0, got -1"),
        ({}, ["rollout.max_retries=-2"], "rollout.max_retries: must be >= 0"),
        ({}, ["memory.lamda=0.5"], "unknown key 'memory.lamda' (did you mean 'memory.lam'?)"),
        ({"memroy": {}}, [], "unknown key 'memroy' (did you mean 'memory'?)"),
        ({"memory": {"k1": "five"}}, [], "memory.k1 = 'five': expected int, got str"),
        ({"memory": {"enabled": 1}}, [], "memory.enabled = 1: expected bool, got int"),
        ({"llm": {"dtype": "fp8"}}, [], "llm.dtype = 'fp8': must be one of 'float32'"),
        ({"rollout": {"seeds": [0, "a"]}}, [], "rollout.seeds[1] = 'a': expected int"),
        ({"memory": 3}, [], "memory: expected a mapping of keys, got int"),
        ({}, ["llm.backend=openai"], "llm.base_url: is required when backend is 'openai'"),
        ({}, ["learner.enabled=true"], "learner: learner.enabled needs llm.enable_lora: true"),
        ({}, ["learner.enabled=true", "llm.enable_lora=true", "memory.enabled=false", "learner.memory_guided=only"],
         "learner.memory_guided: only needs memory.enabled: true"),
        ({}, ["learner.memory_guided=sometimes"], "learner.memory_guided = 'sometimes': must be one of"),
        ({}, ["memory=3"], "--set memory: 'memory' is a section"),
        ({}, ["memory.lam"], "expected KEY=VALUE"),
        ({}, ["memory.lam.x=1"], "'memory.lam' is a value, not a section"),
    ],
)
def test_bad_input_is_a_clear_config_error(raw: dict, overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        build(raw, overrides)
    assert expected in str(err.value)


def test_unknown_key_lists_the_valid_keys() -> None:
    with pytest.raises(ConfigError) as err:
        build({"memory": {"zzz": 1}})
    msg = str(err.value)
    assert "unknown key 'memory.zzz'" in msg and "valid keys in memory:" in msg and "lam" in msg and "did you mean" not in msg


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("memory:\n  k1: 5\n  k2: [3\nrun: {}\n")
    with pytest.raises(ConfigError) as err:
        load(p)
    assert str(err.value).startswith(f"{p}:") and "YAML syntax error" in str(err.value)
    line = int(str(err.value).split(":")[1])
    assert 3 <= line <= 5


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    p = tmp_path / "list.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load(p)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load(tmp_path / "nope.yaml")


def test_every_field_is_documented_in_the_reference() -> None:
    import dataclasses

    ref = reference_markdown()
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(getattr(Config(), section.name)):
            assert f.metadata.get("doc"), f"{section.name}.{f.name} has no doc"
            assert f"`{section.name}.{f.name}`" in ref


def test_config_reference_is_current() -> None:
    doc = (ROOT / "docs" / "config.md").read_text()
    assert reference_markdown().strip() in doc, "docs/config.md is stale: regenerate it with `python scripts/update_config_reference.py`"
    assert "docs/config.md" in (ROOT / "README.md").read_text()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_cli_range_error_exits_2_with_one_line() -> None:
    res = _cli("config", "configs/quickstart.yaml", "--set", "memory.lam=1.5")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == ["epiq: config error: memory.lam: must be in [0, 1], got 1.5"]
    assert "Traceback" not in res.stderr


def test_cli_misspelled_key_names_the_close_match() -> None:
    res = _cli("config", "configs/quickstart.yaml", "--set", "memory.lamda=0.4")
    assert res.returncode == 2 and "did you mean 'memory.lam'?" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_train_module_dry_run_prints_resolved_config_without_heavy_imports() -> None:
    code = ("import sys, runpy; sys.argv=['x','--config','configs/quickstart.yaml','--set','memory.k1=9','--dry-run'];"
            "import cluster.train as t; rc=t.main(sys.argv[1:]);"
            "assert not any(m in sys.modules for m in ('ray','torch','vllm')), 'heavy import'; sys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert yaml.safe_load(res.stdout)["memory"]["k1"] == 9


def test_train_refuses_to_overwrite_a_run_folder(tmp_path: Path) -> None:
    from cluster.train import make_run_dir

    cfg = build({"run": {"output_dir": str(tmp_path), "name": "r"}})
    run_dir = make_run_dir(cfg, "configs/quickstart.yaml")
    assert load(run_dir / "config.yaml") == cfg
    with pytest.raises(ConfigError, match="run.resume=true"):
        make_run_dir(cfg, "configs/quickstart.yaml")
    resumed = build({"run": {"output_dir": str(tmp_path), "name": "r", "resume": True}})
    assert make_run_dir(resumed, "configs/quickstart.yaml") == run_dir


def test_exponent_notation_without_a_dot_is_a_float_in_files_and_overrides(tmp_path: Path) -> None:
    """YAML 1.1 reads ``1e-3`` as a string; a float key takes it as the number it means (strings stay errors)."""
    from cluster.config import load

    path = tmp_path / "c.yaml"
    path.write_text("learner:\n  lr: 3e-4\n")
    assert load(str(path), ["memory.q_init=-1E-2"]).learner.lr == 3e-4
    assert load(str(path), ["learner.lr=1e-3"]).learner.lr == 1e-3
    with pytest.raises(ConfigError, match="learner.lr = 'fast': expected float"):
        load(str(path), ["learner.lr=fast"])


@pytest.mark.parametrize("key,value", [("memory.reward_success", ".nan"), ("memory.q_init", ".inf"),
                                       ("memory.q_floor", "-.inf"), ("memory.claim_idle_s", ".inf"),
                                       ("learner.lr", ".nan")])
def test_non_finite_floats_are_config_errors(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key} = .*finite"):
        build({}, [f"{key}={value}"])


def test_namespaces_and_reward_magnitudes_are_checked_before_the_run() -> None:
    with pytest.raises(ConfigError, match=r"^memory.namespace: use 1-128 letters"):
        build({"memory": {"namespace": "a b"}})
    with pytest.raises(ConfigError, match=r"^memory.reward_success: must be within"):
        build({}, ["memory.reward_success=1e308"])


def test_a_binary_config_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "model.bin"
    bad.write_bytes(bytes(range(256)))
    with pytest.raises(ConfigError, match="not a text file"):
        load(bad)
    proc = _cli("config", str(bad))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
