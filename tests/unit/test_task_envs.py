"""The dataset environments on the real shared data: GSM8K (math) and LifelongAgentBench DB tasks on SQLite (sql).

Skipped with a message when the shared data folder (``actors.envs.datasets.shared_data_dir()``) is missing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from actors.config import EnvConfig
from actors.envs.base import TaskSpec
from actors.envs.datasets import shared_data_dir
from actors.envs.math_env import MathEnv, gold_answer, load_problems
from actors.envs.math_env import task_set as math_tasks
from actors.envs.sql_env import DbTask, SqlEnv, load_tasks, split_path
from actors.envs.sql_env import task_set as sql_tasks
from actors.replies import normalize_number

DATA = shared_data_dir()
GSM8K = DATA / "gsm8k" / "test.jsonl"
LLB_VAL = DATA / "llb" / "db_val.json"
needs_gsm8k = pytest.mark.skipif(not GSM8K.is_file(), reason=f"GSM8K data not found at {GSM8K} (set $EPIQ_SHARED_DATA)")


# --- math ---------------------------------------------------------------------------------------------------------

@needs_gsm8k
def test_gold_answers_of_the_first_lines() -> None:
    problems = load_problems(GSM8K)
    assert len(problems) == 1319
    with open(GSM8K, encoding="utf-8") as f:
        raw = [json.loads(next(f)) for _ in range(20)]
    for problem, row in zip(problems, raw):
        tail = row["answer"].rsplit("####", 1)[1]
        assert problem["answer"] == normalize_number(tail) == gold_answer(row["answer"]) != ""
    assert problems[0]["answer"] == "18"  # Janet's ducks


@needs_gsm8k
def test_math_correct_and_wrong_answers() -> None:
    cfg = EnvConfig(name="math", split="test", num_tasks=5, max_steps=1)
    env = MathEnv(cfg)
    task = math_tasks(cfg)[0]
    obs = env.reset(task)
    assert obs.reply == "number" and obs.admissible_actions == [] and "ducks" in obs.text
    won = env.step("18.00")
    assert won.won and won.done and won.reward == 1.0 and won.observation == "Correct."
    env.reset(task)
    wrong = env.step("17")
    assert wrong.done and not wrong.won and wrong.info["truncated"]  # max_steps=1: one attempt
    assert "17" in wrong.observation and "18" not in wrong.observation

    env = MathEnv(EnvConfig(name="math", split="test", num_tasks=5, max_steps=2))
    env.reset(task)
    empty = env.step("")
    assert not empty.done and empty.observation == "No final number was found in the reply."
    assert env.step("The answer is 18").won


@needs_gsm8k
def test_math_item_selection() -> None:
    tasks = math_tasks(EnvConfig(name="math", split="test", num_tasks=3, first_item=10, max_steps=1))
    assert [t.item for t in tasks] == ["10", "11", "12"] and tasks[0].task_id == "gsm8k/10"
    assert tasks[0].env == "math" and tasks[0].split == "test"
    chosen = math_tasks(EnvConfig(name="math", split="train", items=["1318", "0"], max_steps=1))
    assert [t.item for t in chosen] == ["1318", "0"]
    with pytest.raises(ValueError, match="num_tasks"):
        math_tasks(EnvConfig(name="math", split="test", num_tasks=1320, max_steps=1))
    with pytest.raises(ValueError, match="unknown math item"):
        math_tasks(EnvConfig(name="math", split="test", items=["5000"], max_steps=1))


def test_math_missing_data_and_malformed_lines(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="env.data_dir"):
        math_tasks(EnvConfig(name="math", split="test", data_dir=str(tmp_path / "nowhere"), max_steps=1))
    with pytest.raises(FileNotFoundError, match="test.jsonl"):
        math_tasks(EnvConfig(name="math", split="test", data_dir=str(tmp_path), max_steps=1))
    bad = tmp_path / "test.jsonl"
    bad.write_text('{"question": "1+1?", "answer": "#### 2"}\nnot json\n')
    with pytest.raises(ValueError, match=r"line 2"):
        load_problems(bad)


# --- sql ----------------------------------------------------------------------------------------------------------

SQL_CFG = EnvConfig(name="sql", split="db_val", num_tasks=5, max_steps=2)


@pytest.fixture(scope="module")
def val_tasks() -> list[DbTask]:
    if not LLB_VAL.is_file():
        pytest.skip(f"LifelongAgentBench data not found at {LLB_VAL} (set $EPIQ_SHARED_DATA)")
    usable, excluded = load_tasks(split_path(SQL_CFG))
    assert len(usable) + len(excluded) == 139
    return usable


def _spec(task: DbTask) -> TaskSpec:
    return TaskSpec(task_id=f"llb-db/{task.idx}", env="sql", split="db_val", item=task.idx)


def _play(task: DbTask, sql: str, max_steps: int = 2):
    env = SqlEnv(EnvConfig(name="sql", split="db_val", num_tasks=1, max_steps=max_steps))
    env.reset(_spec(task))
    return env, env.step(sql)


def test_gold_sql_wins_query_and_mutation_tasks(val_tasks: list[DbTask]) -> None:
    queries = [t for t in val_tasks if t.is_query][:3]
    mutations = {t.gold_sql.split()[0].upper(): t for t in val_tasks if not t.is_query}
    assert queries and set(mutations) == {"INSERT", "UPDATE", "DELETE"}
    for task in [*queries, *mutations.values()]:
        _, result = _play(task, task.gold_sql)
        assert result.won and result.done and result.reward == 1.0, (task.idx, result.observation)


def test_wrong_statements_lose_without_revealing_the_answer(val_tasks: list[DbTask]) -> None:
    query = next(t for t in val_tasks if t.is_query)
    env, result = _play(query, f'SELECT * FROM "{query.table}" WHERE 0')
    assert not result.won and not result.done and "0 row(s)" in result.observation
    mutation = next(t for t in val_tasks if not t.is_query)
    _, result = _play(mutation, f'DELETE FROM "{mutation.table}"')
    assert not result.won and "table state does not match" in result.observation
    _, result = _play(mutation, "")
    assert result.observation == "No SQL statement was found in the reply."


def test_sql_error_then_a_repair_turn(val_tasks: list[DbTask]) -> None:
    task = next(t for t in val_tasks if t.is_query)
    env, result = _play(task, "SELEC * FROM nowhere")
    assert result.observation.startswith("Error: ") and "syntax error" in result.observation and not result.done
    repaired = env.step(task.gold_sql)
    assert repaired.won and repaired.info["steps"] == 2


def test_attach_and_pragma_writes_are_refused(val_tasks: list[DbTask]) -> None:
    task = val_tasks[0]
    for sql in ("ATTACH DATABASE ':memory:' AS other", "VACUUM INTO '/tmp/epiq-should-not-exist.db'",
                "PRAGMA writable_schema = ON"):
        _, result = _play(task, sql)
        assert result.observation.startswith("Error: ") and "authoriz" in result.observation, sql
    assert not Path("/tmp/epiq-should-not-exist.db").exists()
    _, result = _play(task, "SELECT 1; SELECT 2")
    assert result.observation.startswith("Error: ")


def test_endless_recursive_query_is_stopped(val_tasks: list[DbTask]) -> None:
    env = SqlEnv(SQL_CFG)
    env.time_limit_s = 0.3
    env.reset(_spec(val_tasks[0]))
    start = time.monotonic()
    result = env.step("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c")
    assert time.monotonic() - start < 3.0
    assert result.observation.startswith("Error: interrupted") and not result.done


def test_sql_observation_and_task_set(val_tasks: list[DbTask]) -> None:
    tasks = sql_tasks(SQL_CFG)
    assert [t.item for t in tasks] == [t.idx for t in val_tasks[:5]] and tasks[0].task_id == f"llb-db/{tasks[0].item}"
    obs = SqlEnv(SQL_CFG).reset(tasks[0])
    task = val_tasks[0]
    assert obs.reply == "sql" and obs.goal == task.instruction and task.table in obs.intent
    assert task.table in obs.text and all(name in obs.text for name, _ in task.columns)
    assert task.gold_sql not in obs.text
    chosen = sql_tasks(EnvConfig(name="sql", split="db_val", items=[val_tasks[3].idx], max_steps=1))
    assert [t.item for t in chosen] == [val_tasks[3].idx]
    with pytest.raises(ValueError, match="num_tasks"):
        sql_tasks(EnvConfig(name="sql", split="db_val", num_tasks=len(val_tasks) + 1, max_steps=1))


def test_sql_missing_data(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="env.data_dir"):
        sql_tasks(EnvConfig(name="sql", split="db_val", data_dir=str(tmp_path / "nowhere"), max_steps=1))
    with pytest.raises(FileNotFoundError, match="db_val.json"):
        sql_tasks(EnvConfig(name="sql", split="db_val", data_dir=str(tmp_path), max_steps=1))
    with pytest.raises(ValueError, match="env.split"):
        sql_tasks(EnvConfig(name="sql", split="test", data_dir=str(tmp_path), max_steps=1))


def test_sql_statement_keeps_its_whitespace(val_tasks: list[DbTask]) -> None:
    task = next(t for t in val_tasks if t.is_query)
    _, result = _play(task, f"SELECT 'a  b'\nFROM \"{task.table}\" LIMIT 1")
    assert "('a  b',)" in result.observation  # two spaces: the literal reached SQLite unchanged
