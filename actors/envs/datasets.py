"""Where the task families' data lives, and how a task set picks its items.

Owns: ``shared_data_dir`` (``$EPIQ_SHARED_DATA``, else ``<repo>/../shared/data``: the documented location of the
benchmark data, read in place and never copied into the repository), ``family_dir`` (``env.data_dir`` or the
family's folder under the shared data) and ``pick_items`` (``env.items``, else ``num_tasks`` items from
``env.first_item``, with a clear error for an unknown id or a range past the end).

    root = family_dir(cfg, "gsm8k")                 # env.data_dir, else $EPIQ_SHARED_DATA/gsm8k, else ../shared/data/gsm8k
    chosen = pick_items(cfg, ids)                   # the ids of this config's task set, in order
"""

from __future__ import annotations

import os
from pathlib import Path

from actors.config import EnvConfig

REPO = Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path:
    """``$EPIQ_SHARED_DATA``, else ``<repo>/../shared/data`` (the documented location of the benchmark data)."""
    return Path(os.environ.get("EPIQ_SHARED_DATA") or REPO.parent / "shared" / "data")


def family_dir(cfg: EnvConfig, subfolder: str) -> Path:
    """``env.data_dir`` when set, else ``<shared data>/<subfolder>``; raises FileNotFoundError naming both options."""
    path = Path(cfg.data_dir).expanduser() if cfg.data_dir else shared_data_dir() / subfolder
    if not path.is_dir():
        raise FileNotFoundError(f"env.data_dir: {cfg.name} data folder {path} does not exist (set env.data_dir, or "
                                f"$EPIQ_SHARED_DATA to the folder holding {subfolder}/)")
    return path


def pick_items(cfg: EnvConfig, ids: list[str]) -> list[str]:
    """The task set's item ids: ``env.items`` in their order, else ``ids[first_item : first_item + num_tasks]``."""
    if cfg.items:
        known = set(ids)
        missing = [i for i in cfg.items if i not in known]
        if missing:
            raise ValueError(f"env.items: unknown {cfg.name} item id(s) {missing[:5]} (the {cfg.split!r} split has "
                             f"{len(ids)} items, e.g. {ids[:3]})")
        return list(cfg.items)
    if cfg.first_item + cfg.num_tasks > len(ids):
        raise ValueError(f"env.num_tasks: items {cfg.first_item}..{cfg.first_item + cfg.num_tasks - 1} requested, "
                         f"but the {cfg.name} {cfg.split!r} split has {len(ids)}")
    return ids[cfg.first_item:cfg.first_item + cfg.num_tasks]
