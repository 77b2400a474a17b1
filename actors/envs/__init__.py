"""Text environments behind one interface (``base.TextEnv``): TextWorld (generated games) and ALFWorld (text only).

Heavy libraries (textworld, alfworld) are imported by ``make_env`` / ``task_set`` (``factory.py``) only, not by
this package.
"""

from actors.envs.base import AsyncEnv, Observation, StepResult, TaskSpec, TextEnv
from actors.envs.factory import make_env, prepare, task_set

__all__ = ["AsyncEnv", "Observation", "StepResult", "TaskSpec", "TextEnv", "make_env", "prepare", "task_set"]
