"""Instruct-model prompting: chat messages and their token budget, experiences per task kind, the episode loop with a
chat template (a scripted LLM and env stand in for the engine and the sandbox), and the pretrained-model checks."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from actors.agent import EpisodeSettings, EpisodeSpec, run_episode
from actors.contracts import GenerationResult
from actors.envs.base import AsyncEnv, Observation, StepResult, TaskSpec, TextEnv
from actors.prompting import SYSTEM_PROMPTS, build_messages, experience_text

WORDS = lambda s: len(s.split())  # noqa: E731  (a token counter for hand-checked budgets)


def test_messages_hold_system_experiences_task_and_turns_in_order() -> None:
    msgs = build_messages("code", "def f(x):\n    '''add one'''", [], ["SUCCESS. one", "FAILURE. two"],
                          [("def f(x): return x", "The tests failed: AssertionError.")], WORDS, budget=1000)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[0]["content"] == SYSTEM_PROMPTS["code"]
    user = msgs[1]["content"]
    assert user.startswith("Experiences from earlier, similar tasks") and "[1] SUCCESS. one" in user
    assert user.index("[2] FAILURE. two") < user.index("def f(x):")  # experiences in their own block, before the task
    assert msgs[2]["content"] == "def f(x): return x" and msgs[3]["content"].startswith("The tests failed")


def test_game_actions_follow_the_latest_observation_only() -> None:
    first = build_messages("command", "Task: find the coin\nA room.", ["go east", "look"], [], [], WORDS, 1000)
    assert first[-1]["content"].endswith("Actions: go east | look")
    later = build_messages("command", "Task: find the coin\nA room.", ["go west"], [],
                           [("go east", "A hall."), ("look", "Still a hall.")], WORDS, 1000)
    assert "Actions" not in later[1]["content"] and "Actions" not in later[3]["content"]
    assert later[-1]["content"] == "Still a hall.\nActions: go west"


def test_over_budget_the_oldest_turns_go_first_then_the_weakest_experiences() -> None:
    exps = ["alpha " * 20, "beta " * 20]
    turns = [(f"reply{i} " * 10, f"answer{i} " * 10) for i in range(4)]
    full = build_messages("sql", "Count the rows.", [], exps, turns, WORDS, budget=10_000)
    assert len(full) == 2 + 2 * 4

    def cost(m: list[dict]) -> int:
        return sum(WORDS(x["content"]) + 6 for x in m)

    fewer_turns = build_messages("sql", "Count the rows.", [], exps, turns, WORDS, budget=cost(full) - 25)
    assert len(fewer_turns) == 2 + 2 * 3 and fewer_turns[2]["content"].startswith("reply1")  # reply0 went first
    assert "[2] beta" in fewer_turns[1]["content"]  # experiences untouched while turns can go
    no_turns = build_messages("sql", "Count the rows.", [], exps, turns, WORDS, budget=90)
    assert len(no_turns) == 2 and "[1] alpha" in no_turns[1]["content"] and "beta" not in no_turns[1]["content"]
    nothing_fits = build_messages("sql", "Count the rows.", [], exps, turns, WORDS, budget=1)
    assert len(nothing_fits) == 2 and nothing_fits[1]["content"] == "Count the rows."  # the task always stays
    with pytest.raises(ValueError, match="unknown reply kind"):
        build_messages("poem", "x", [], [], [], WORDS, 100)


def test_task_experiences_keep_the_graded_reply() -> None:
    win = experience_text(True, ["def f(x):\n    return x + 1"], "def f(x): add one", "All tests passed.",
                          reply="code")
    assert win.startswith("SUCCESS.") and "```python\ndef f(x):\n    return x + 1\n```" in win
    lose = experience_text(False, ["SELECT * FROM t"], "Count the rows of t", "Your query returned: (1,)",
                           reply="sql", lesson="use COUNT")
    assert lose.startswith("FAILURE.") and "```sql\nSELECT * FROM t\n```" in lose and "Your query returned" in lose
    assert lose.endswith("Lesson: use COUNT")
    math = experience_text(True, ["3 + 4 = 7\n#### 7"], "What is 3 + 4?", "Correct.", reply="number")
    assert "#### 7" in math and "```" not in math


class ScriptedLLM:
    """Returns the replies in order and records what it was sent."""

    def __init__(self, replies: list[str]) -> None:
        self.replies, self.calls = list(replies), []

    async def generate(self, prompt, max_tokens=16, temperature=0.0, top_p=1.0, stop=None, choices=None,
                       min_tokens=0, adapter=True) -> GenerationResult:
        self.calls.append({"prompt": prompt, "stop": stop, "adapter": adapter})
        ids = list(prompt) if isinstance(prompt, list) else [1, 2]
        return GenerationResult(self.replies.pop(0), ids, [7, 8], [-0.1, -0.2], 0)


class TwoTryCode(TextEnv):
    """A code task that passes when the reply defines ``f`` returning x + 1 (stands in for the sandboxed tests)."""

    name, thread_safe, one_line = "code", True, False

    def _reset(self, task: TaskSpec) -> Observation:
        return Observation("Complete f.", [], "def f(x): add one", "def f(x): add one", reply="code",
                           info={"entry_point": "f"})

    def _step(self, code: str) -> StepResult:
        won = "x + 1" in code
        return StepResult("All tests passed." if won else "The tests failed: AssertionError.", float(won), won, won,
                          [])

    def close(self) -> None: ...


def test_an_episode_with_a_chat_template_sends_rendered_ids_and_parses_code() -> None:
    rendered: list[list[dict]] = []

    def chat(messages: list[dict]) -> list[int]:
        rendered.append(messages)
        return list(range(len(messages) * 10))

    llm = ScriptedLLM(["Here:\n```python\ndef f(x):\n    return x\n```", "```python\ndef f(x):\n    return x + 1\n```"])
    settings = EpisodeSettings(style="full", max_steps=2, history=2, max_new_tokens=64)
    spec = EpisodeSpec(TaskSpec("HumanEval/x", "code", "test", item="x"), epoch=0, seed=0)
    traj = asyncio.run(run_episode(spec, AsyncEnv(TwoTryCode(2)), llm, None, settings, WORDS, chat=chat))
    assert traj.error is None and traj.won and traj.steps == 2
    assert traj.actions == ["def f(x):\n    return x", "def f(x):\n    return x + 1"]  # the code blocks, newlines kept
    assert all(c["stop"] == ["\n```\n"] for c in llm.calls)  # the block's closing fence, not a newline
    assert llm.calls[0]["prompt"] == list(range(20)) and traj.turns[0].prompt_ids == list(range(20))
    assert [m["role"] for m in rendered[1]] == ["system", "user", "assistant", "user"]
    assert "```python" in rendered[1][2]["content"]  # the repair turn shows the model its own reply
    assert rendered[1][3]["content"] == "The tests failed: AssertionError."


def test_a_gguf_path_that_does_not_exist_and_a_wrong_packaged_file_are_clear_errors(tmp_path: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from actors import pretrained
    from actors.model_builder import resolve_model

    assert pretrained.is_pretrained("smollm2-135m-instruct") and pretrained.is_pretrained("/x/model.Q4.gguf")
    assert not pretrained.is_pretrained("org/hub-model")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model(str(tmp_path / "missing.gguf"), tmp_path)
    fake = tmp_path / "pkg" / "model.gguf"
    fake.parent.mkdir()
    fake.write_bytes(b"not a gguf")
    entry = pretrained.PackagedModel("pkg", "model.gguf", "pkg==1", gguf_sha256="0" * 64, weights_sha256="1" * 64)
    monkeypatch.setitem(pretrained.PACKAGED, "fake-model", entry)
    monkeypatch.setattr(pretrained, "packaged_gguf", lambda name: fake)
    with pytest.raises(RuntimeError, match="expected 0000"):
        pretrained.resolve_pretrained("fake-model", tmp_path)
    assert not (tmp_path / "models").exists()  # nothing was built from the wrong file


def test_a_build_whose_weights_differ_from_the_pinned_hash_is_refused(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from actors import pretrained

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"gguf bytes")

    def convert(src: Path, out: Path) -> dict:
        (out / "model.safetensors").write_bytes(b"other weights")
        return {}

    monkeypatch.setattr(pretrained, "convert_gguf", convert)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(RuntimeError, match="weights sha256"):
        pretrained.build(gguf, out, "m", expect_weights="f" * 64)
    assert not (out / "build_info.json").exists()
    info = pretrained.build(gguf, tmp_path / "out", "m")  # an unpinned GGUF (a user's file) records its hashes
    assert json.loads((out / "build_info.json").read_text())["weights_sha256"] == info["weights_sha256"]


class OneMemory:
    """A memory that shows one experience (or none) and accepts feedback and writes."""

    def __init__(self, shown: bool) -> None:
        self.shown = shown

    async def retrieve(self, query: str, *, episode_id: str | None = None):
        from types import SimpleNamespace

        records = [SimpleNamespace(id="m1", experience="def f(x): return x + 1")] if self.shown else []
        return SimpleNamespace(records=records, ids=[r.id for r in records], scores=[1.0] * len(records),
                               pool=[r.id for r in records], memory_version=1)

    async def feedback(self, *args, **kwargs) -> None: ...

    async def write_episode(self, **kwargs) -> str:
        return "new"


@pytest.mark.parametrize("only, shown, adapter", [(False, False, True), (True, False, False), (True, True, True)])
def test_the_adapter_plays_only_memory_guided_episodes_when_asked(only: bool, shown: bool, adapter: bool) -> None:
    """learner.memory_guided: only -> an episode shown no memory is played by the base model (every call)."""
    llm = ScriptedLLM(["```python\ndef f(x):\n    return x\n```", "```python\ndef f(x):\n    return x + 1\n```"])
    settings = EpisodeSettings(style="full", max_steps=2, history=2, max_new_tokens=64, adapter_with_memory_only=only)
    spec = EpisodeSpec(TaskSpec("HumanEval/x", "code", "test", item="x"), epoch=0, seed=0)
    traj = asyncio.run(run_episode(spec, AsyncEnv(TwoTryCode(2)), llm, OneMemory(shown), settings, WORDS,
                                   chat=lambda m: list(range(len(m) * 10))))
    assert traj.error is None and len(traj.retrieved_ids) == int(shown)
    assert [c["adapter"] for c in llm.calls] == [adapter] * len(llm.calls) and llm.calls
