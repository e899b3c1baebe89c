"""A griffe extension for the API reference: docstring examples are shown as code.

The package's docstrings carry doctest examples (``>>>`` lines and their output), which
Markdown would otherwise render as nested quotes. Each run of them becomes a ``pycon`` block.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

FLAG = re.compile(r"\s*# doctest:.*$")  # a directive for the test runner, not for the reader


def fence_examples(text: str) -> str:
    """Wrap each doctest example (prompt lines and the output up to a blank line) in a fence.

    Doctest directives are left out, and so is a continuation line that held only one.

    >>> fence_examples("Text.\\n>>> 1 + 1  # doctest: +SKIP\\n2")
    'Text.\\n```pycon\\n>>> 1 + 1\\n2\\n```'
    """
    lines: list[str] = []
    inside = False
    for line in text.splitlines():
        if not inside and line.lstrip().startswith(">>>"):
            lines.append("```pycon")
            inside = True
        elif inside and not line.strip():
            lines.append("```")
            inside = False
        if inside:
            line = FLAG.sub("", line)
            if line.strip() == "...":
                continue
        lines.append(line)
    if inside:
        lines.append("```")
    return "\n".join(lines)


class DoctestBlocks(griffe.Extension):
    """Fence the doctest examples of every docstring the reference renders."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite the docstring of each object as it is loaded."""
        if obj.docstring is not None and ">>>" in obj.docstring.value:
            obj.docstring.value = fence_examples(obj.docstring.value)
