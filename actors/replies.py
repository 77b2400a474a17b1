"""Reply parsers per task type: the model's free text -> the action an environment steps with. They never raise.

Owns: ``parse_code`` (the Python of a reply), ``parse_sql`` (its one SQL statement), ``parse_number`` (its final
number, normalised by ``normalize_number``), ``numbers_equal`` and ``parse_reply``, which dispatches on the
``Observation.reply`` kind ('command' | 'code' | 'sql' | 'number'). Only the first ``MAX_CHARS`` characters
of a reply are looked at, so a runaway generation costs no more than a normal one.

    action = parse_reply(obs.reply, text, obs.admissible_actions, entry_point=obs.info.get("entry_point"))
    parse_number("so she makes $1,018.00 a day. #### 1,018")   # -> "1018"
"""

from __future__ import annotations

import math
import re

from actors.prompting import parse_action

MAX_CHARS = 20_000  # characters of a reply that are parsed
KINDS = ("command", "code", "sql", "number")

# ```lang <rest of the opening line>\n body (up to the closing fence, or the end for an unterminated one)
_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n`]*\n(.*?)(?:```|\Z)", re.S)
_PYTHON_TAGS = {"python", "py", "python3", "py3", ""}
_SQL_TAGS = {"sql", "mysql", "sqlite", "sqlite3", "postgresql", "plsql", ""}
_CODE_LINE = re.compile(r"^(?:def |async def |class |import |from \S+ import |@\w)", re.M)
_SQL_START = re.compile(r"^\s*\(?\s*(SELECT|INSERT|UPDATE|DELETE|WITH|CREATE|DROP|ALTER|REPLACE)\b", re.I)
# A statement that starts a line, or follows "Action: ...:" / "Final Answer:" style chatter on its line.
_SQL_IN_TEXT = re.compile(r"(?:^|:[ \t]*)[ \t]*\(?[ \t]*(?:SELECT|INSERT|UPDATE|DELETE|WITH|CREATE|DROP|ALTER|REPLACE)\b",
                          re.I | re.M)
_NUMBER = re.compile(r"(?<![\w.])-?(?:\$\s?)?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)")


def _fences(text: str) -> list[tuple[str, str]]:
    """(language tag in lower case, body) of every fenced block, in order."""
    return [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]


def parse_code(text: str, entry_point: str | None = None) -> str:
    """The code of a reply: the Python fenced block (the one defining ``entry_point`` when given, else the
    longest); no fence -> the text from its first code-looking line; nothing code-like -> ""."""
    text = (text or "")[:MAX_CHARS]
    blocks = [body for tag, body in _fences(text) if tag in _PYTHON_TAGS and body.strip()]
    if not blocks:
        blocks = [body for _, body in _fences(text) if _CODE_LINE.search(body)]
    if entry_point:
        defines = re.compile(rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", re.M)
        for body in blocks:
            if defines.search(body):
                return body.strip("\n").rstrip()
    if blocks:
        return max(blocks, key=lambda b: len(b.strip())).strip("\n").rstrip()  # max keeps the first of equals
    if "```" in text:  # fences, but none holds code
        return ""
    first = _CODE_LINE.search(text)
    return text[first.start():].strip() if first else ""


def _first_statement(sql: str) -> str:
    """``sql`` without comments, up to its first top-level ';' (quotes and identifiers respected), stripped."""
    out: list[str] = []
    i, n, quote = 0, len(sql), ""
    while i < n:
        ch = sql[i]
        if quote:
            out.append(ch)
            if ch == quote:
                quote = ""  # a doubled quote ('it''s') closes and reopens: same text
        elif ch in "'\"`":
            quote = ch
            out.append(ch)
        elif sql.startswith("--", i) or ch == "#":
            end = sql.find("\n", i)
            i = n if end < 0 else end
            out.append(" ")
            continue
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
            out.append(" ")
            continue
        elif ch == ";":
            break
        else:
            out.append(ch)
        i += 1
    return "".join(out).strip()


def parse_sql(text: str) -> str:
    """The reply's first SQL statement: from a ```sql (or bare) fenced block, else from the first line that starts
    with a statement keyword (SELECT, INSERT, UPDATE, DELETE, WITH, ...), possibly after "Action: ...:" chatter;
    comments removed, no trailing ';'. "" when there is none."""
    text = (text or "")[:MAX_CHARS]
    for tag, body in _fences(text):
        if tag in _SQL_TAGS and _SQL_START.match(_first_statement(body)):
            return _first_statement(body)
    for tag, body in _fences(text):
        if tag in ("sql", "mysql", "sqlite") and _first_statement(body):
            return _first_statement(body)
    m = _SQL_IN_TEXT.search(text)
    if not m:
        return ""
    start = m.start() + 1 if text[m.start()] == ":" else m.start()
    rest = text[start:]
    rest = re.split(r"\n\s*\n|```|\n\s*(?:Final Answer|Action)\s*:", rest, maxsplit=1, flags=re.I)[0]  # end of the segment
    return _first_statement(rest)


def normalize_number(text: str) -> str:
    """A number as a canonical string: commas, '$' and spaces dropped, no leading zeros, no trailing decimal zeros
    ('18.00' -> '18', '1,000' -> '1000', '-3.50' -> '-3.5', '.5' -> '0.5'); "" when ``text`` is not a number."""
    s = re.sub(r"[\s,$]", "", text or "")
    m = re.fullmatch(r"([+-]?)(\d*)(?:\.(\d*))?", s)
    if not m or not (m.group(2) or m.group(3)):
        return ""
    sign, whole, frac = m.group(1), m.group(2).lstrip("0") or "0", (m.group(3) or "").rstrip("0")
    value = f"{whole}.{frac}" if frac else whole
    return value if sign != "-" or value == "0" else "-" + value


def _number_after(text: str, marker: re.Pattern[str]) -> str:
    """The first number after the last match of ``marker``; "" when the marker is absent or no number follows."""
    last = None
    for last in marker.finditer(text):
        pass
    m = _NUMBER.search(text, last.end()) if last else None
    return normalize_number(m.group()) if m else ""


def parse_number(text: str) -> str:
    """The reply's final number: after the last '####', else after 'answer is' / 'Answer:', else inside the last
    \\boxed{...}, else the last number in the text; normalised by ``normalize_number``. "" when there is none."""
    text = (text or "")[:MAX_CHARS]
    for marker in (re.compile(r"####"), re.compile(r"answer\s+is\b|answer\s*:", re.I)):
        found = _number_after(text, marker)
        if found:
            return found
    for box in reversed(re.findall(r"\\boxed\s*\{([^{}]*)\}", text)):
        m = _NUMBER.search(box)
        if m:
            return normalize_number(m.group())
    numbers = _NUMBER.findall(text)
    return normalize_number(numbers[-1]) if numbers else ""


def numbers_equal(a: str, b: str) -> bool:
    """Whether two number strings denote the same value ('18' == '18.0' == '$18.00'); False when either is not a
    finite number."""
    x, y = normalize_number(a), normalize_number(b)
    if not x or not y:
        return False
    if x == y:
        return True
    fx, fy = float(x), float(y)
    return math.isfinite(fx) and math.isfinite(fy) and math.isclose(fx, fy, rel_tol=1e-9, abs_tol=1e-9)


def parse_reply(kind: str, text: str, admissible: list[str], entry_point: str | None = None) -> str:
    """The action of a reply for an observation whose ``reply`` kind is ``kind``; ValueError for an unknown kind."""
    if kind == "command":
        return parse_action((text or "")[:MAX_CHARS], admissible)
    elif kind == "code":
        return parse_code(text, entry_point)
    elif kind == "sql":
        return parse_sql(text)
    elif kind == "number":
        return parse_number(text)
    raise ValueError(f"unknown reply kind {kind!r}; expected one of {KINDS}")
