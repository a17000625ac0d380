"""Mutation testing of the modules that decide what is acquired: do the tests notice a wrong line?

    .venv/bin/python -m benchmarks.mutation --module jal/acquire/sampling.py [--max-mutants N] [--out PREFIX]

Each mutant is one small change to the module (a comparison or operator swapped, a number
or flag changed, a condition negated, a call statement removed, ...). A mutant is killed
when a test fails on it, times out when its tests run past the limit (counted as killed,
reported apart), and survives when every test passes: a line the tests would let break.

Everything runs in a scratch copy of the repository (its tracked and untracked, not
ignored, files; or `--rev REV`, a commit), never in the tree itself:

1. The module's test files (`related_tests`: `MAPPING` and any test file importing the
   module) run once, unmutated, recording which test executes which line of the module
   (JAX's caches are cleared before every test, so that a test that calls a jitted
   function traces it again and is seen to use its lines). A test that fails here is left
   out of every mutant's run and listed in the report. This run is cached under
   ~/.cache/jal-mutation, and serves every `--module` given at once.
2. Each mutant runs `pytest -x -q -p no:cacheprovider` on only the tests that execute a
   line of the mutated code, fastest first, under a timeout of
   `--timeout-factor` x their unmutated time + `--timeout-slack` seconds. A default value
   runs the tests that execute its function's body; other code that runs at import
   (module and class bodies) every mapped test. A mutant of a line no mapped test executes
   survives without a run ("not covered").
3. `PREFIX.json` (every mutant, its status and time) and `PREFIX.md` (the counts and the
   survivors, file:line and the change) are written after every mutant, so a stopped run
   (`--time-budget`, `--stop-at`) keeps its results; `--resume` runs only the rest.

Mutants listed in `benchmarks/mutation/equivalent.json` (id: the reason it cannot change
behaviour) are not run, and count neither as killed nor as survived. The score is
(killed + timed out) / (killed + timed out + survived + not covered). JAX's persistent
compilation cache (~/.cache/jal-mutation/jax) spares recompiling what a mutant leaves alone.

    .venv/bin/python -m benchmarks.mutation --list --module jal/filtering.py   # the mutants, not run
    .venv/bin/python -m benchmarks.mutation --summary                           # SUMMARY.md of all reports
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import math
import os
import random
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "benchmarks" / "mutation"
EQUIVALENT = REPORTS / "equivalent.json"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jal-mutation"

# Module -> the test files that exercise it: those that import it (directly, or through the
# package that re-exports it) and the end-to-end tests of its feature. The first is the
# module's own test file.
MAPPING: dict[str, tuple[str, ...]] = {
    "jal/loop.py": (
        "tests/test_loop.py",
        "tests/test_api_validation.py",
        "tests/test_learner.py",
        "tests/test_chunk_size.py",
        "tests/test_store.py",
        "tests/test_pinned.py",
        "tests/test_resume.py",
        "tests/test_streamed.py",
        "tests/test_sharding.py",
        "tests/test_bad_inputs.py",
    ),
    "jal/acquire/__init__.py": (
        "tests/test_loop.py",
        "tests/test_api_validation.py",
        "tests/test_estimator_properties.py",
        "tests/test_learner.py",
    ),
    "jal/acquire/sampling.py": ("tests/test_acquisition.py", "tests/test_api_validation.py", "tests/test_loop.py"),
    "jal/acquire/batchbald.py": ("tests/test_batchbald.py", "tests/test_api_validation.py", "tests/test_loop.py"),
    "jal/acquire/epig.py": ("tests/test_epig.py", "tests/test_api_validation.py", "tests/test_loop.py"),
    "jal/acquire/estimators.py": (
        "tests/test_estimators.py",
        "tests/test_estimator_properties.py",
        "tests/test_batchbald.py",
        "tests/test_scoring.py",
        "tests/test_loop.py",
        "tests/test_learner.py",
        "tests/test_train.py",
    ),
    "jal/filtering.py": ("tests/test_filtering.py", "tests/test_api_validation.py"),
    "jal/train.py": (
        "tests/test_train.py",
        "tests/test_config.py",
        "tests/test_api_validation.py",
        "tests/test_loop.py",
        "tests/test_learner.py",
        "tests/test_sharding.py",
    ),
    "jal/data/dataset.py": ("tests/test_api_validation.py", "tests/test_data.py", "tests/test_bad_inputs.py"),
    "jal/store.py": (
        "tests/test_store.py",
        "tests/test_resume.py",
        "tests/test_run_dir_checks.py",
        "tests/test_fuzz_readers.py",
        "tests/test_commands.py",
        "tests/test_kill.py",
        "tests/test_seeds.py",
        "tests/test_stopping.py",
        "tests/test_distributed.py",
        "tests/test_streamed.py",
        "tests/test_bad_inputs.py",
    ),
}


def related_tests(tree: Path, module: str) -> list[str]:
    """`MAPPING[module]`, then any other test file in `tree` that imports the module by name (a test added since)."""
    dotted = module.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
    package, _, name = dotted.rpartition(".")
    pattern = re.compile(rf"\b{re.escape(dotted)}\b|from {re.escape(package)} import [^\n]*\b{name}\b")
    listed = [t for t in MAPPING[module] if (tree / t).exists()]
    found = [
        str(path.relative_to(tree))
        for path in sorted((tree / "tests").glob("test_*.py"))
        if str(path.relative_to(tree)) not in listed and pattern.search(path.read_text(errors="replace"))
    ]
    return listed + found


PYTEST_FLAGS = ("-x", "-q", "-p", "no:cacheprovider")
KILLED_EXIT_CODES = (1, 2)  # a test failed; collection failed (the mutant breaks an import)
STATUSES = ("killed", "timeout", "survived", "not covered", "equivalent", "error")


# --------------------------------------------------------------------------- mutants


@dataclass
class Mutant:
    id: str
    line: int
    end_line: int
    function: str  # qualified name of the enclosing function, "" at import time
    operator: str
    original: str
    replacement: str
    start: int  # byte offsets into the source
    end: int
    used_in: list[int] | None  # first and last line whose execution runs the mutated code; None: at import
    status: str = "pending"
    seconds: float | None = None  # wall time of its pytest run
    cpu_seconds: float | None = None  # CPU time of it (user + system), what a loaded machine does not inflate
    tests_run: int | None = None
    detail: str = ""

    def describe(self) -> str:
        return f"`{_short(self.original)}` -> `{_short(self.replacement)}`"


def _short(text: str, limit: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


_COMPARE_SWAPS = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
_NEGATED_BY_SWAP = (ast.Eq, ast.NotEq, ast.Is, ast.IsNot, ast.In, ast.NotIn)
_BINOP_SWAPS = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Div,
    ast.Mod: ast.FloorDiv,
    ast.Pow: ast.Mult,
    ast.BitAnd: ast.BitOr,
    ast.BitOr: ast.BitAnd,
    ast.BitXor: ast.BitOr,
    ast.LShift: ast.RShift,
    ast.RShift: ast.LShift,
}
_QUIET_CALLS = {"warn", "print", "write", "info", "debug", "warning", "error", "echo", "JalError"}


def _docstring_nodes(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                found.add(id(first.value))
    return found


class _Collector(ast.NodeVisitor):
    """Walks the module, proposing (node, operator, replacement source) for each mutation."""

    def __init__(self, tree: ast.Module):
        self.proposals: list[tuple[ast.AST, str, str, str]] = []  # node, operator, replacement, function
        self.stack: list[str] = []
        self.functions: list[str] = []  # qualnames of the enclosing function bodies
        self.docstrings = _docstring_nodes(tree)
        self.quiet_depth = 0  # inside a raise, a warning or a message: strings are messages
        self.default_of: tuple[int, int] | None = None  # the body of the function whose defaults are visited

    def propose(self, node: ast.AST, operator: str, new: ast.AST | str) -> None:
        text = new if isinstance(new, str) else ast.unparse(new)
        function = self.functions[-1] if self.functions else ""
        used_in = (node.lineno, node.end_lineno) if self.functions else self.default_of
        self.proposals.append((node, operator, text, function, used_in))

    # Scopes. Decorators, annotations and defaults are evaluated at import.
    def _visit_function(self, node):
        self.stack.append(node.name)
        self.default_of = (node.body[0].lineno, node.body[-1].end_lineno)  # a default matters where the body runs
        for default in [*node.args.defaults, *[d for d in node.args.kw_defaults if d is not None]]:
            self.visit(default)
        self.default_of = None
        self.functions.append(".".join(self.stack))
        for statement in node.body:
            self.visit(statement)
        self.functions.pop()
        self.stack.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = _visit_function

    def visit_ClassDef(self, node):
        self.stack.append(node.name)
        for statement in node.body:
            self.visit(statement)
        self.stack.pop()

    def visit_AnnAssign(self, node):
        if node.value is not None:
            self.visit(node.value)

    def visit_Assign(self, node):
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return
        self.visit(node.value)

    def visit_ImportFrom(self, node):
        return

    def visit_JoinedStr(self, node):
        return  # f-strings are messages, and their inner positions are unreliable

    def visit_Raise(self, node):
        self.quiet_depth += 1
        self.generic_visit(node)
        self.quiet_depth -= 1

    def visit_Assert(self, node):
        return

    def visit_Call(self, node):
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        quiet = name in _QUIET_CALLS
        self.quiet_depth += quiet
        self.generic_visit(node)
        self.quiet_depth -= quiet

    # Statements.
    def _negate(self, test: ast.expr) -> None:
        if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING":
            return
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            return  # removing the `not` is the same mutant
        if isinstance(test, ast.Compare) and len(test.ops) == 1 and type(test.ops[0]) in _NEGATED_BY_SWAP:
            return  # swapping the comparison is the same mutant
        self.propose(test, "negate condition", ast.UnaryOp(ast.Not(), test))

    def visit_If(self, node):
        self._negate(node.test)
        self.generic_visit(node)

    def visit_IfExp(self, node):
        self._negate(node.test)
        self.generic_visit(node)

    def visit_While(self, node):
        self.generic_visit(node)

    def visit_Expr(self, node):
        if id(node.value) in self.docstrings:
            return
        if isinstance(node.value, ast.Call) and self.functions:
            self.propose(node, "remove call", "pass")
        self.generic_visit(node)

    def visit_AugAssign(self, node):
        swap = _BINOP_SWAPS.get(type(node.op))
        if swap is not None:
            self.propose(node, "swap operator", ast.AugAssign(node.target, swap(), node.value))
        self.propose(node, "augmented to plain assignment", ast.Assign([node.target], node.value, lineno=0))
        self.visit(node.value)

    # Expressions.
    def visit_Compare(self, node):
        for i, op in enumerate(node.ops):
            swap = _COMPARE_SWAPS.get(type(op))
            if swap is not None:
                ops = [*node.ops[:i], swap(), *node.ops[i + 1 :]]
                self.propose(node, "swap comparison", ast.Compare(node.left, ops, node.comparators))
        self.generic_visit(node)

    def visit_BinOp(self, node):
        swap = _BINOP_SWAPS.get(type(node.op))
        if swap is not None:
            self.propose(node, "swap operator", ast.BinOp(node.left, swap(), node.right))
        self.generic_visit(node)

    def visit_BoolOp(self, node):
        swap = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        self.propose(node, "swap and/or", ast.BoolOp(swap, node.values))
        self.generic_visit(node)

    def visit_UnaryOp(self, node):
        if isinstance(node.op, ast.Not | ast.Invert) or (
            isinstance(node.op, ast.USub) and not isinstance(node.operand, ast.Constant)
        ):
            self.propose(node, "remove unary operator", node.operand)
        if isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
            value = node.operand.value
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.propose(node, "change number", ast.Constant(-value + 1))
            return
        self.generic_visit(node)

    def visit_Constant(self, node):
        value = node.value
        if isinstance(value, bool):
            self.propose(node, "flip bool", ast.Constant(not value))
        elif isinstance(value, int | float):
            self.propose(node, "change number", ast.Constant(value + 1))
        elif isinstance(value, str) and id(node) not in self.docstrings and not self.quiet_depth:
            self.propose(node, "change string", ast.Constant(f"XX{value}XX"))


def _atomic(expression: str) -> bool:
    """Whether `expression` can replace an expression anywhere without parentheses."""
    body = ast.parse(expression, mode="eval").body
    return isinstance(body, ast.Name | ast.Constant)  # a negative number parses as a unary minus


def _line_offsets(source: bytes) -> list[int]:
    offsets, position = [0], 0
    for line in source.splitlines(keepends=True):
        position += len(line)
        offsets.append(position)
    return offsets


def generate(path: Path, module: str) -> list[Mutant]:
    """Every mutant of the module at `path`, in source order, with ids stable under edits elsewhere."""
    source = path.read_bytes()
    tree = ast.parse(source)
    offsets = _line_offsets(source)
    collector = _Collector(tree)
    collector.visit(tree)
    mutants, seen = [], {}
    for node, operator, replacement, function, used_in in collector.proposals:
        start = offsets[node.lineno - 1] + node.col_offset
        end = offsets[node.end_lineno - 1] + node.end_col_offset
        original = source[start:end].decode()
        if not isinstance(node, ast.stmt) and not _atomic(replacement):
            replacement = f"({replacement})"
        key = (module, function, operator, " ".join(original.split()), replacement)
        occurrence = seen[key] = seen.get(key, -1) + 1
        digest = hashlib.sha1(repr((*key, occurrence)).encode()).hexdigest()[:10]
        mutants.append(
            Mutant(
                f"{_slug(module)}-{digest}",
                node.lineno,
                node.end_lineno,
                function,
                operator,
                original,
                replacement,
                start,
                end,
                list(used_in) if used_in else None,
            )
        )
    mutants.sort(key=lambda m: (m.start, m.end, m.id))
    return mutants


def _slug(module: str) -> str:
    return module.removeprefix("jal/").removesuffix(".py").removesuffix("/__init__").replace("/", "-")


def mutated_source(source: bytes, mutant: Mutant) -> bytes:
    return source[: mutant.start] + mutant.replacement.encode() + source[mutant.end :]


def _compiles(source: bytes) -> bool:
    try:
        compile(source, "<mutant>", "exec")
    except SyntaxError:
        return False
    return True


# --------------------------------------------------------------------------- scratch copy


def scratch_copy(destination: Path, rev: str | None) -> None:
    """The repository's files (or those of commit `rev`) under `destination`; git's state is only read."""
    if rev:
        archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(destination)], input=archive, check=True)
    else:
        _copy_working_tree(destination)
    (destination / "benchmarks").mkdir(exist_ok=True)
    shutil.copy2(Path(__file__), destination / "benchmarks" / "mutation.py")  # the plugin below, as run


def _copy_working_tree(destination: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def _environment(scratch: Path, jax_cache: bool) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(scratch),  # ahead of the editable install of the real tree
        PYTHONDONTWRITEBYTECODE="1",  # a mutant of the same size and mtime must not load a stale .pyc
    )
    if jax_cache:  # keyed by the compiled program: a mutant that changes one recompiles only that one
        env.update(
            JAX_COMPILATION_CACHE_DIR=str(CACHE / "jax"),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        )
    return env


# --------------------------------------------------------------------------- the line-recording pytest plugin
# Loaded into the unmutated run as `-p benchmarks.mutation`, with MUTATION_TRACE_FILES (the
# modules' absolute paths, joined by os.pathsep) and MUTATION_TRACE_OUT (where the JSON goes).

_trace_files = set(filter(None, os.environ.get("MUTATION_TRACE_FILES", "").split(os.pathsep)))
_context = ["session"]
_lines: dict[str, dict[str, set[int]]] = {}  # file -> context -> lines
_durations: dict[str, float] = {}
_outcomes: dict[str, str] = {}


def _tracer(frame, event, arg):
    if frame.f_code.co_filename not in _trace_files:
        return None
    lines = _lines.setdefault(frame.f_code.co_filename, {}).setdefault(_context[0], set())
    lines.add(frame.f_lineno)

    def local(frame, event, arg):
        lines.add(frame.f_lineno)
        return local

    return local


if _trace_files:
    import pytest

    def pytest_configure(config):
        import threading

        sys.settrace(_tracer)
        threading.settrace(_tracer)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_make_collect_report(collector):
        previous = _context[0]
        path = getattr(collector, "path", None)
        if path is not None and path.suffix == ".py":
            _context[0] = "collect:" + os.path.relpath(path, os.getcwd())
            sys.settrace(_tracer)
        yield
        _context[0] = previous

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_setup(item):
        jax = sys.modules.get("jax")
        if jax is not None:
            jax.clear_caches()  # every test traces what it calls, and is seen to run its lines
        _context[0] = "setup:" + item.nodeid.split("::")[0]
        sys.settrace(_tracer)
        yield

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(item):
        _context[0] = "test:" + item.nodeid
        sys.settrace(_tracer)
        yield
        _context[0] = "setup:" + item.nodeid.split("::")[0]

    def pytest_runtest_logreport(report):
        _durations[report.nodeid] = _durations.get(report.nodeid, 0.0) + report.duration
        if report.failed:
            _outcomes[report.nodeid] = "failed"
        elif _outcomes.get(report.nodeid) != "failed" and (report.when == "call" or report.skipped):
            _outcomes[report.nodeid] = report.outcome

    def pytest_sessionfinish(session):
        sys.settrace(None)
        lines = {os.path.relpath(f, os.getcwd()): {k: sorted(v) for k, v in c.items()} for f, c in _lines.items()}
        out = {"lines": lines, "durations": _durations, "outcomes": _outcomes}
        Path(os.environ["MUTATION_TRACE_OUT"]).write_text(json.dumps(out))


# --------------------------------------------------------------------------- runs


@dataclass
class Baseline:
    tests: list[str]  # passing tests, fastest first
    failing: list[str]
    durations: dict[str, float]
    test_lines: dict[str, set[int]]  # test id -> lines it executed
    file_lines: dict[str, set[int]]  # test file -> lines executed while collecting it or in its fixtures
    everyone: set[int]  # lines executed at session start (conftest): every test depends on them
    seconds: float
    startup: float = 0.0
    cpu_seconds: float = 0.0  # of the whole unmutated run, all modules


def _baseline_key(scratch: Path, modules: list[str], test_files: list[str], pytest_args: list[str]) -> str:
    """What the unmutated run's result depends on: the code, the tests, the arguments, the interpreter."""
    digest = hashlib.sha1(repr((modules, test_files, pytest_args, sys.version, sys.executable)).encode())
    files = [*scratch.glob("jal/**/*.py"), *(scratch / t for t in test_files), *scratch.glob("tests/**/conftest.py")]
    for path in sorted([*files, scratch / "pyproject.toml"]):
        digest.update(str(path.relative_to(scratch)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def run_baselines(
    scratch: Path,
    tests_by_module: dict[str, list[str]],
    pytest_args: list[str],
    *,
    jax_cache: bool,
    reuse: bool = True,
    deadline: float = math.inf,
) -> dict[str, Baseline]:
    """The unmutated tests of all modules in one run, recording which lines of each module every test executes.

    Cached under CACHE, keyed by `_baseline_key`.
    """
    modules = sorted(tests_by_module)
    test_files = list(dict.fromkeys(t for m in modules for t in tests_by_module[m]))
    key = _baseline_key(scratch, modules, test_files, pytest_args)
    cached = CACHE / f"baseline-{'+'.join(_slug(m) for m in modules)}-{key}.json"
    if reuse and cached.exists():
        data = json.loads(cached.read_text())
        print(f"unmutated run reused from {cached}", flush=True)
    else:
        print(f"unmutated run of {len(test_files)} test files", flush=True)
        out = scratch / ".mutation-baseline.json"
        env = _environment(scratch, jax_cache)
        env.update(MUTATION_TRACE_FILES=os.pathsep.join(str(scratch / m) for m in modules), MUTATION_TRACE_OUT=str(out))
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "benchmarks.mutation",
            *pytest_args,
            *test_files,
        ]
        start, before = time.monotonic(), _children_cpu()
        try:
            result = subprocess.run(
                command,
                cwd=scratch,
                env=env,
                capture_output=True,
                text=True,
                timeout=None if deadline == math.inf else max(1.0, deadline - time.time()),
            )
        except subprocess.TimeoutExpired:
            raise SystemExit("stopped at --stop-at, in the unmutated run") from None
        if not out.exists():
            raise SystemExit(f"the unmutated tests did not finish (exit {result.returncode}):\n{result.stdout[-3000:]}")
        data = {
            **json.loads(out.read_text()),
            "seconds": time.monotonic() - start,
            "cpu_seconds": _children_cpu() - before,
        }
        CACHE.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(data))
    startup = max(0.0, data["seconds"] - sum(data["durations"].values()))
    baselines = {}
    for module in modules:
        if not data["lines"].get(module):
            raise SystemExit(f"the tests never executed {module} of the scratch copy: is another copy imported?")
        lines = {k: set(v) for k, v in data["lines"][module].items()}
        files = set(tests_by_module[module])
        outcomes = {t: o for t, o in data["outcomes"].items() if t.split("::")[0] in files}
        durations = {t: data["durations"].get(t, 0.0) for t in outcomes}
        passing = [t for t, outcome in outcomes.items() if outcome == "passed"]
        file_lines: dict[str, set[int]] = {}
        for context, executed in lines.items():
            if context.startswith(("collect:", "setup:")):
                file_lines.setdefault(context.split(":", 1)[1], set()).update(executed)
        baselines[module] = Baseline(
            tests=sorted(passing, key=lambda t: durations[t]),
            failing=sorted(t for t, outcome in outcomes.items() if outcome == "failed"),
            durations=durations,
            test_lines={k.split(":", 1)[1]: v for k, v in lines.items() if k.startswith("test:")},
            file_lines=file_lines,
            everyone=lines.get("session", set()),
            seconds=sum(durations.values()) + startup,
            startup=startup,
            cpu_seconds=data.get("cpu_seconds", 0.0),
        )
    return baselines


def tests_for(mutant: Mutant, baseline: Baseline) -> list[str]:
    """The passing tests whose outcome the mutated code can change, fastest first."""
    if mutant.used_in is None:  # module or class body: whatever imports the module
        return list(baseline.tests)
    span = set(range(mutant.used_in[0], mutant.used_in[1] + 1))
    if span & baseline.everyone:
        return list(baseline.tests)
    files = {f for f, lines in baseline.file_lines.items() if span & lines}
    return [t for t in baseline.tests if t.split("::")[0] in files or span & baseline.test_lines.get(t, set())]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_mutant(
    scratch: Path,
    module: str,
    source: bytes,
    mutant: Mutant,
    tests: list[str],
    timeout: float,
    pytest_args: list[str],
    env: dict[str, str],
    retried: bool = False,
) -> None:
    target = scratch / module
    target.write_bytes(mutated_source(source, mutant))
    command = [sys.executable, "-m", "pytest", *PYTEST_FLAGS, *pytest_args, *tests]
    start, before = time.monotonic(), _children_cpu()
    process = subprocess.Popen(
        command,
        cwd=scratch,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
        code = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # pytest and whatever it started
        output, _ = process.communicate()
        code = None
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    finally:
        target.write_bytes(source)
    mutant.seconds = round(time.monotonic() - start, 2)
    mutant.cpu_seconds = round(_children_cpu() - before, 2)
    mutant.tests_run = len(tests)
    if code is None:
        mutant.status, mutant.detail = "timeout", f"no result after {timeout:.0f} s"
    elif code == 0:
        mutant.status, mutant.detail = "survived", ""
    elif code in KILLED_EXIT_CODES:
        mutant.status = "killed"
        failed = [line for line in output.splitlines() if line.startswith(("FAILED ", "ERROR "))]
        mutant.detail = _short(failed[0], 160) if failed else f"exit {code}"
    elif code == 4 and "not found" in output and not retried:
        # The mutant renamed a parametrized test (a string in a list the tests parametrize over): run whole files.
        files = list(dict.fromkeys(t.split("::")[0] for t in tests))
        seconds, cpu_seconds = mutant.seconds, mutant.cpu_seconds
        run_mutant(scratch, module, source, mutant, files, timeout, pytest_args, env, retried=True)
        mutant.seconds, mutant.cpu_seconds = mutant.seconds + seconds, mutant.cpu_seconds + cpu_seconds
    else:
        mutant.status, mutant.detail = "error", f"pytest exit {code}: {_short(output[-300:], 300)}"


# --------------------------------------------------------------------------- reports


def load_equivalent(module: str) -> dict[str, str]:
    if not EQUIVALENT.exists():
        return {}
    return json.loads(EQUIVALENT.read_text()).get(module, {})


def counts(mutants: list[Mutant]) -> dict[str, int]:
    tally = {status: 0 for status in (*STATUSES, "pending")}
    for mutant in mutants:
        tally[mutant.status] += 1
    return tally


def score(tally: dict[str, int]) -> float | None:
    done = tally["killed"] + tally["timeout"] + tally["survived"] + tally["not covered"]
    return None if done == 0 else (tally["killed"] + tally["timeout"]) / done


@dataclass
class Report:
    module: str
    source_sha1: str
    tests: list[str]
    mutants: list[Mutant]
    generated: int
    sampled: bool
    failing_tests: list[str] = field(default_factory=list)
    baseline_seconds: float = 0.0
    baseline_cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    revision: str = ""
    started: str = ""
    pytest_args: str = ""  # the extra pytest arguments of the runs, e.g. "-m 'not slow'"


def write_report(report: Report, prefix: Path) -> None:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tally = counts(report.mutants)
    data = {**asdict(report), "counts": tally, "score": score(tally)}
    for mutant in data["mutants"]:
        del mutant["start"], mutant["end"], mutant["used_in"]
    prefix.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    prefix.with_suffix(".md").write_text(_markdown(report, tally))


def _markdown(report: Report, tally: dict[str, int]) -> str:
    value = score(tally)
    ran = [m for m in report.mutants if m.seconds is not None]
    per_mutant = sum(m.seconds for m in ran) / len(ran) if ran else 0.0
    cpu_per_mutant = sum(m.cpu_seconds or 0.0 for m in ran) / len(ran) if ran else 0.0
    lines = [
        f"# Mutation testing of `{report.module}`",
        "",
        f"Source sha1 `{report.source_sha1[:12]}` ({report.revision}), run {report.started}; "
        f"tests: {', '.join(f'`{t}`' for t in report.tests)}"
        f"{f' (pytest {report.pytest_args})' if report.pytest_args else ''}.",
        "",
        "| generated | chosen | killed | timed out | survived | of them not covered | equivalent | errors "
        "| not run | score |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {report.generated} | {len(report.mutants)}{' (sample)' if report.sampled else ''} | {tally['killed']} "
        f"| {tally['timeout']} | {tally['survived'] + tally['not covered']} | {tally['not covered']} "
        f"| {tally['equivalent']} | {tally['error']} | {tally['pending']} "
        f"| {'-' if value is None else f'{value:.1%}'} |",
        "",
        f"Unmutated tests: {report.baseline_seconds:.0f} s (the traced run, {report.baseline_cpu_seconds:.0f} CPU s "
        f"for all modules traced with it); mutants run: {len(ran)}, {per_mutant:.1f} s each on average "
        f"({cpu_per_mutant:.1f} CPU s); wall time {report.wall_seconds / 60:.1f} min.",
        "",
    ]
    if report.failing_tests:
        lines += ["Tests failing unmutated, left out:", "", *[f"- `{t}`" for t in report.failing_tests], ""]
    survivors = sorted((m for m in report.mutants if m.status in ("survived", "not covered")), key=lambda m: m.line)
    lines += ["## Survivors", ""]
    if not survivors:
        lines += ["None.", ""]
    else:
        lines += ["| where | function | mutation | change | id |", "| --- | --- | --- | --- | --- |"]
        for m in survivors:
            note = " (not covered)" if m.status == "not covered" else ""
            change = m.describe().replace("|", "\\|")
            lines.append(
                f"| `{report.module}:{m.line}` | `{m.function or '(import)'}` | {m.operator}{note} "
                f"| {change} | `{m.id}` |"
            )
        lines.append("")
    errors = [m for m in report.mutants if m.status == "error"]
    if errors:
        lines += ["## Errors (neither killed nor survived)", ""]
        lines += [f"- `{report.module}:{m.line}` `{m.id}` {m.describe()}: {m.detail}" for m in errors] + [""]
    timeouts = [m for m in report.mutants if m.status == "timeout"]
    if timeouts:
        lines += ["## Timed out (counted as killed)", ""]
        lines += [f"- `{report.module}:{m.line}` `{m.id}` {m.describe()}" for m in timeouts] + [""]
    return "\n".join(lines)


def to_kill(data: dict) -> str:
    """How many more mutants must be killed (or shown equivalent) for 90%; "~" where only a part ran."""
    tally = data["counts"]
    considered = data["generated"] - tally["equivalent"]
    done = tally["killed"] + tally["timeout"] + tally["survived"] + tally["not covered"]
    if done == 0:
        return "-"
    if done == considered:
        return str(max(0, math.ceil(0.9 * considered - tally["killed"] - tally["timeout"])))
    return f"~{max(0, math.ceil((0.9 - data['score']) * considered))}"


def summary() -> None:
    rows = [
        "# Mutation testing: summary",
        "",
        "`python -m benchmarks.mutation --summary` writes this from the reports beside it.",
        "",
        "| module | generated | run | killed | timed out | survived | equivalent | errors | not run | score "
        "| to kill for 90% | s per mutant | CPU s per mutant |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for path in sorted(REPORTS.glob("*.json")):
        if path == EQUIVALENT:
            continue
        data = json.loads(path.read_text())
        tally, value = data["counts"], data["score"]
        ran = [m for m in data["mutants"] if m["seconds"] is not None]
        wall = sum(m["seconds"] for m in ran) / len(ran) if ran else 0.0
        cpu = sum(m.get("cpu_seconds") or 0.0 for m in ran) / len(ran) if ran else 0.0
        rows.append(
            f"| [`{data['module']}`]({path.with_suffix('.md').name}) | {data['generated']} "
            f"| {len(data['mutants']) - tally['pending'] - tally['equivalent']} "
            f"| {tally['killed']} | {tally['timeout']} | {tally['survived'] + tally['not covered']} "
            f"| {tally['equivalent']} | {tally['error']} | {tally['pending']} "
            f"| {'-' if value is None else f'{value:.1%}'} | {to_kill(data)} | {wall:.1f} | {cpu:.1f} |"
        )
    (REPORTS / "SUMMARY.md").write_text("\n".join(rows) + "\n")
    print((REPORTS / "SUMMARY.md").read_text())


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--module",
        action="append",
        choices=sorted(MAPPING),
        help="a module to mutate (repeatable: one unmutated run serves them all)",
    )
    parser.add_argument("--max-mutants", type=int, help="run a seeded random sample of this many mutants")
    parser.add_argument("--seed", type=int, default=0, help="of the sample, and of the order mutants run in")
    parser.add_argument("--mutant", action="append", default=[], help="run only this mutant id (repeatable)")
    parser.add_argument("--out", type=Path, help="report prefix (default benchmarks/mutation/<module>)")
    parser.add_argument("--tests", nargs="+", help="these test files instead of related_tests()")
    parser.add_argument("--rev", help="mutate this commit instead of the working tree's files")
    parser.add_argument("--timeout-factor", type=float, default=3.0)
    parser.add_argument("--timeout-slack", type=float, default=60.0, help="seconds on top, for start-up")
    parser.add_argument("--time-budget", type=float, help="stop starting mutants after this many seconds")
    parser.add_argument("--stop-at", help="HH:MM UTC: stop there, the running mutant too (it stays not run)")
    parser.add_argument("--resume", action="store_true", help="keep the results already in the report")
    parser.add_argument(
        "--retry-survivors", action="store_true", help="with --resume: run the survivors again (after new tests)"
    )
    parser.add_argument("--pytest-args", default="", help="extra pytest arguments, e.g. \"-m 'not slow'\"")
    parser.add_argument("--no-jax-cache", action="store_true", help="no persistent compilation cache")
    parser.add_argument("--rerun-baseline", action="store_true", help="do not reuse a cached unmutated run")
    parser.add_argument("--keep-scratch", action="store_true", help="leave the scratch copy (its path is printed)")
    parser.add_argument("--list", action="store_true", help="print the mutants and exit")
    parser.add_argument("--summary", action="store_true", help="write benchmarks/mutation/SUMMARY.md and exit")
    args = parser.parse_args(argv)
    if args.summary:
        summary()
        return 0
    if not args.module:
        parser.error("--module is required")
    pytest_args = shlex.split(args.pytest_args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped run removes its copy and its tests
    modules = list(dict.fromkeys(args.module))
    if args.out and len(modules) > 1:
        parser.error("--out takes one --module")
    clock = time.monotonic()
    deadline = math.inf
    if args.stop_at:
        hour, minute = map(int, args.stop_at.split(":"))
        now = time.time()
        deadline = now - now % 86400 + hour * 3600 + minute * 60
        deadline += 86400 if deadline < now else 0
    with tempfile.TemporaryDirectory(prefix="jal-mutation-") as temporary:
        scratch = Path(temporary)
        scratch_copy(scratch, args.rev)
        revision = args.rev or "working tree"
        if not args.rev:
            head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
            revision = f"working tree at {head.stdout.strip()}"
        reports = {}
        for module in modules:
            prefix = args.out or REPORTS / _slug(module)
            reports[module] = prepare(scratch, module, prefix, args, revision)
            if args.list:
                for m in reports[module][0].mutants:
                    print(f"{m.id}  {module}:{m.line}  {m.function or '(import)'}  {m.operator}: {m.describe()}")
                print(f"{reports[module][0].generated} mutants")
        if args.list:
            return 0
        if not any(m.status == "pending" for report, _, _ in reports.values() for m in report.mutants):
            print("nothing to run; reports rewritten", flush=True)
            return 0
        jax_cache = not args.no_jax_cache
        tests_by_module = {m: args.tests or related_tests(scratch, m) for m in modules}
        baselines = run_baselines(
            scratch, tests_by_module, pytest_args, jax_cache=jax_cache, reuse=not args.rerun_baseline, deadline=deadline
        )
        env = _environment(scratch, jax_cache)
        for module in modules:
            report, order, prefix = reports[module]
            baseline = baselines[module]
            # A resumed report ran its earlier mutants with earlier tests too: it names them all.
            report.tests = list(dict.fromkeys([*(report.tests if args.resume else []), *tests_by_module[module]]))
            report.pytest_args = args.pytest_args
            report.baseline_seconds, report.failing_tests = baseline.seconds, baseline.failing
            report.baseline_cpu_seconds = baseline.cpu_seconds
            report.started = report.started or time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            module_clock = time.monotonic() - report.wall_seconds  # a resumed run adds to the time already spent
            pending = [m for m in order if m.status == "pending"]
            print(
                f"{module}: {report.generated} mutants, {len(pending)} to run; {len(baseline.tests)} passing tests"
                f"{f', {len(baseline.failing)} failing (left out)' if baseline.failing else ''}",
                flush=True,
            )
            source = (scratch / module).read_bytes()
            for i, mutant in enumerate(pending, 1):
                if (args.time_budget is not None and time.monotonic() - clock > args.time_budget) or (
                    time.time() >= deadline
                ):
                    print("  time spent; the rest stay not run", flush=True)
                    break
                tests = tests_for(mutant, baseline)
                if not tests:
                    mutant.status, mutant.detail, mutant.tests_run = "not covered", "no mapped test executes it", 0
                else:
                    expected = sum(baseline.durations.get(t, 0.0) for t in tests)
                    timeout = args.timeout_factor * (expected + baseline.startup) + args.timeout_slack
                    if time.time() + timeout > deadline:
                        run_mutant(scratch, module, source, mutant, tests, deadline - time.time(), pytest_args, env)
                        if mutant.status == "timeout":  # cut short by --stop-at, not by its own limit
                            mutant.status, mutant.seconds, mutant.cpu_seconds = "pending", None, None
                            mutant.detail = "stopped at --stop-at"
                    else:
                        run_mutant(scratch, module, source, mutant, tests, timeout, pytest_args, env)
                print(
                    f"  [{i}/{len(pending)}] {mutant.status:11} {module}:{mutant.line} {mutant.operator}: "
                    f"{mutant.describe()} ({mutant.seconds or 0:.1f} s, {mutant.tests_run} tests)",
                    flush=True,
                )
                report.wall_seconds = time.monotonic() - module_clock
                write_report(report, prefix)
            report.wall_seconds = time.monotonic() - module_clock
            write_report(report, prefix)
            tally = counts(report.mutants)
            value = score(tally)
            print(
                f"{module}: "
                + ", ".join(f"{k} {v}" for k, v in tally.items() if v)
                + f"; score {'-' if value is None else f'{value:.1%}'}; report {prefix.with_suffix('.md')}"
            )
        if args.keep_scratch:
            kept_copy = Path(tempfile.mkdtemp(prefix="jal-mutation-kept-"))
            shutil.copytree(scratch, kept_copy, dirs_exist_ok=True)
            print(f"scratch copy: {kept_copy}")
    return 0


def prepare(scratch: Path, module: str, prefix: Path, args, revision: str) -> tuple[Report, list[Mutant], Path]:
    """The module's mutants to run (in a seeded random order), with earlier results and equivalents filled in."""
    source = (scratch / module).read_bytes()
    mutants = [m for m in generate(scratch / module, module) if _compiles(mutated_source(source, m))]
    previous, old = {}, {}
    if args.resume and prefix.with_suffix(".json").exists():
        old = json.loads(prefix.with_suffix(".json").read_text())
        if old["source_sha1"] != hashlib.sha1(source).hexdigest():
            old = {}
        else:
            again = ("pending", "equivalent", "error") + (("survived", "not covered") if args.retry_survivors else ())
            previous = {m["id"]: m for m in old["mutants"] if m["status"] not in again}
    order = random.Random(args.seed).sample(mutants, len(mutants))
    if args.mutant:
        kept = set(args.mutant) | set(previous)
        order = [m for m in order if m.id in kept]
    elif args.max_mutants is not None:
        kept = {m.id for m in order[: args.max_mutants]} | set(previous)
        order = [m for m in order if m.id in kept]
    equivalent = load_equivalent(module)
    for m in order:
        if m.id in equivalent:
            m.status, m.detail = "equivalent", equivalent[m.id]
        elif m.id in previous:
            for key in ("status", "seconds", "cpu_seconds", "tests_run", "detail"):
                setattr(m, key, previous[m.id].get(key))
    chosen = sorted(order, key=lambda m: (m.start, m.end))
    report = Report(
        module,
        hashlib.sha1(source).hexdigest(),
        [],
        chosen,
        len(mutants),
        len(chosen) < len(mutants),
        revision=revision,
    )
    for key in ("tests", "failing_tests", "baseline_seconds", "baseline_cpu_seconds", "wall_seconds", "started"):
        if key in old:
            setattr(report, key, old[key])
    if not args.list:
        write_report(report, prefix)
    return report, order, prefix


if __name__ == "__main__":
    sys.exit(main())
