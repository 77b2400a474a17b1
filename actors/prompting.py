"""Prompt layouts and experience texts: what the model reads each turn and what an episode writes to memory.

Owns: ``parse_action`` (generated text -> an admissible command), ``experience_text`` (the experience of an episode: a success script or a failure
reflection), ``script_of`` (the commands back out of an experience), and the two prompt styles:

- ``full`` — for instruction models: the task, the retrieved experiences (as many as fit the token budget),
  a window of recent history, the current observation and the admissible actions.
- ``full`` through the model's **chat template** (``build_messages``) when the tokenizer has one: a system turn
  saying how to answer for the task's reply kind (command / code / sql / number), a user turn with the retrieved
  experiences in their own block and the task, then the previous attempts as assistant turns and the environment's
  answers as user turns; the oldest turns, then the weakest experiences, are dropped to fit the token budget.
- ``plan`` — for the project's small default model (``epiq-tiny``), which is trained on exactly this layout:
  the best experience as a command script with a ``>>`` marker at the current step, the start of the current
  observation and the admissible actions. Its training data (``actors.policy_data``) is made by this function,
  so the layout the model learns and the layout the agent sends cannot drift apart.

    prompt = build_prompt("plan", goal, observation, admissible, experiences, history, count_tokens, budget)
    messages = build_messages("code", task_text, [], experiences, history, count_tokens, budget)
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable

SUCCESS, FAILURE = "SUCCESS", "FAILURE"
PLAN_OBS_WORDS = 16  # words of the current observation the plan layout keeps


FENCE = {"code": "python", "sql": "sql"}
EXPERIENCE_CHARS = 1200  # longest attempt (code, SQL, worked solution) an experience keeps


def experience_text(won: bool, actions: list[str], goal: str, last_observation: str, max_actions: int = 24,
                    lesson: str = "", reply: str = "command") -> str:
    """An episode's experience: a success script (the commands that won) or a failure reflection — from a
    deterministic template, plus the model's own ``lesson`` when ``agent.experience_writer`` is 'llm'.

    For the task kinds (``reply`` 'code' / 'sql' / 'number') ``actions`` are the replies: a success keeps the last
    (passing) one in full, a failure names the reason and keeps the last attempt, so a later episode can avoid it."""
    lesson = " ".join(lesson.split())
    if reply != "command":
        task = " ".join(goal.split())[:200]
        attempt = (actions[-1] if actions else "").strip()[:EXPERIENCE_CHARS]
        shown = f"```{FENCE[reply]}\n{attempt}\n```" if reply in FENCE else attempt
        if won:
            return f"{SUCCESS}. Task: {task}\nA reply that was graded correct:\n{shown}"
        text = (f"{FAILURE}. Task: {task}\nThis reply was graded wrong ({' '.join(last_observation.split())[:200]}):\n"
                f"{shown or '(no answer)'}\nDo not repeat this mistake.")
        return f"{text}\nLesson: {lesson}" if lesson else text
    script = " ; ".join(actions[:max_actions])
    if won:
        return f"{SUCCESS}. To {goal.strip().rstrip('.')}: {script}"
    text = (f"{FAILURE}. Tried: {script or '(nothing)'}. It did not work; the last observation was: "
            f"{last_observation.strip()[:160]}. Try a different route.")
    return f"{text} Lesson: {lesson}" if lesson else text


_SCRIPT = re.compile(rf"^{SUCCESS}\. To [^:]*: (?P<s>.*)$|^{FAILURE}\. Tried: (?P<f>.*?)\. It did not work", re.S)


def script_of(experience: str) -> tuple[str, list[str]]:
    """(kind, commands) of an experience written by ``experience_text``; ("", []) for any other text."""
    m = _SCRIPT.match(experience.strip())
    if not m:
        return "", []
    kind, text = (SUCCESS, m.group("s")) if m.group("s") is not None else (FAILURE, m.group("f"))
    commands = [c.strip() for c in text.split(" ; ") if c.strip() and c.strip() != "(nothing)"]
    return kind, commands


def plan_line(experience: str | None, step: int) -> str:
    """One experience as the plan layout shows it: ``memory: go south ; >> go east ; take coin ; end``.

    ``step`` is the number of actions taken so far; the marker sits before the command to take now (at ``end``
    once the script is used up). No experience -> ``memory: none``; a failure -> the kind word first.
    """
    if not experience:
        return "memory: none"
    kind, commands = script_of(experience)
    if not kind:
        return "memory: none"
    items = [*commands, "end"]
    at = min(step, len(items) - 1)
    shown = " ; ".join(items[:at] + [">> " + items[at]] + items[at + 1:])
    return f"memory: {shown}" if kind == SUCCESS else f"memory: failed {shown}"


def _first_words(text: str, n: int) -> str:
    return " ".join(text.split()[:n])


def build_prompt(style: str, goal: str, observation: str, admissible: list[str], experiences: list[str],
                 history: list[tuple[str, str]], count_tokens: Callable[[str], int], budget: int,
                 step: int = 0) -> str:
    """The turn's prompt in ``style`` ('full' or 'plan'); ``experiences`` are best first."""
    if style == "plan":
        return "\n".join([plan_line(experiences[0] if experiences else None, step),
                          "room: " + _first_words(observation, PLAN_OBS_WORDS),
                          "actions: " + " | ".join(admissible),
                          ">"])
    if style != "full":
        raise ValueError(f"unknown prompt style {style!r}; expected 'full' or 'plan'")
    tail = ["Task: " + goal.strip(),
            *[f"> {a}\n{o.strip()[:200]}" for a, o in history],
            "Now: " + observation.strip()[:400],
            "Actions: " + " | ".join(admissible),
            "> "]
    used = sum(count_tokens(t) for t in tail)
    kept: list[str] = []
    for exp in experiences:  # best first; drop what does not fit
        cost = count_tokens(exp) + 2
        if used + cost > budget:
            break
        kept.append(exp)
        used += cost
    head = [f"Experience {i + 1}: {e}" for i, e in enumerate(kept)]
    return "\n".join(head + tail)


SYSTEM_PROMPTS = {
    "command": "You are playing a text adventure game. Reply with exactly one of the listed actions and nothing else.",
    "code": "You are an expert Python programmer. Write the complete function, with the imports it needs, in one "
            "```python code block. Do not write tests or explanations.",
    "sql": "You are an expert in SQL, working on a SQLite database. Reply with exactly one SQL statement that does "
           "the task, in one ```sql code block.",
    "number": "Solve the math problem step by step. End your reply with the final answer as a plain number on its "
              "own line, written as: #### <number>",
}
MESSAGE_OVERHEAD = 6  # template tokens around each chat turn (role markers, newlines)


def build_messages(reply: str, task_text: str, admissible: list[str], experiences: list[str],
                   history: list[tuple[str, str]], count_tokens: Callable[[str], int], budget: int) -> list[dict[str, str]]:
    """The turn's chat messages (for the tokenizer's chat template): system, user (experiences + task), then the
    episode's previous (reply, answer) turns. ``experiences`` are best first; over ``budget`` tokens the oldest
    turns go first (the task stays), then the weakest experiences."""
    if reply not in SYSTEM_PROMPTS:
        raise ValueError(f"unknown reply kind {reply!r}; expected one of {sorted(SYSTEM_PROMPTS)}")
    actions = f"\nActions: {' | '.join(admissible)}" if admissible else ""

    def assemble(kept: list[str], turns: list[tuple[str, str]]) -> list[dict[str, str]]:
        block = ""
        if kept:
            block = ("Experiences from earlier, similar tasks (use what helps):\n"
                     + "\n\n".join(f"[{i + 1}] {e}" for i, e in enumerate(kept)) + "\n\n")
        msgs = [{"role": "system", "content": SYSTEM_PROMPTS[reply]},
                {"role": "user", "content": block + task_text.strip() + ("" if turns else actions)}]
        for n, (said, answer) in enumerate(turns):
            msgs.append({"role": "assistant", "content": said.strip() or "(empty reply)"})
            msgs.append({"role": "user", "content": answer.strip() + (actions if n == len(turns) - 1 else "")})
        return msgs

    def cost(msgs: list[dict[str, str]]) -> int:
        return sum(count_tokens(m["content"]) + MESSAGE_OVERHEAD for m in msgs)

    kept, turns = list(experiences), list(history)
    while turns and cost(assemble(kept, turns)) > budget:
        turns = turns[1:]
    while kept and cost(assemble(kept, turns)) > budget:
        kept = kept[:-1]
    return assemble(kept, turns)


def parse_action(text: str, admissible: list[str]) -> str:
    """Map generated text to an admissible command: exact, prefix, or closest match (never raises)."""
    if not admissible:
        return text.strip()
    line = text.strip().splitlines()[0].strip().lower() if text.strip() else ""
    lowered = {a.lower(): a for a in admissible}
    if line in lowered:
        return lowered[line]
    for a_low, a in lowered.items():
        if line and (line.startswith(a_low) or a_low.startswith(line)):
            return a
    close = difflib.get_close_matches(line, list(lowered), n=1, cutoff=0.0)
    return lowered[close[0]] if close else admissible[0]


def reflection_prompt(goal: str, actions: list[str], last_observation: str) -> str:
    """Asks an instruction model for a one-sentence lesson from a failed episode (``agent.experience_writer: llm``)."""
    return (f"Task: {goal.strip()}\nActions taken: {' ; '.join(actions) or '(none)'}\n"
            f"Last observation: {last_observation.strip()[:300]}\nThe task failed. In one sentence, what should be "
            f"done differently next time?\nLesson:")
