"""MkDocs hooks: the command-line reference is written from the command's own parser.

A page holding the line ``<!-- cli-reference -->`` gets, in its place, the ``--help`` text
of ``kling-async`` and of each of its commands, so the reference cannot drift from the code.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from kling_async._arguments import command_parser

MARKER = "<!-- cli-reference -->"
WIDTH = "88"  # argparse wraps help to the terminal's width; the page has one of its own


def commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser's commands by name, in the order `--help` lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def help_text(parser: argparse.ArgumentParser) -> str:
    """The parser's `--help`, wrapped as on a terminal of a fixed width."""
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        return parser.format_help()
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


def reference() -> str:
    """Markdown for the command and each of its commands: a heading and its help."""
    parser = command_parser()
    sections = [f"```text\n{help_text(parser)}```"]
    for name, command in commands(parser).items():
        sections.append(f"### `kling-async {name}`\n\n```text\n{help_text(command)}```")
    return "\n\n".join(sections)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """Put the generated reference where a page asks for it."""
    return markdown.replace(MARKER, reference()) if MARKER in markdown else markdown
