"""Mutation testing of the money paths: each module against its own fast tests.

Each module of `MODULES` is copied with the package and its tests into its own folder under
`.mutation/`, where mutmut makes small deliberate bugs in it (mutants) and runs the module's
tests against each. A mutant the tests do not notice is a rule that could break unseen.

Mutants that cannot change behaviour (equivalent) or that change only what no rule covers
(accepted) are listed with their reason in `scripts/mutation_equivalents.toml`; the score is
killed / (tried - equivalent), and the table lists every other survivor.

Not part of the per-commit checks: it takes tens of minutes. Run it with

    .venv/bin/python -m pip install -e '.[dev,mutation]'
    .venv/bin/python scripts/mutation.py                   # all modules, table on stdout
    .venv/bin/python scripts/mutation.py journal batch     # some modules
    .venv/bin/python scripts/mutation.py journal --write docs/mutation.md   # its rows only
    .venv/bin/python scripts/mutation.py journal --again   # the last run's survivors, anew

`--again` runs once more only the mutants the module's last run did not kill, against the
tests as they are now: after adding tests it tells in minutes what a full run would, as long
as the module itself is unchanged (it refuses otherwise).

To cover another module, add a line to `MODULES`: the module (dotted within a subpackage, as
`postgres.journal`) and the test files that are its own (fast) tests.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".mutation"
EQUIVALENTS = ROOT / "scripts" / "mutation_equivalents.toml"

_POSTGRES_TESTS = (
    "tests/test_postgres.py",
    *("--deselect", "tests/test_postgres.py::test_the_package_imports_and_runs_without_asyncpg"),
)

_CHAIN_TESTS = (
    "tests/test_chain.py",
    # A chain's span: its steps, its length and its failure.
    "tests/test_telemetry.py::test_a_chain_is_a_span_holding_its_steps",
    "tests/test_telemetry.py::test_a_failed_chain_span_names_its_steps_failure",
)

#: module of kling_async -> the tests that are its own (its docstring examples are added),
#: as pytest arguments.
MODULES: dict[str, tuple[str, ...]] = {
    "errors": ("tests/test_errors.py",),
    "policies": ("tests/test_policies.py",),
    "_ratelimit": ("tests/test_ratelimit.py",),
    # test_secrets reads traceback locals, which mutmut's trampolines fill: left out. The
    # transport's logs and traces are checked in test_logs and test_telemetry.
    "_transport": (
        "tests/test_transport.py",
        "tests/test_client.py",
        "tests/test_logs.py",
        "tests/test_telemetry.py",
        # A fresh interpreter without opentelemetry: seconds, and no transport rule in it.
        *("--deselect", "tests/test_telemetry.py::test_the_package_runs_without_opentelemetry"),
    ),
    "journal": ("tests/test_journal.py",),
    "_journal_key": ("tests/test_journal.py",),
    "_journal_entry": ("tests/test_journal.py",),
    "_journal_file": ("tests/test_journal.py",),
    "batch": (
        "tests/test_batch.py",
        "tests/test_batch_journal.py",
        # Soak tests of hundreds of tasks: seconds each, and the rules they check have
        # tests of their own above.
        *("--deselect", "tests/test_batch.py::test_500_extensions_at_concurrency_20"),
        *("--deselect", "tests/test_batch.py::test_1303_storm_is_survived"),
        *("--deselect", "tests/test_batch.py::test_faults_lose_nothing"),
        # The batch's span, a chain's steps within the span the batch is given, its slots'
        # waits, and a window shared over a database.
        "tests/test_telemetry.py::test_a_faulty_batch_traced_and_counted",
        "tests/test_telemetry.py::test_a_chain_is_a_span_holding_its_steps",
        "tests/test_telemetry.py::test_slots_of_the_batch_cap_are_counted_held_and_waited_for",
        "tests/test_telemetry.py::test_waits_for_the_accounts_slots_are_recorded",
        "tests/test_postgres.py::test_a_1303_halves_the_window_of_every_process_once_and_successes_widen_it",
        "tests/test_postgres.py::test_a_batch_of_two_processes_narrows_the_shared_window_on_1303",
    ),
    "chain": _CHAIN_TESTS,
    "_chain_plan": _CHAIN_TESTS,
    "_chain_run": _CHAIN_TESTS,
    # Against the local server (each test makes and drops its own schema); the quota's own
    # arithmetic is SQL (postgres/_schema.py), which mutmut does not mutate. Left out: a
    # fresh interpreter without asyncpg (seconds, and no coordination rule in it).
    "postgres.journal": _POSTGRES_TESTS,
    "postgres._rate": _POSTGRES_TESTS,
}

# mutmut's exit codes of a mutant's test run, by what they mean here. A timeout is a mutant
# the tests noticed (it hung them); "no tests" is a gap like a survivor.
_KILLED = {1, 3, 24, -24, 36, 152, 255}
_SURVIVED = {0, 5, 33}


@dataclass
class Mutant:
    name: str
    function: str
    before: str
    after: str


@dataclass
class Result:
    module: str
    tried: int = 0
    killed: int = 0
    equivalent: list[tuple[Mutant, str]] = field(default_factory=list)
    accepted: list[tuple[Mutant, str]] = field(default_factory=list)
    survivors: list[Mutant] = field(default_factory=list)
    other: Counter[str] = field(default_factory=Counter)
    run: dict[str, Any] = field(default_factory=dict)

    @property
    def score(self) -> float:
        counted = self.tried - len(self.equivalent)
        return 100.0 * (counted - len(self.accepted) - len(self.survivors)) / max(counted, 1)


Known = dict[tuple[str, str, str], tuple[str, str]]
#: (module, functions, kind, reason) of rules: a change of letter case only, outside quotes.
CaseRules = list[tuple[str, frozenset[str], str, str]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", metavar="module", help=", ".join(MODULES))
    parser.add_argument("--workers", type=int, default=2, help="parallel test runs (default 2)")
    parser.add_argument("--write", type=Path, help="also write the table to this Markdown file")
    parser.add_argument(
        "--reuse", action="store_true", help="read the last run's results, run nothing"
    )
    parser.add_argument(
        "--again",
        action="store_true",
        help="run only the last run's survivors again, against the current tests",
    )
    args = parser.parse_args()
    unknown = set(args.modules) - set(MODULES)
    if unknown:
        parser.error(f"no such module: {', '.join(sorted(unknown))} (known: {', '.join(MODULES)})")
    known, case_rules = _load_known()
    results = []
    for module in args.modules or list(MODULES):
        if args.again:
            _run_again(module, args.workers)
        elif not args.reuse:
            _run(module, args.workers)
        result = _collect(module, known, case_rules)
        results.append(result)
        print(_module_line(result), flush=True)
    tables = _tables(results)
    print(_render(tables))
    if args.write:
        previous = args.write.read_text() if args.write.exists() else ""
        args.write.write_text(_document(_render(_merged(previous, tables))))
    return 0 if all(not r.survivors for r in results) else 1


def _run(module: str, workers: int) -> None:
    """Copy the code and tests into the module's own folder and let mutmut work there."""
    place = WORK / module
    shutil.rmtree(place, ignore_errors=True)
    place.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", ".hypothesis")
    shutil.copytree(ROOT / "kling_async", place / "kling_async", ignore=ignore)
    shutil.copytree(ROOT / "tests", place / "tests", ignore=ignore)
    _configure(place, module)
    seconds = _mutmut(place, module, workers, [])
    _write_run(place, {"seconds": seconds, "again": 0})


def _configure(place: Path, module: str) -> None:
    """Tell mutmut in `place` which file to mutate and which tests are the module's own."""
    examples = f"tests/test_doctests.py::test_docstring_examples_hold[kling_async.{module}]"
    tests = ", ".join(json.dumps(test) for test in (*MODULES[module], examples))
    (place / "pyproject.toml").write_text(
        (ROOT / "pyproject.toml").read_text()
        + "\n[tool.mutmut]\n"
        + 'source_paths = ["kling_async"]\n'
        + f'only_mutate = ["{_source(module)}"]\n'
        + f"pytest_add_cli_args_test_selection = [{tests}]\n"
        # A mutant can make a test wait forever without using the processor, which mutmut's
        # own limit (processor time) never ends: a test still running after a minute fails.
        + 'pytest_add_cli_args = ["-p", "no:cacheprovider", "-x", "-q", "--timeout=60"]\n'
    )


def _run_again(module: str, workers: int) -> None:
    """Run the mutants the last run of `module` did not kill once more, with today's tests."""
    place = WORK / module
    copy = place / _source(module)
    if not copy.exists():
        raise SystemExit(f"{module} has no earlier run to repeat; run it in full first.")
    if copy.read_bytes() != (ROOT / _source(module)).read_bytes():
        raise SystemExit(f"{_source(module)} changed since its last run; run it in full.")
    ignore = shutil.ignore_patterns("__pycache__", ".hypothesis")
    for folder in ("kling_async", "tests"):
        shutil.rmtree(place / folder)
        shutil.copytree(ROOT / folder, place / folder, ignore=ignore)
    _configure(place, module)  # the module's own tests as `MODULES` names them now
    # Which tests reach which function is learnt again: an edited test may reach more.
    (place / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
    codes = _exit_codes(module)
    names = [name for name, code in codes.items() if code is None or code not in _KILLED]
    run = _read_run(place)
    if names:
        run["seconds"] += _mutmut(place, module, workers, names)
    _write_run(place, {**run, "again": run["again"] + 1})


def _mutmut(place: Path, module: str, workers: int, names: list[str]) -> float:
    """Run mutmut in `place` (on `names` only, when given); the seconds it took."""
    mutmut = Path(sys.executable).with_name("mutmut")
    command = ["nice", "-n", "19", str(mutmut), "run", "--max-children", str(workers), *names]
    started = time.monotonic()
    with (place / "mutmut.log").open("w") as log:
        done = subprocess.run(command, cwd=place, stdout=log, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"mutmut failed on {module}; see {place / 'mutmut.log'}")
    return time.monotonic() - started


def _write_run(place: Path, run: dict[str, Any]) -> None:
    """Record when, on which commit and how long `place`'s results were made."""
    finished = f"{datetime.now(UTC):%Y-%m-%d %H:%M}"
    (place / "run.json").write_text(json.dumps({**run, "finished": finished, **_commit()}))


def _read_run(place: Path) -> dict[str, Any]:
    if (place / "run.json").exists():
        run: dict[str, Any] = json.loads((place / "run.json").read_text())
        return run
    # A run made before run.json: its duration alone, dated by its results.
    seconds = place / "seconds"
    meta = place / "mutants" / f"{_source(place.name)}.meta"
    finished = datetime.fromtimestamp(meta.stat().st_mtime, UTC) if meta.exists() else None
    return {
        "seconds": float(seconds.read_text()) if seconds.exists() else 0.0,
        "again": 0,
        "finished": f"{finished:%Y-%m-%d %H:%M}" if finished else "?",
        **_commit(),
    }


def _commit() -> dict[str, Any]:
    """The checkout's commit, and whether its code or tests have uncommitted changes."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "kling_async", "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {"commit": commit, "dirty": bool(dirty)}


def _source(module: str) -> str:
    """The file of `module`, a name under kling_async (dotted within a subpackage)."""
    return f"kling_async/{module.replace('.', '/')}.py"


def _exit_codes(module: str) -> dict[str, int | None]:
    mutated = WORK / module / "mutants" / _source(module)
    codes: dict[str, int | None] = json.loads(Path(f"{mutated}.meta").read_text())[
        "exit_code_by_key"
    ]
    return codes


def _collect(module: str, known: Known, case_rules: CaseRules) -> Result:
    """Count the module's mutants by fate and sort its survivors against the known list."""
    mutated = WORK / module / "mutants" / _source(module)
    codes = _exit_codes(module)
    functions = _functions(mutated)
    result = Result(module, run=_read_run(WORK / module))
    for name, code in sorted(codes.items(), key=lambda item: _natural(item[0])):
        if code is None:  # the run was cut short before this one
            result.other["not run"] += 1
            continue
        result.tried += 1
        if code in _KILLED:
            result.killed += 1
            continue
        mutant = _describe(name, functions)
        if code not in _SURVIVED:
            result.other[f"exit {code}"] += 1
        verdict = known.get((module, mutant.before, mutant.after)) or _by_case(
            module, mutant, case_rules
        )
        if verdict is None:
            result.survivors.append(mutant)
        elif verdict[0] == "equivalent":
            result.equivalent.append((mutant, verdict[1]))
        else:
            result.accepted.append((mutant, verdict[1]))
    return result


def _natural(name: str) -> tuple[str, int]:
    stem, _, number = name.rpartition("__mutmut_")
    return stem, int(number) if number.isdigit() else -1


def _functions(mutated: Path) -> dict[str, list[str]]:
    """Every function of mutmut's copy of a module (originals and mutants), as source lines."""
    source = mutated.read_text()
    lines = source.splitlines()
    found: dict[str, list[str]] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and "__mutmut_" in node.name:
            body = lines[node.lineno - 1 : node.end_lineno]
            found[node.name] = [body[0].replace(node.name, "", 1), *body[1:]]
    return found


def _describe(name: str, functions: dict[str, list[str]]) -> Mutant:
    """The mutant's function and the lines it changes (before and after, stripped)."""
    mangled = name.rsplit(".", 1)[-1]
    stem = mangled.rpartition("__mutmut_")[0]
    original, changed = functions.get(f"{stem}__mutmut_orig", []), functions.get(mangled, [])
    removed: list[str] = []
    added: list[str] = []
    matcher = difflib.SequenceMatcher(None, original, changed, autojunk=False)
    for tag, i, j, k, m in matcher.get_opcodes():
        if tag != "equal":
            removed += [line.strip() for line in original[i:j]]
            added += [line.strip() for line in changed[k:m]]
    return Mutant(name, _readable(stem), " / ".join(removed), " / ".join(added))


def _readable(stem: str) -> str:
    if stem.startswith("xǁ"):  # a method: xǁClassǁmethod
        return ".".join(part for part in stem[2:].split("ǁ") if part)
    return stem[2:] if stem.startswith("x_") else stem


def _load_known() -> tuple[Known, CaseRules]:
    """Mutants judged by a person: one by one, (module, line before, line after) -> (kind,
    reason); and rules for changes of letter case only in the named functions."""
    known: Known = {}
    case_rules: CaseRules = []
    for entry in tomllib.loads(EQUIVALENTS.read_text()).get("mutant", []):
        kind = entry["kind"]
        if kind not in ("equivalent", "accepted"):
            raise SystemExit(f"{EQUIVALENTS.name}: unknown kind {kind!r} in {entry}")
        if "case_only_in" in entry:
            functions = frozenset(entry["case_only_in"])
            case_rules.append((entry["module"], functions, kind, entry["reason"]))
        else:
            known[(entry["module"], entry["before"], entry["after"])] = (kind, entry["reason"])
    return known, case_rules


def _by_case(module: str, mutant: Mutant, rules: CaseRules) -> tuple[str, str] | None:
    """The rule under which `mutant` only changes the letter case of words outside quotes."""
    if mutant.before == mutant.after or _unquoted_lower(mutant.before) != _unquoted_lower(
        mutant.after
    ):
        return None
    for rule_module, functions, kind, reason in rules:
        if rule_module == module and mutant.function in functions:
            return kind, reason
    return None


def _unquoted_lower(line: str) -> str:
    """`line` in lower case, except within single quotes (SQL's string literals)."""
    parts = line.split("'")
    return "'".join(part if index % 2 else part.lower() for index, part in enumerate(parts))


def _module_line(result: Result) -> str:
    odd = "".join(f", {count} {what}" for what, count in sorted(result.other.items()))
    return (
        f"{result.module}: {result.killed}/{result.tried - len(result.equivalent)} killed "
        f"({result.score:.1f} %), {len(result.survivors)} unexplained survivors{odd}, "
        f"{result.run['seconds'] / 60:.1f} min"
    )


SECTIONS = ("Survivors (real gaps)", "Accepted survivors", "Equivalent mutants")
#: section -> module -> its table rows; "summary" is the table of scores.
Tables = dict[str, dict[str, list[str]]]


def _tables(results: list[Result]) -> Tables:
    tables: Tables = {"summary": {}, **{title: {} for title in SECTIONS}}
    for r in results:
        again = " (survivors again)" if r.run["again"] else ""
        dirty = " + changes" if r.run["dirty"] else ""
        tables["summary"][r.module] = [
            f"| `{r.module}` | {r.tried + r.other['not run']} | {r.other['not run']} | "
            f"{len(r.equivalent)} | {r.killed} | {len(r.accepted)} | {len(r.survivors)} | "
            f"{r.score:.1f} % | {r.run['seconds'] / 60:.1f} | {r.run['finished']}{again} | "
            f"`{r.run['commit']}`{dirty} |"
        ]
        judged = (
            [(m, "") for m in r.survivors],
            r.accepted,
            r.equivalent,
        )
        for title, mutants in zip(SECTIONS, judged, strict=True):
            tables[title][r.module] = [
                f"| `{r.module}` | `{m.function}` | {_code(m.before)} | {_code(m.after)} | {why} |"
                for m, why in mutants
            ]
    return tables


def _render(tables: Tables) -> str:
    lines = [
        "| module | mutants | not run | equivalent | killed | accepted | survived | score "
        "| minutes | run (UTC) | commit |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
        *(row for module in MODULES for row in tables["summary"].get(module, [])),
        "",
        "Score = killed / (mutants tried - equivalent); accepted survivors count against it. "
        'A timeout counts as killed. "Not run": mutants a run cut short never tried. '
        '"Survivors again": after the full run, the mutants it did not kill were run once more '
        "against the tests of the commit shown (the module itself unchanged).",
    ]
    for title in SECTIONS:
        rows = [row for module in MODULES for row in tables[title].get(module, [])]
        lines += ["", f"### {title}", ""]
        if rows:
            lines += ["| module | function | before | after | why |", "|---|---|---|---|---|"]
        lines += rows or ["None."]
    return "\n".join(lines)


def _merged(previous: str, tables: Tables) -> Tables:
    """The tables of the `previous` document, with the modules of `tables` replaced."""
    merged: Tables = {"summary": {}, **{title: {} for title in SECTIONS}}
    section = "summary"
    for line in previous.splitlines():
        if line.startswith("### "):
            section = line[4:]
        elif line.startswith("| `") and section in merged:
            merged[section].setdefault(line.split("`")[1], []).append(line)
    for title, rows in merged.items():
        for module in tables["summary"]:
            rows[module] = tables[title].get(module, [])
    return merged


def _code(text: str) -> str:
    text = text.replace("|", "\\|")
    return f"`{text}`" if text else "(removed)"


def _document(report: str) -> str:
    return (
        "# Mutation testing of the money paths\n\n"
        "Each module is mutated alone and run against its own tests only (see `MODULES` in "
        "`scripts/mutation.py`); judged survivors and their reasons are in "
        "`scripts/mutation_equivalents.toml`. Each row is its module's latest run, made with "
        "`python scripts/mutation.py MODULE --write docs/mutation.md` on "
        f"{os.cpu_count()} cores; its date and commit are in the row.\n\n" + report + "\n"
    )


if __name__ == "__main__":
    sys.exit(main())
