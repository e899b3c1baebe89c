"""The README's Python snippets type-check under mypy --strict, as a user's code would.

Each snippet becomes the body of an async function (the README writes ``async with`` at the
top level for brevity), after a prelude declaring the few names the README treats as given
(`client`, `task`, `pairs`, `requests`). A snippet that is partial on purpose is preceded by
the line ``<!-- snippet: partial -->`` and skipped.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from helpers import PARTIAL, snippets

ROOT = Path(__file__).parent.parent
PRELUDE = """\
from kling_async import KlingClient, Task, VideoExtendRequest

client: KlingClient
task: Task
pairs: list[tuple[str, str]]
requests: list[VideoExtendRequest]


async def snippet() -> None:
"""


def test_the_readme_snippets_type_check(tmp_path: Path) -> None:
    """Every complete snippet passes mypy --strict (a wrong name or type is a README bug)."""
    blocks = snippets((ROOT / "README.md").read_text())
    assert len(blocks) >= 8
    files = []
    for line, code in blocks:
        path = tmp_path / f"readme_line_{line}.py"
        path.write_text(PRELUDE + textwrap.indent(code, "    "))
        files.append(str(path))
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", *files],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_partial_marker_skips_its_snippet() -> None:
    """Only a block right after the marker is skipped."""
    text = f"```python\nx = 1\n```\n\n{PARTIAL}\n```python\ny = 2\n```\n"
    assert snippets(text) == [(2, "x = 1\n")]


def log_filter_snippet() -> str:
    """The README's access-log filter for the callback token."""
    return next(code for _, code in snippets((ROOT / "README.md").read_text()) if "Filter" in code)


def test_the_readme_log_filter_is_the_one_the_fastapi_example_runs() -> None:
    """Past its imports, the README's filter is the example's, word for word (its test runs it)."""
    code = log_filter_snippet()
    example = (ROOT / "examples" / "fastapi_callbacks.py").read_text()
    assert code[code.index("TOKEN = ") :] in example


def test_the_access_log_filter_hides_the_callback_token() -> None:
    """The README's log filter writes `<token>` where the callback token was."""
    code = log_filter_snippet()
    namespace: dict[str, Any] = {}
    exec(code, namespace)  # noqa: S102 - the README's own snippet
    access = logging.getLogger("uvicorn.access")
    hide = access.filters[-1]
    access.removeFilter(hide)
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("1.2.3.4:5", "POST", "/kling-callbacks/s3cr3t-T0ken?x=1", "1.1", 200),
        None,
    )
    assert hide.filter(record)
    assert record.getMessage() == '1.2.3.4:5 - "POST /kling-callbacks/<token>?x=1 HTTP/1.1" 200'
