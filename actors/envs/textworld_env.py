"""TextWorld games generated offline by TextWorld's own generator from seeds, cached on disk, played with Jericho.

Owns: the level -> challenge settings table, generating one game per (challenge, level, split, seed) into
``<cache_dir>/textworld/<challenge>-<level>[-<split>]/<seed>.z8`` (+ ``.json``; built in a temp folder then
``os.replace``d, so concurrent generation is safe), the route-free goal text, and ``TextWorldEnv``.

The objectives of tw-coin_collector and tw-treasure_hunter spell out the route, so the agent's ``goal`` is
"Find the coin and take it." (resp. the treasure); the game's own objective is only in ``info["objective"]``.
``intent`` = goal + the first room's description. ``info["walkthrough"]`` (reset) is a winning command list.
One command per step: chained commands ("go north. go east") run only the first; interpreter meta commands
(quit, restart, save, restore, undo) get "That's not a verb I recognise." instead of reaching the game.

    python -m actors.envs.textworld_env tw-coin_collector 105 1000 --cache-dir .cache   # generate and print
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

from actors.envs.base import Observation, StepResult, TaskSpec, TextEnv
from actors.config import EnvConfig

SPLITS = ("train", "eval", "test")
LEVELS = {"tw-coin_collector": 300, "tw-treasure_hunter": 30, "tw-simple": 3, "tw-cooking": 4}
SIMPLE_REWARDS = ("dense", "balanced", "sparse")  # tw-simple level 1..3; goal is always "brief" (no route)
COOKING_LEVELS = (  # tw-cooking level 1..4 -> skills (recipe size, items to take, rooms, open/cook/cut/drop)
    dict(recipe=1, take=1, go=1),
    dict(recipe=1, take=1, go=6, open=True),
    dict(recipe=2, take=2, go=6, open=True, cook=True, cut=True),
    dict(recipe=3, take=3, go=9, open=True, cook=True, cut=True, drop=True),
)
# Interpreter meta commands would leave the game at a yes/no prompt or rewind it: refused, like an unknown verb.
META_VERBS = {"quit", "q", "restart", "restore", "save", "undo", "script", "unscript", "transcript", "noscript"}
MAX_ATTEMPTS = 20  # seeds tried per task before giving up (see _make_game)
_GENERATE_LOCK = threading.Lock()  # TextWorld's generator is not known to be thread-safe
# Every TextWorld game triggers it; TextWorld tracks score and win itself, so nothing is lost.
warnings.filterwarnings("ignore", message=r"Game '.*' is not fully supported", module="jericho")


def challenge_settings(challenge: str, level: int, split: str) -> dict[str, Any]:
    """The settings TextWorld's challenge ``make`` expects (what ``tw-make <challenge> ...`` would pass)."""
    if challenge not in LEVELS:
        raise ValueError(f"env.challenge: unknown TextWorld challenge {challenge!r}; expected one of {sorted(LEVELS)}")
    if not 1 <= level <= LEVELS[challenge]:
        raise ValueError(f"env.level: {challenge} levels are 1..{LEVELS[challenge]}, got {level}")
    if split not in SPLITS:
        raise ValueError(f"env.split: TextWorld splits are {SPLITS}, got {split!r}")
    if challenge == "tw-simple":
        return {"rewards": SIMPLE_REWARDS[level - 1], "goal": "brief", "test": split != "train"}
    if challenge == "tw-cooking":
        skills = {"open": False, "cook": False, "cut": False, "drop": False, **COOKING_LEVELS[level - 1]}
        return {**skills, "recipe_seed": 0, "split": {"train": "train", "eval": "valid", "test": "test"}[split]}
    return {"level": level}


def task_set(cfg: EnvConfig, heldout: bool = False) -> list[TaskSpec]:
    """``cfg.task_seeds`` if given, else seeds ``task_seed .. task_seed + num_tasks - 1`` (``heldout``: the
    ``heldout_seeds``) of the configured challenge and level."""
    challenge_settings(cfg.challenge, cfg.level, cfg.split)  # fail early on a bad config
    if heldout:
        seeds = list(cfg.heldout_seeds)
    else:
        seeds = list(cfg.task_seeds) or list(range(cfg.task_seed, cfg.task_seed + cfg.num_tasks))
    return [
        TaskSpec(task_id=f"{_game_dir(cfg.challenge, cfg.level, cfg.split)}/{seed}", env="textworld",
                 split=cfg.split, seed=seed, challenge=cfg.challenge, level=cfg.level)
        for seed in seeds
    ]


def _game_dir(challenge: str, level: int, split: str) -> str:
    split_matters = challenge in ("tw-simple", "tw-cooking")  # the others draw train and eval games by seed only
    return f"{challenge}-{level}-{split}" if split_matters else f"{challenge}-{level}"


def game_path(task: TaskSpec, cache_dir: str | Path) -> Path:
    return Path(cache_dir) / "textworld" / _game_dir(task.challenge, task.level, task.split) / f"{task.seed}.z8"


def generate_game(task: TaskSpec, cache_dir: str | Path) -> Path:
    """The task's game file, generated once (a temp folder then ``os.replace``: safe across processes)."""
    path = game_path(task, cache_dir)
    if path.is_file() and path.with_suffix(".json").is_file():
        return path
    import textworld

    settings = challenge_settings(task.challenge, task.level, task.split)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _GENERATE_LOCK:
        if path.is_file() and path.with_suffix(".json").is_file():
            return path
        tmp = Path(tempfile.mkdtemp(prefix=f".{task.seed}-", dir=path.parent))
        try:
            game, options = _make_game(task, settings, tmp / path.name)
            built = Path(textworld.generator.compile_game(game, options))
            os.replace(built.with_suffix(".json"), path.with_suffix(".json"))  # json first: z8 present => both are
            os.replace(built, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _make_game(task: TaskSpec, settings: dict[str, Any], path: Path) -> tuple[Any, Any]:
    """TextWorld's ``make`` with the task's seed; seeds whose map admits no quest (it happens for
    tw-treasure_hunter) are retried with seeds derived deterministically from it, so a seed always has a game."""
    import textworld
    import textworld.challenges
    from textworld.generator import QuestGenerationError

    _, make, _ = textworld.challenges.CHALLENGES[task.challenge]
    for attempt in range(MAX_ATTEMPTS):
        options = textworld.GameOptions()
        options.seeds = task.seed if attempt == 0 else _derived_seed(task.seed, attempt)
        options.path, options.file_ext, options.force_recompile = str(path), ".z8", True
        try:
            return make(settings=settings, options=options), options
        except QuestGenerationError:
            continue
    raise RuntimeError(f"TextWorld found no quest for {task.task_id} in {MAX_ATTEMPTS} seeds derived from {task.seed}")


def _derived_seed(seed: int, attempt: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{attempt}".encode()).digest()[:4], "big") % 2**31


def clean(text: str) -> str:
    """Drop Jericho's trailing prompt/status line (">  -= Room =-0/1") and runs of blank lines."""
    text = re.sub(r"\n>[^\n]*\Z", "", (text or "").rstrip())
    return re.sub(r"\n\s*\n(\s*\n)+", "\n\n", text).strip()


def route_free_goal(challenge: str, objective: str, walkthrough: list[str]) -> str:
    """The task without its solution (coin_collector's and treasure_hunter's objectives list every move)."""
    if challenge == "tw-coin_collector":
        return "Find the coin and take it."
    if challenge == "tw-treasure_hunter":
        match = re.fullmatch(r"take (.+?)(?: from .+)?", walkthrough[-1]) if walkthrough else None
        return f"Find the {match.group(1)} and take it." if match else "Find the treasure and take it."
    return clean(objective)


class TextWorldEnv(TextEnv):
    """One TextWorld game at a time; ``reset(task)`` generates the task's game if it is not cached yet."""

    name = "textworld"

    def __init__(self, cfg: EnvConfig, cache_dir: str | Path = ".cache") -> None:
        super().__init__(cfg.max_steps)
        self.cache_dir = Path(cache_dir)
        self._game: Any = None

    def _reset(self, task: TaskSpec) -> Observation:
        import textworld

        path = generate_game(task, self.cache_dir)
        self.close()
        infos = textworld.EnvInfos(admissible_commands=True, objective=True, description=True, won=True,
                                   lost=True, score=True, max_score=True, extras=["walkthrough"])
        self._game = textworld.start(str(path), request_infos=infos)
        state = self._game.reset()
        walkthrough = list(state["extra.walkthrough"] or [])
        room = clean(state["description"])
        goal = route_free_goal(task.challenge, state["objective"], walkthrough)
        info = {"walkthrough": walkthrough, "objective": clean(state["objective"]), "game_file": str(path),
                "max_score": state["max_score"]}
        return Observation(text=room, admissible_actions=list(state["admissible_commands"]), goal=goal,
                           intent=f"{goal}\n{room}", info=info)

    def _step(self, action: str) -> StepResult:
        action = re.split(r"[.;]|\bthen\b", action, maxsplit=1)[0].strip()  # one command per step, no chaining
        if action.split(" ", 1)[0].lower() in META_VERBS:
            action = "xyzzy-refused"  # the parser answers "That's not a verb I recognise."
        state, _, done = self._game.step(action)
        won, lost = bool(state["won"]), bool(state["lost"])
        return StepResult(observation=clean(state.feedback), reward=1.0 if won else 0.0, done=bool(done or won or lost),
                          won=won, admissible_actions=list(state["admissible_commands"] or []),
                          info={"lost": lost, "score": state["score"]})

    def close(self) -> None:
        if self._game is not None:
            self._game.close()
            self._game = None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate (or find cached) one TextWorld game and print it.")
    parser.add_argument("challenge")
    parser.add_argument("level", type=int)
    parser.add_argument("seed", type=int)
    parser.add_argument("--split", default="train")
    parser.add_argument("--cache-dir", default=".cache")
    args = parser.parse_args(argv)
    cfg = EnvConfig(challenge=args.challenge, level=args.level, split=args.split, task_seed=args.seed, num_tasks=1)
    env = TextWorldEnv(cfg, args.cache_dir)
    obs = env.reset(task_set(cfg)[0])
    print(f"game: {obs.info['game_file']}\ngoal: {obs.goal}\nwalkthrough: {' ; '.join(obs.info['walkthrough'])}")
    print(f"observation:\n{obs.text}")
    env.close()


if __name__ == "__main__":
    main()
