"""Reply parsers: code blocks, SQL statements, final numbers, dispatch; malformed and huge replies never raise."""

from __future__ import annotations

import time

import pytest

from actors.replies import normalize_number, numbers_equal, parse_code, parse_number, parse_reply, parse_sql


# --- code ---------------------------------------------------------------------------------------------------------

def test_code_from_a_python_fence_with_text_around() -> None:
    text = "Here is my solution:\n```python\ndef add(a, b):\n    return a + b\n```\nIt adds the numbers."
    assert parse_code(text) == "def add(a, b):\n    return a + b"


@pytest.mark.parametrize("tag", ["py", "", "python3"])
def test_code_fence_tags(tag: str) -> None:
    assert parse_code(f"```{tag}\nx = 1\n```") == "x = 1"


def test_code_picks_the_block_defining_the_entry_point() -> None:
    text = ("```python\ndef helper():\n    \"\"\"The one, the only.\"\"\"\n    return 1\n```\n"
            "```python\ndef solve(n):\n    return helper() + n\n```\n```python\nprint(solve(2))\n```")
    assert parse_code(text, entry_point="solve").startswith("def solve(n):")
    assert parse_code(text).startswith("def helper")  # the longest block without an entry point


def test_code_unterminated_fence_runs_to_the_end() -> None:
    assert parse_code("```python\ndef f():\n    return 2\n") == "def f():\n    return 2"


def test_code_without_fences() -> None:
    assert parse_code("Sure:\nimport math\ndef f(x):\n    return math.sqrt(x)") == \
        "import math\ndef f(x):\n    return math.sqrt(x)"
    assert parse_code("I do not know how to solve this.") == ""
    assert parse_code("```text\njust words\n```") == ""
    assert parse_code("") == "" and parse_code("   \n ") == ""


# --- sql ----------------------------------------------------------------------------------------------------------

def test_sql_from_a_fence_first_statement_only() -> None:
    text = "Action: Operation\n```sql\n-- the rows\nSELECT * FROM t WHERE a = 'x;y'; DELETE FROM t;\n```"
    assert parse_sql(text) == "SELECT * FROM t WHERE a = 'x;y'"


def test_sql_without_fences_and_chatter() -> None:
    assert parse_sql("I will run:\nselect a, b from t where c > 3;\nFinal Answer: done") == \
        "select a, b from t where c > 3"
    assert parse_sql("Action: Operation: UPDATE t SET a = 1 WHERE b = 2") == "UPDATE t SET a = 1 WHERE b = 2"
    assert parse_sql("Final Answer: INSERT INTO t (a) VALUES ('it''s')") == "INSERT INTO t (a) VALUES ('it''s')"
    assert parse_sql("WITH x AS (SELECT 1) SELECT * FROM x") == "WITH x AS (SELECT 1) SELECT * FROM x"


def test_sql_comments_removed_and_nothing_found() -> None:
    assert parse_sql("```sql\nSELECT a /* all of them */ FROM t -- done\n```") == "SELECT a   FROM t"
    assert parse_sql("There is no statement here.") == ""
    assert parse_sql("") == "" and parse_sql("```sql\n```") == ""


def test_sql_unterminated_fence() -> None:
    assert parse_sql("```sql\nDELETE FROM t WHERE id = 3") == "DELETE FROM t WHERE id = 3"


# --- numbers ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, number", [
    ("She makes 9 * 2 = $18 every day.\n#### 18", "18"),
    ("#### 1,000", "1000"),
    ("The answer is $18.00.", "18"),
    ("The answer is -3.5", "-3.5"),
    ("So the total is \\boxed{1,234}.", "1234"),
    ("Answer: 42 apples", "42"),
    ("First 3 then 4, finally 7.", "7"),
    ("16 - 3 - 4 = 9", "9"),
    ("It costs .5 dollars", "0.5"),
    ("The answer is 12 (from 3 * 4). #### 12", "12"),
    ("no number at all", ""),
    ("", ""),
])
def test_parse_number(text: str, number: str) -> None:
    assert parse_number(text) == number


def test_normalize_and_compare_numbers() -> None:
    assert normalize_number("18.00") == "18" and normalize_number("1,000") == "1000"
    assert normalize_number("-3.50") == "-3.5" and normalize_number("007") == "7" and normalize_number("-0.0") == "0"
    assert normalize_number("abc") == "" and normalize_number("") == ""
    assert numbers_equal("18", "18.0") and numbers_equal("$1,000", "1000")
    assert not numbers_equal("18", "17") and not numbers_equal("", "1") and not numbers_equal("x", "x")


# --- dispatch and robustness --------------------------------------------------------------------------------------

def test_parse_reply_dispatch() -> None:
    assert parse_reply("command", "go north please", ["go north", "go south"]) == "go north"
    assert parse_reply("number", "#### 5", []) == "5"
    assert parse_reply("sql", "SELECT 1", []) == "SELECT 1"
    assert parse_reply("code", "```python\ndef f(): pass\n```", [], entry_point="f") == "def f(): pass"
    with pytest.raises(ValueError, match="unknown reply kind"):
        parse_reply("essay", "text", [])


@pytest.mark.parametrize("text", [
    "```python\n" + "x = 1\n" * 200_000, "`" * 1_000_000, "1," * 500_000, "#" * 1_000_000, "'" * 1_000_000,
    "SELECT " + "a" * 1_000_000, "\\boxed{" * 200_000, ": " * 500_000, "9" * 1_000_000,
])
def test_huge_replies_are_fast(text: str) -> None:
    start = time.perf_counter()
    for kind in ("command", "code", "sql", "number"):
        assert isinstance(parse_reply(kind, text, ["look"], entry_point="f"), str)
    assert time.perf_counter() - start < 2.0
