"""Every example in the package's docstrings runs and shows what it says.

Examples that need a server or an event loop are marked ``+SKIP``; the others are run here,
so a docstring cannot drift from the code. A module whose optional dependency is not
installed is skipped with the dependency named (it cannot be imported to read its examples).
"""

from __future__ import annotations

import doctest
import importlib
import io
import pkgutil

import pytest

import kling_async

MODULES = sorted(
    name
    for _, name, _ in pkgutil.walk_packages(kling_async.__path__, "kling_async.")
    if not name.endswith(".__main__")  # running it is the command itself
)


@pytest.mark.parametrize("name", ["kling_async", *MODULES])
def test_docstring_examples_hold(name: str) -> None:
    """The module's examples give the output their docstrings show."""
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.partition(".")[0] == "kling_async":
            raise
        pytest.skip(f"{name} needs {exc.name}, which is not installed")
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report = io.StringIO()
    for test in doctest.DocTestFinder().find(module, name):
        runner.run(test, out=report.write)
    assert runner.failures == 0, report.getvalue()
