"""LifelongAgentBench DB tasks played on SQLite: one table, one instruction, the reply's SQL statement is graded.

Owns: ``load_tasks`` (a ``db_*.json`` file -> the tasks usable on SQLite, plus the excluded ids with reasons),
``task_set``, the guarded execution of a statement on a fresh in-memory database, the grading, and ``SqlEnv``.
Files live in ``family_dir(cfg, "llb")``; ``env.split`` names one: 'db_bench_data' (all 500), 'db_train' or
'db_val' (disjoint subsets holding full entries, the same tasks under the same sample indices). Item ids are the
sample index strings, in the file's order; task ids are ``llb-db/<index>``.

Grading, as the benchmark grades but adapted to SQLite (the benchmark runs MySQL in Docker):
- The table is built from ``table_info``: INT columns -> INTEGER, TEXT -> TEXT COLLATE NOCASE (MySQL's default
  collation compares case-insensitively), other MySQL types by SQLite's affinity rules; identifiers quoted.
- The reference is the gold SQL run on SQLite, not the stored MySQL answers. A query task (gold SELECT; the
  benchmark checks the agent's rows against ``direct``) is correct when the statement's rows equal the gold
  SQL's rows: in order when the gold SQL has ORDER BY, else as a multiset; values compared after light
  normalisation (1 == 1.0 == '1', floats to 4 decimals like MySQL's AVG, strings stripped, column names ignored).
  Since a gold ORDER BY may leave ties and a LIMIT may cut by scan order, the gold result on the table with its
  rows in reverse order is accepted too.
- A mutation task (INSERT/UPDATE/DELETE; the benchmark compares an md5 over the table's sorted row hashes, which
  SQLite cannot compute) is correct when the table's rows after the statement equal, as a multiset, the rows
  after the gold statement; values of INT columns are compared as MySQL stores them (rounded to integers).
- Tasks whose gold SQL fails on SQLite (MySQL-only syntax such as UPDATE ... JOIN, DELETE t FROM ..., STDDEV) are
  excluded; ``python -m actors.envs.sql_env`` prints them and how well SQLite reproduces the stored answers.

Each step runs on a fresh copy of the task's table (a wrong UPDATE does not spoil the next attempt), as one
statement (``execute``), with ATTACH/DETACH (so also VACUUM INTO) and all but read-only pragmas denied by an
authorizer, a time limit by a progress handler, and at most ``ROW_CAP`` rows fetched. An SQL error -> not done,
"Error: <sqlite message>"; a wrong result -> not done, a few of the returned rows (never the gold answer).

    env = SqlEnv(cfg); obs = env.reset(task_set(cfg)[0]); env.step(parse_sql(reply))
"""

from __future__ import annotations

import argparse
import ast
import collections
import dataclasses
import functools
import hashlib
import json
import logging
import math
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.config import EnvConfig
from actors.envs.base import Observation, StepResult, TaskSpec, TextEnv
from actors.envs.datasets import family_dir, pick_items

log = logging.getLogger(__name__)

SPLITS = ("db_bench_data", "db_train", "db_val")
ROW_CAP = 1000  # rows fetched from a statement
RESULT_BYTES = 4_000_000  # text fetched from a statement, about
TIME_LIMIT_S = 2.0  # wall-clock limit of one statement
SAMPLE_ROWS = 10  # table rows shown in the first observation
SHOWN_ROWS = 5  # returned rows shown after a wrong answer
READ_PRAGMAS = {"table_info", "table_xinfo", "index_list", "index_info", "index_xinfo", "foreign_key_list"}
Row = tuple[Any, ...]


@dataclass(frozen=True)
class DbTask:
    """One usable task: the table, the instruction and the references computed from the gold SQL on SQLite."""

    idx: str
    instruction: str
    table: str
    columns: tuple[tuple[str, str], ...]  # (name, MySQL type)
    rows: tuple[Row, ...]
    gold_sql: str
    is_query: bool
    ordered: bool  # query whose gold SQL has ORDER BY: rows compared in order
    skills: tuple[str, ...]
    benchmark_answer: Any  # the stored MySQL answer: 'direct' rows or the table's md5 (never shown)
    references: tuple[tuple[Row, ...], ...] = ()  # normalised gold results (query) / table states (mutation)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sqlite_type(mysql_type: str) -> str:
    """The SQLite column type for a MySQL one, by SQLite's affinity rules; text compares case-insensitively."""
    t = mysql_type.upper()
    if "INT" in t:
        return "INTEGER"
    if any(k in t for k in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    if any(k in t for k in ("DEC", "NUM")):
        return "NUMERIC"
    if "BLOB" in t or "BINARY" in t:
        return "BLOB"
    return "TEXT COLLATE NOCASE"


def _mysql_int(value: Any) -> Any:
    """A value as a MySQL INT column holds it: floats rounded half away from zero."""
    if isinstance(value, float) and math.isfinite(value):
        return int(math.copysign(math.floor(abs(value) + 0.5), value))
    return value


def _authorize(action: int, arg1: str | None, *_: Any) -> int:
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() not in READ_PRAGMAS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def _as_stored(columns: tuple[tuple[str, str], ...], row: Row) -> Row:
    """A row as MySQL stores it in the task's table: values of INT columns rounded to integers."""
    ints = [sqlite_type(kind) == "INTEGER" for _, kind in columns]
    return tuple(_mysql_int(v) if i < len(ints) and ints[i] else v for i, v in enumerate(row))


def _database(task: DbTask, reverse: bool = False) -> sqlite3.Connection:
    """A fresh in-memory database holding the task's table (rows in reverse order if ``reverse``), guarded."""
    conn = sqlite3.connect(":memory:", isolation_level=None)  # autocommit: a statement is its own transaction
    spec = ", ".join(f"{_quote(name)} {sqlite_type(kind)}" for name, kind in task.columns)
    conn.execute(f"CREATE TABLE {_quote(task.table)} ({spec})")
    values = [_as_stored(task.columns, row) for row in task.rows]
    conn.executemany(f"INSERT INTO {_quote(task.table)} VALUES ({', '.join('?' * len(task.columns))})",
                     values[::-1] if reverse else values)
    conn.set_authorizer(_authorize)
    for limit, value in ((sqlite3.SQLITE_LIMIT_ATTACHED, 0), (sqlite3.SQLITE_LIMIT_LENGTH, 100_000),
                         (sqlite3.SQLITE_LIMIT_COLUMN, 100), (sqlite3.SQLITE_LIMIT_SQL_LENGTH, 100_000)):
        conn.setlimit(limit, value)
    return conn


def run_statement(conn: sqlite3.Connection, sql: str, time_limit_s: float = TIME_LIMIT_S) -> list[Row] | None:
    """Execute one statement; its rows (at most ``ROW_CAP + 1``, about ``RESULT_BYTES`` of text), or None when it
    returns no result set. Raises sqlite3.Error ('interrupted' past the time limit), ValueError for a NUL byte."""
    deadline = time.monotonic() + time_limit_s
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
    try:
        cur = conn.execute(sql)
        if cur.description is None:
            return None
        rows, size = [], 0
        for row in cur:
            rows.append(row)
            size += sum(len(v) if isinstance(v, (str, bytes)) else 8 for v in row)
            if len(rows) > ROW_CAP or size > RESULT_BYTES:
                break
        return rows
    finally:
        conn.set_progress_handler(None, 0)


def _value(value: Any) -> tuple[int, Any]:
    """A sortable, comparable form of a result value: (0, None) / (1, number rounded to 4 decimals) / (2, text)."""
    if value is None:
        return (0, None)
    if isinstance(value, bytes):
        value = value.hex()
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            return (2, text)
        if not math.isfinite(number):
            return (2, text)
        value = number
    return (1, round(float(value), 4) + 0.0)  # + 0.0: -0.0 -> 0.0


def _rows(rows: list[Row]) -> tuple[Row, ...]:
    return tuple(tuple(_value(v) for v in row) for row in rows)


def _table_state(conn: sqlite3.Connection, table: str, columns: tuple[tuple[str, str], ...]) -> tuple[Row, ...]:
    """The table's rows, normalised (INT columns as MySQL stores them) and sorted: a multiset."""
    rows = run_statement(conn, f"SELECT * FROM {_quote(table)}") or []
    return tuple(sorted(_rows([_as_stored(columns, row) for row in rows])))


def _has_order_by(sql: str) -> bool:
    return bool(re.search(r"\bORDER\s+BY\b", re.sub(r"'(?:[^']|'')*'", "''", sql), re.I))


def _literal(value: Any) -> Any:
    return ast.literal_eval(value) if isinstance(value, str) else value


def _parse_entry(path: Path, idx: str, entry: dict[str, Any]) -> DbTask:
    """The entry as a task without references; both file layouts (Python-literal strings or plain JSON)."""
    try:
        answer, table = _literal(entry["answer_info"]), _literal(entry["table_info"])
        columns = tuple((str(c["name"]), str(c["type"])) for c in table["column_info_list"])
        rows = tuple(tuple(r) for r in table["row_list"])
        gold = str(answer["sql"]).strip()
        skills = tuple(_literal(entry.get("skill_list", [])))
        instruction = str(entry["instruction"]).strip()
    except (KeyError, TypeError, ValueError, SyntaxError) as e:
        raise ValueError(f"{path}: task {idx!r} is not a LifelongAgentBench DB entry ({e!r})") from e
    if any(len(r) != len(columns) for r in rows):
        raise ValueError(f"{path}: task {idx!r} has rows whose length differs from its {len(columns)} columns")
    is_query = answer.get("direct") is not None or gold.split(None, 1)[0].upper() in ("SELECT", "WITH")
    return DbTask(idx=idx, instruction=instruction, table=str(table["name"]), columns=columns, rows=rows,
                  gold_sql=gold, is_query=is_query, ordered=is_query and _has_order_by(gold), skills=skills,
                  benchmark_answer=answer.get("direct") if is_query else answer.get("md5"))


def _references(task: DbTask) -> tuple[tuple[Row, ...], ...]:
    """The gold SQL's normalised results (query) or table states (mutation), on the rows as given and reversed."""
    refs: list[tuple[Row, ...]] = []
    for reverse in (False, True):
        conn = _database(task, reverse)
        try:
            rows = run_statement(conn, task.gold_sql)
            if task.is_query:
                if rows is None:
                    raise sqlite3.OperationalError("the gold query returns no result set")
                ref = _rows(rows) if task.ordered else tuple(sorted(_rows(rows)))
            else:
                ref = _table_state(conn, task.table, task.columns)
        finally:
            conn.close()
        if ref not in refs:
            refs.append(ref)
    return tuple(refs)


def load_tasks(path: str | Path) -> tuple[list[DbTask], list[tuple[str, str]]]:
    """(usable tasks in file order, [(sample index, why excluded)]) of a ``db_*.json`` file; ValueError naming the
    file and index of a malformed entry. Cached per file."""
    return _load(str(Path(path).resolve()))


@functools.lru_cache(maxsize=8)
def _load(path: str) -> tuple[list[DbTask], list[tuple[str, str]]]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object keyed by sample index, got {type(data).__name__}")
    usable, excluded = [], []
    for idx, entry in data.items():
        task = _parse_entry(Path(path), str(idx), entry)
        try:
            refs = _references(task)
        except (sqlite3.Error, ValueError) as e:
            excluded.append((str(idx), f"gold SQL fails on SQLite: {e}"))
            continue
        usable.append(dataclasses.replace(task, references=refs))
    log.info("llb db %s: %d of %d tasks usable on SQLite (%d excluded: gold SQL fails)", Path(path).name,
             len(usable), len(data), len(excluded))
    return usable, excluded


def split_path(cfg: EnvConfig, split: str | None = None) -> Path:
    split = cfg.split if split is None else split
    if split not in SPLITS:
        raise ValueError(f"env.split: LifelongAgentBench DB splits are {SPLITS}, got {split!r}")
    path = family_dir(cfg, "llb") / f"{split}.json"
    if not path.is_file():
        raise FileNotFoundError(f"env.data_dir: LifelongAgentBench file {path} does not exist (set env.data_dir to "
                                f"the folder holding {split}.json, or $EPIQ_SHARED_DATA to the folder holding llb/)")
    return path


def task_set(cfg: EnvConfig) -> list[TaskSpec]:
    """``env.items`` (sample indices), else ``num_tasks`` usable tasks from position ``first_item``."""
    usable, _ = load_tasks(split_path(cfg))
    chosen = pick_items(cfg, [t.idx for t in usable])
    return [TaskSpec(task_id=f"llb-db/{idx}", env="sql", split=cfg.split, item=idx) for idx in chosen]


def _show(rows: list[Row] | tuple[Row, ...], n: int) -> str:
    return "\n".join("  " + repr(tuple(row))[:200] for row in rows[:n])


class SqlEnv(TextEnv):
    """One LifelongAgentBench DB task per episode; the action is one SQL statement."""

    name = "sql"
    thread_safe = True
    one_line = False  # the reply's text as parsed: whitespace inside SQL string literals matters

    def __init__(self, cfg: EnvConfig) -> None:
        super().__init__(cfg.max_steps)
        self.cfg = cfg
        self.time_limit_s = TIME_LIMIT_S
        self._task: DbTask | None = None

    def _reset(self, task: TaskSpec) -> Observation:
        usable, excluded = load_tasks(split_path(self.cfg, task.split))
        found = {t.idx: t for t in usable}.get(task.item)
        if found is None:
            why = dict(excluded).get(task.item, "no such sample index")
            raise ValueError(f"task {task.task_id!r} is not playable in split {task.split!r}: {why}")
        self._task = t = found
        columns = ", ".join(f"{name} {kind}" for name, kind in t.columns)
        text = (f"{t.instruction}\n\nTable {t.table} ({len(t.rows)} rows). Columns: {columns}\n"
                f"First rows:\n{_show(t.rows, SAMPLE_ROWS)}\n\nAnswer with one SQL statement (SQLite).")
        return Observation(text=text, admissible_actions=[], goal=t.instruction, intent=f"{t.instruction}\nTable: {t.table}",
                           info={"table": t.table, "skills": list(t.skills), "kind": "query" if t.is_query else "mutation"},
                           reply="sql")

    def _step(self, action: str) -> StepResult:
        t = self._task
        sql = action.strip().rstrip(";").strip()
        if not sql:
            return StepResult("No SQL statement was found in the reply.", 0.0, False, False, [])
        conn = _database(t)
        try:
            rows = run_statement(conn, sql, self.time_limit_s)
            state = None if t.is_query else _table_state(conn, t.table, t.columns)
        except (sqlite3.Error, ValueError, OverflowError) as e:
            limit = f" (the statement ran past the {self.time_limit_s:g} s limit)" if "interrupted" in str(e) else ""
            return StepResult(f"Error: {e}{limit}", 0.0, False, False, [], info={"error": True})
        finally:
            conn.close()
        won, text = self._grade(t, rows, state)
        return StepResult(text, 1.0 if won else 0.0, won, won, [], info={"error": False})

    @staticmethod
    def _grade(t: DbTask, rows: list[Row] | None, state: tuple[Row, ...] | None) -> tuple[bool, str]:
        if not t.is_query:
            if state in t.references:
                return True, "Correct: the table is as the task asks."
            hint = " (a query does not change the table)" if rows is not None else ""
            return False, f"The statement ran, but the table state does not match the task{hint}."
        if rows is None:
            return False, "The statement returned no rows; this task asks for a query result (SELECT)."
        got = _rows(rows) if t.ordered else tuple(sorted(_rows(rows)))
        if got in t.references:
            return True, "Correct."
        count = f"more than {ROW_CAP}" if len(rows) > ROW_CAP else str(len(rows))
        shown = f" Its first rows:\n{_show(rows, SHOWN_ROWS)}" if rows else ""
        return False, f"The query returned {count} row(s), which is not the expected result.{shown}"

    def close(self) -> None:
        self._task = None


def _md5_like_mysql(state_rows: list[Row]) -> str:
    """The benchmark's table hash: md5(group_concat(sorted left(md5(concat_ws(',', row)), 5))), 1024-char cap."""
    def text(v: Any) -> str:
        return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)

    hashes = sorted(hashlib.md5(",".join(text(v) for v in row if v is not None).encode()).hexdigest()[:5]
                    for row in state_rows)
    return hashlib.md5(",".join(hashes)[:1024].encode()).hexdigest()


def agreement(task: DbTask) -> bool:
    """Whether the gold SQL on SQLite reproduces the benchmark's stored MySQL answer (rows as a multiset / md5)."""
    conn = _database(task)
    try:
        rows = run_statement(conn, task.gold_sql) or []
        if task.is_query:
            return sorted(_rows(rows)) == sorted(_rows([tuple(r) for r in task.benchmark_answer]))
        state = run_statement(conn, f"SELECT * FROM {_quote(task.table)}") or []
        return _md5_like_mysql([_as_stored(task.columns, row) for row in state]) == task.benchmark_answer
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Summarise a LifelongAgentBench DB split on SQLite.")
    parser.add_argument("split", nargs="?", default="db_bench_data", choices=SPLITS)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    usable, excluded = load_tasks(split_path(EnvConfig(name="sql", split=args.split, data_dir=args.data_dir)))
    kinds = collections.Counter("query" if t.is_query else "mutation" for t in usable)
    agree = collections.Counter(("query" if t.is_query else "mutation", agreement(t)) for t in usable)
    print(f"{args.split}: {len(usable)} usable ({dict(kinds)}), {len(excluded)} excluded")
    for idx, why in excluded:
        print(f"  excluded {idx}: {why}")
    for kind in ("query", "mutation"):
        print(f"  {kind}: gold SQL on SQLite reproduces the stored MySQL answer in {agree[(kind, True)]} of {kinds[kind]}")


if __name__ == "__main__":
    main()
