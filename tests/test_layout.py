"""The package's shape: public names, import direction, typing marker."""

from __future__ import annotations

import ast
from pathlib import Path

import kling_async

PACKAGE = Path(kling_async.__file__).parent

# The layout of the design, top to bottom: a module imports only modules above it.
ORDER = [
    "models",
    "errors",
    "policies",
    "_clock",
    "_ratelimit",
    "_validate",
    "_images",  # an image argument: a URL, a file sent as base64, or base64 text
    "_dialects",  # the dialect table, the base URL and the paths of tasks
    "_wire",
    "auth",
    # Spans and metrics: the transport, watchers and batches call its hooks (no-ops without
    # OpenTelemetry), so it sits above them.
    "telemetry",
    "_journal_key",  # the name a request is journaled under: its key, or a digest of its fields
    "_journal_entry",  # what every journal store keeps of a request, and how it refuses
    "_journal_file",  # the journal's SQLite file: made whole, checked, locked
    "journal",
    "_transport",
    "_addresses",
    "watcher",
    "_listed",
    "batch",
    "callbacks",
    "_fetch",  # one download's exchange with a file server: redirects, ranges, retries
    "download",
    "_chain_plan",  # a chain and its plan: its request, what it made, its steps and their lengths
    "_chain_run",  # the chain engine: each chain's next step fed to one batch as its last ends
    "chain",
    "_downloader",  # the client's downloads: the session they take, an expired link refreshed
    "_create",  # the one path of every create request: sent once, never a task lost
    "_adapters",  # the client as a batch, a chain and a watcher see it
    "postgres",  # the coordination on a database: loaded by the client only when asked for
    "client",
    "testing",  # the fake server imports nothing of ours; only the CLI's demo uses it
    "_display",
    "_flags",
    "_chain_cli",
    "_batch_files",  # the batch command's input, read and checked, and its results file
    "_commands",  # what each command does
    "_arguments",  # the command's arguments and help
    "cli",
]
INDEPENDENT = {"models", "errors", "policies"}


def _is_module(name: str) -> bool:
    return (PACKAGE / f"{name}.py").exists() or (PACKAGE / name / "__init__.py").exists()


def _imports_of(path: Path) -> set[str]:
    """The kling_async modules a file imports (relative or absolute)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 1 and module:
                found.add(module.split(".")[0])
            elif node.level == 1:  # `from . import x`: x is a module, or a name of __init__
                found.update(a.name for a in node.names if _is_module(a.name))
            elif module.startswith("kling_async."):
                found.add(module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("kling_async."):
                    found.add(alias.name.split(".")[1])
    return found


def test_every_module_has_a_place_in_the_layout() -> None:
    """A new module must be placed in the layout before it can be imported."""
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert modules <= set(ORDER), modules - set(ORDER)


def _ranked_files() -> list[tuple[Path, str]]:
    """Each module file with its place in the layout (a package's files take the package's)."""
    files = [(p, p.stem) for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")]
    return files + [(p, "postgres") for p in (PACKAGE / "postgres").glob("*.py")]


def test_imports_point_up_the_layout() -> None:
    """No module imports one below it in the layout."""
    for path, name in _ranked_files():
        rank = ORDER.index(name)
        imports = _imports_of(path) - {name}
        if path.parent.name == "postgres":  # `..x` is a module of ours; `.x` is its own
            imports = _parent_imports_of(path)
        for imported in imports:
            if name in INDEPENDENT:
                assert imported not in ORDER, f"{name} must import nothing of ours"
            assert ORDER.index(imported) < rank, f"{path.name} imports {imported}"


def _parent_imports_of(path: Path) -> set[str]:
    """The kling_async modules a file of a subpackage imports (``from ..x import``)."""
    return {
        (node.module or "").split(".")[0]
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.level == 2
    }


def test_only_the_postgres_package_imports_asyncpg() -> None:
    """asyncpg is an optional extra: nothing outside `postgres/` may import it."""
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "postgres":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(n.split(".")[0] == "asyncpg" for n in names), path


def test_testing_package_never_imports_the_client() -> None:
    """The fake server speaks the wire format only: it imports nothing of kling_async."""
    for path in (PACKAGE / "testing").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                outside = node.level >= 2 or (node.module or "").startswith("kling_async")
                assert not outside, f"{path.name} imports from the client: {ast.dump(node)}"
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
                assert not any(n.startswith("kling_async") for n in names), path.name


def test_public_names_are_pinned() -> None:
    """__all__ is the contract: changing it is a decision, not an accident."""
    assert sorted(kling_async.__all__) == sorted(
        [
            "APIError",
            "AmbiguousSubmissionError",
            "AuthenticationError",
            "Batch",
            "BatchEvent",
            "BatchEventKind",
            "BatchOutcome",
            "BearerAuth",
            "CallbackReceiver",
            "Chain",
            "ChainError",
            "ChainEvent",
            "ChainOutcome",
            "ChainRequest",
            "ConfigurationError",
            "ContentPolicyError",
            "DEFAULT_VIDEO_MODEL",
            "DownloadError",
            "DownloadProgress",
            "EXTENDABLE_MODELS",
            "ImageToVideoRequest",
            "InsufficientBalanceError",
            "InvalidArgumentError",
            "InvalidRequestError",
            "JWTAuth",
            "KlingClient",
            "KlingError",
            "MalformedTaskError",
            "NotFoundError",
            "NotSentError",
            "OrphanedTask",
            "PermissionDeniedError",
            "PollPolicy",
            "RateLimitError",
            "RetryBudget",
            "RetryPolicy",
            "ServerError",
            "Task",
            "TaskFailedError",
            "TaskKind",
            "TaskStatus",
            "TaskWatcher",
            "Telemetry",
            "TextToVideoRequest",
            "TransportError",
            "Video",
            "VideoExtendRequest",
            "WatchTimeoutError",
            "__version__",
        ]
    )
    for name in kling_async.__all__:
        assert getattr(kling_async, name) is not None


def test_ships_py_typed() -> None:
    """The package declares its annotations to type checkers."""
    assert (PACKAGE / "py.typed").exists()


def test_init_only_reexports() -> None:
    """__init__ holds imports, the version lookup and __all__: no logic."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    kinds = {type(node).__name__ for node in tree.body}
    assert kinds <= {"Expr", "ImportFrom", "Import", "Try", "Assign"}
