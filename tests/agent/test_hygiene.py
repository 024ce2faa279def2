"""The test suite's own rules: fixtures-only conftest, no wall-clock asserts.

The launcher, free ports, TOML writer and waits live in ``dedgeai.agent.lab.harness`` (one
harness for the demo, the benchmarks and the tests); a test waits on events with generous
bounded timeouts and never asserts how long something took on a shared 2-core machine.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
# An assert comparing a duration (elapsed, took, took_s, seconds...) with a bound.
WALL_CLOCK = re.compile(
    r"assert\b.*\b(elapsed|took|took_s|duration|duration_s|seconds)\s*(<|<=)\s*[0-9A-Z_]"
)


def _is_fixture(node: ast.AST) -> bool:
    if not isinstance(node, ast.FunctionDef):
        return False
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if isinstance(target, ast.Attribute) and target.attr == "fixture":
            return True
    return False


def test_the_agent_conftest_keeps_fixtures_only() -> None:
    conftest = TESTS / "agent" / "conftest.py"
    tree = ast.parse(conftest.read_text(encoding="utf-8"))
    fixtures = [node for node in tree.body if _is_fixture(node)]
    helpers = [
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and not _is_fixture(node)
    ]
    assert fixtures and helpers == [], f"move {helpers} to dedgeai.agent.lab.harness"


def test_no_test_asserts_a_wall_clock_duration() -> None:
    offenders = [
        f"{path.relative_to(TESTS)}:{number}: {line.strip()}"
        for path in sorted(TESTS.rglob("test_*.py"))
        if path != Path(__file__).resolve()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if WALL_CLOCK.search(line)
    ]
    assert offenders == [], offenders


def test_the_wall_clock_pattern_catches_what_it_is_for() -> None:
    assert WALL_CLOCK.search("    assert code == 0 and took_s < 10.0")
    assert WALL_CLOCK.search("assert elapsed < REFUSAL_WITHIN_S")
    assert not WALL_CLOCK.search("assert code == 0")
    assert not WALL_CLOCK.search("deadline = time.monotonic() + timeout_s")
