"""The explicit factories of the environment families: ``env.name`` -> implementation, one file each.

Families: text games (``textworld``, ``alfworld``) and single- or multi-turn tasks (``code``: HumanEval in a
sandbox, ``sql``: LifelongAgentBench DB on SQLite, ``math``: GSM8K). Heavy libraries (textworld, alfworld) are
imported only when their family is asked for.

    env = make_env(cfg.env, cache_dir)            # a TextEnv
    tasks = task_set(cfg.env, cache_dir)          # the config's TaskSpecs
    prepare(cfg.env, tasks, cache_dir)            # files the episodes load, made before they start
"""

from __future__ import annotations

from pathlib import Path

from actors.config import EnvConfig
from actors.envs.base import TaskSpec, TextEnv

FAMILIES = ("textworld", "alfworld", "code", "sql", "math")


def make_env(cfg: EnvConfig, cache_dir: str | Path = ".cache") -> TextEnv:
    """The environment named by ``cfg.name`` (heavy libraries are imported only here)."""
    if cfg.name == "textworld":
        from actors.envs.textworld_env import TextWorldEnv

        return TextWorldEnv(cfg, cache_dir)
    elif cfg.name == "alfworld":
        from actors.envs.alfworld_env import AlfWorldEnv

        return AlfWorldEnv(cfg, cache_dir)
    elif cfg.name == "code":
        from actors.envs.code_env import CodeEnv

        return CodeEnv(cfg)
    elif cfg.name == "sql":
        from actors.envs.sql_env import SqlEnv

        return SqlEnv(cfg)
    elif cfg.name == "math":
        from actors.envs.math_env import MathEnv

        return MathEnv(cfg)
    raise ValueError(f"env.name: unknown environment {cfg.name!r}; expected one of {FAMILIES}")


def task_set(cfg: EnvConfig, cache_dir: str | Path = ".cache", heldout: bool = False) -> list[TaskSpec]:
    """The config's tasks (see each env's ``task_set``); ``heldout``: the unseen transfer-check tasks."""
    if cfg.name == "textworld":
        from actors.envs.textworld_env import task_set as textworld_tasks

        return textworld_tasks(cfg, heldout=heldout)
    if heldout:
        raise ValueError("env.heldout_seeds: a held-out task set is defined for TextWorld only")
    elif cfg.name == "alfworld":
        from actors.envs.alfworld_env import task_set as alfworld_tasks

        return alfworld_tasks(cfg, cache_dir)
    elif cfg.name == "code":
        from actors.envs.code_env import task_set as code_tasks

        return code_tasks(cfg)
    elif cfg.name == "sql":
        from actors.envs.sql_env import task_set as sql_tasks

        return sql_tasks(cfg)
    elif cfg.name == "math":
        from actors.envs.math_env import task_set as math_tasks

        return math_tasks(cfg)
    raise ValueError(f"env.name: unknown environment {cfg.name!r}; expected one of {FAMILIES}")


def prepare(cfg: EnvConfig, tasks: list[TaskSpec], cache_dir: str | Path = ".cache") -> None:
    """Make what the tasks' episodes load before any starts: TextWorld generates each missing game (otherwise the
    first episode of a game generates it, holding up the episodes behind it). The other families' files are
    ready once ``task_set`` returns."""
    if cfg.name == "textworld":
        from actors.envs.textworld_env import generate_game

        for task in tasks:
            generate_game(task, cache_dir)
