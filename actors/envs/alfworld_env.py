"""Text-only ALFWorld: each task is one ``game.tw-pddl`` file, played with TextWorld's PDDL backend.

Owns: finding the game files (``env.data_dir``, else ``$ALFWORLD_DATA``, else the shared
``alfworld_data_json_2.1.1.tgz`` unpacked once into ``<cache_dir>/alfworld/``), the task list of a split
(valid_seen / valid_unseen / valid_train; solvable games only, as ``AlfredTWEnv`` collects them) and
``AlfWorldEnv``, which drives one game file at a time with the wrappers ``AlfredTWEnv`` uses
(``AlfredDemangler`` for readable names, ``AlfredInfos``). Each PDDL backend loads its own copy of
fast-downward's planner library; unloading a copy while another is loaded makes the process crash at exit
(the copies share C++ unique symbols), so a closed env parks its backend in a process-wide idle list for the
next env to reuse, and no copy is ever unloaded: a process holds as many copies as it ran games at once.

The goal and the intent are the task sentence ("Your task is to: put a clean mug in coffeemachine.");
``info["walkthrough"]`` is the game file's winning command list.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tarfile
import tempfile
import threading
from pathlib import Path
from typing import Any

from actors.envs.base import Observation, StepResult, TaskSpec, TextEnv
from actors.config import EnvConfig
from actors.envs.datasets import shared_data_dir

SPLITS = ("valid_seen", "valid_unseen", "valid_train")
_IDLE_GAMES: list[Any] = []  # wrapped PDDL backends of closed envs, loaded and ready for the next game
_IDLE_LOCK = threading.Lock()
ARCHIVE = "alfworld/alfworld_data_json_2.1.1.tgz"


def data_dir(cfg: EnvConfig, cache_dir: str | Path = ".cache") -> Path:
    """The folder holding ``json_2.1.1/`` (unpacks the shared archive into the cache on first use)."""
    configured = cfg.data_dir or os.environ.get("ALFWORLD_DATA")
    if configured:
        path = Path(configured).expanduser()
        if not (path / "json_2.1.1").is_dir():
            raise FileNotFoundError(f"ALFWorld data: {path} has no json_2.1.1/ (set env.data_dir or $ALFWORLD_DATA "
                                    f"to the folder unpacked from alfworld_data_json_2.1.1.tgz)")
        return path
    target = Path(cache_dir) / "alfworld"
    if target.is_dir():
        return target
    archive = shared_data_dir() / ARCHIVE
    if not archive.is_file():
        raise FileNotFoundError(f"ALFWorld data not found: set env.data_dir or $ALFWORLD_DATA, or provide {archive} "
                                f"($EPIQ_SHARED_DATA); with internet access `alfworld-download` fetches the same files")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".alfworld-", dir=target.parent))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        os.rename(tmp, target)  # atomic; fails if another process got there first
    except OSError:
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _solvable_games(root: Path, split: str) -> list[Path]:
    games = []
    for path in sorted((root / "json_2.1.1" / split).glob("*/*/game.tw-pddl")):
        if "movable" in str(path.parent) or "Sliced" in str(path.parent):  # AlfredTWEnv skips these too
            continue
        if json.loads(path.read_text()).get("solvable"):
            games.append(path)
    return games


def task_set(cfg: EnvConfig, cache_dir: str | Path = ".cache") -> list[TaskSpec]:
    """All solvable games of the split (sorted by path), or ``num_tasks`` of them drawn with ``task_seed``."""
    if cfg.split not in SPLITS:
        raise ValueError(f"env.split: ALFWorld splits are {SPLITS}, got {cfg.split!r}")
    root = data_dir(cfg, cache_dir)
    games = _solvable_games(root, cfg.split)
    if cfg.num_tasks > len(games):
        raise ValueError(f"env.num_tasks: {cfg.split} has {len(games)} solvable games, asked for {cfg.num_tasks}")
    if cfg.num_tasks < len(games):
        games = sorted(random.Random(cfg.task_seed).sample(games, cfg.num_tasks))
    return [TaskSpec(task_id=str(p.parent.relative_to(root / "json_2.1.1")), env="alfworld", split=cfg.split,
                     game_file=str(p.relative_to(root))) for p in games]


def _task_line(text: str) -> str:
    match = re.search(r"Your task is to: ?(.+)", text)
    return match.group(1).strip() if match else ""


class AlfWorldEnv(TextEnv):
    """One ALFWorld game at a time, as ``AlfredTWEnv`` plays it (no domain randomisation)."""

    name = "alfworld"

    def __init__(self, cfg: EnvConfig, cache_dir: str | Path = ".cache") -> None:
        super().__init__(cfg.max_steps)
        self.root = data_dir(cfg, cache_dir)
        os.environ.setdefault("ALFWORLD_DATA", str(self.root.resolve()))  # importing alfworld creates this folder
        self._game: Any = None

    def _load(self, path: Path) -> Any:
        if self._game is None:
            with _IDLE_LOCK:
                self._game = _IDLE_GAMES.pop() if _IDLE_GAMES else None
        if self._game is None:
            import textworld
            from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos

            infos = textworld.EnvInfos(won=True, admissible_commands=True, extras=["gamefile", "walkthrough"])
            self._game = textworld.start(str(path), request_infos=infos,
                                         wrappers=[AlfredDemangler(shuffle=False), AlfredInfos])
        else:
            self._game.load(str(path))
        return self._game

    def _reset(self, task: TaskSpec) -> Observation:
        path = self.root / task.game_file
        state = self._load(path).reset()
        text = state.feedback.replace("-= Welcome to TextWorld, ALFRED! =-", "").strip()
        goal = _task_line(text)
        info = {"walkthrough": list(state["extra.walkthrough"] or []), "game_file": str(path)}
        return Observation(text=text, admissible_actions=list(state["admissible_commands"]), goal=goal,
                           intent=f"Your task is to: {goal}", info=info)

    def _step(self, action: str) -> StepResult:
        state, _, done = self._game.step(action)
        won = bool(state["won"])
        return StepResult(observation=state.feedback.strip(), reward=1.0 if won else 0.0, done=bool(done or won),
                          won=won, admissible_actions=list(state["admissible_commands"] or []), info={"lost": False})

    def close(self) -> None:
        """Hand the backend to the idle list (see the module docstring: its library is never unloaded)."""
        if self._game is not None:
            with _IDLE_LOCK:
                _IDLE_GAMES.append(self._game)
            self._game = None
