"""The documentation site builds with warnings as errors, and every example on it runs.

Each Python block of a page under ``docs/`` is a whole program, run here as a user would run
it, against the embedded fake server. Pages include parts of the README (and the benchmarks'
README) instead of repeating them; a part they include may hold no Python block, so that
every example the site shows is one run here (the README's own snippets are type-checked by
``test_readme.py``).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import snippets

import kling_async
import kling_async.testing

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
EXAMPLES = [
    pytest.param(code, id=f"{page.relative_to(DOCS)}:{line}")
    for page in PAGES
    for line, code in snippets(page.read_text())
]
INCLUDE = re.compile(r'\{%\s*include-markdown\s+"([^"]+)"(.*?)%\}')
OPTION = re.compile(r'(start|end)="([^"]*)"')


def included(page: Path) -> list[tuple[str, str]]:
    """The text each include directive of `page` brings in, named by the directive."""
    parts = []
    for match in INCLUDE.finditer(page.read_text()):
        text = (page.parent / match.group(1)).read_text()
        options = dict(OPTION.findall(match.group(2)))
        if "start" in options:
            text = text[text.index(options["start"]) + len(options["start"]) :]
        if "end" in options:
            text = text[: text.index(options["end"])]
        parts.append((match.group(0), text))
    return parts


def test_the_site_builds_without_a_warning(tmp_path: Path) -> None:
    """`mkdocs build --strict` passes: links, anchors, includes and docstrings all resolve."""
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "index.html").is_file()
    cli = (tmp_path / "reference" / "cli.html").read_text()
    assert "usage: kling-async batch" in cli  # written from the parser by the build's hook


@pytest.mark.parametrize("code", EXAMPLES)
def test_the_example_runs(code: str, tmp_path: Path) -> None:
    """The example runs to its end against the fake server, in a folder of its own."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout  # every example shows what it did


def test_the_pages_hold_examples() -> None:
    """The concept pages show code, so the run above has something to check."""
    assert len(EXAMPLES) >= 10


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(DOCS)))
def test_what_a_page_includes_holds_no_python(page: Path) -> None:
    """An included part of the README is prose or shell: its Python would not be run here."""
    for directive, text in included(page):
        assert "```python" not in text, f"{directive} brings in a Python block"


def test_the_api_reference_covers_every_public_name() -> None:
    """Each name the package and its testing module export has an entry in the reference."""
    reference = "\n".join(page.read_text() for page in (DOCS / "reference").glob("*.md"))
    documented = set(re.findall(r"^::: ([\w.]+)", reference, flags=re.M))
    public = {f"kling_async.{name}" for name in kling_async.__all__ if name != "__version__"}
    public |= {f"kling_async.testing.{name}" for name in kling_async.testing.__all__}
    assert public - documented == set()
