"""The floors of the house: every package imports only from its own floor or the floors below.

    0  tuneloop.core   settings, db, ids, errors, deps, metrics, accounts
    1  engine          models, prompting, the Engine types and its implementations
    2  registry        versions, the production pointer, gate reports, promotion and rollback
    3  bot             conversations, messages, chat routes, the serving runtime
    4  feedback        ratings, review, corrections, memory, export
    5  retrain         datasets, trainer, jobs, scheduler, gates
    6  ui              Gradio pages
    7  tuneloop        app, cli, ops, schema: the composition root, which may import everything

Both module-level and function-level imports count: a lazy import upward is still an upward
dependency. Inside a package, its parts (sub-packages and modules) import each other one way too: no
cycle between them. The checks parse the source with ``ast``; nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FLOORS = ["tuneloop.core", "engine", "registry", "bot", "feedback", "retrain", "ui", "tuneloop"]
PACKAGES = ["tuneloop", "engine", "registry", "bot", "feedback", "retrain", "ui"]

# (file, imported module) pairs allowed to point upward, each with its reason. Keep this empty.
ALLOWED: dict[tuple[str, str], str] = {}


def floor_of(module: str) -> int | None:
    """The floor of a dotted module name, or None for anything outside the project."""
    if module == "tuneloop.core" or module.startswith("tuneloop.core."):
        return 0
    top = module.split(".")[0]
    if top == "tuneloop":
        return FLOORS.index("tuneloop")
    return FLOORS.index(top) if top in FLOORS else None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(tree: ast.AST, this_module: str) -> list[tuple[int, str]]:
    """(line, absolute module) for every import statement anywhere in the tree."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against this module's package
                base = this_module.split(".")[: -node.level] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # `from tuneloop import core` imports tuneloop.core, not the top floor
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names
                      if floor_of(f"{module}.{alias.name}") is not None and module in ("tuneloop",)]
    return found


def upward_imports(source: str, path: str, this_module: str) -> list[str]:
    """Every import in ``source`` that points to a higher floor than the module's own."""
    own = floor_of(this_module)
    if own is None:
        return []
    problems = []
    for line, module in imported_modules(ast.parse(source), this_module):
        if module == "tuneloop":  # the package init only sets the offline environment
            continue
        target = floor_of(module)
        if target is not None and target > own and (path, module) not in ALLOWED:
            problems.append(f"{path}:{line}: {this_module} (floor {own}, {FLOORS[own]}) imports {module} "
                            f"(floor {target}, {FLOORS[target]})")
    return problems


def project_modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py")
                  if "migrations/versions" not in p.as_posix())


def test_no_module_imports_a_higher_floor():
    problems = []
    for path in project_modules():
        problems += upward_imports(path.read_text(), str(path.relative_to(REPO)), module_name(path))
    assert not problems, "imports that point up a floor:\n" + "\n".join(problems)


@pytest.mark.parametrize(("module", "source", "expected"), [
    ("engine.prompting", "from bot.models import Message\n", "engine.prompting (floor 1, engine) imports bot.models"),
    ("registry.lifecycle", "def f():\n    from retrain.gates import run_gates\n", "imports retrain.gates"),
    ("tuneloop.core.db", "import feedback.models\n", "imports feedback.models (floor 4"),
    ("bot.runtime", "from tuneloop import schema\n", "imports tuneloop.schema (floor 7"),
])
def test_the_check_catches_an_upward_import(module, source, expected):
    problems = upward_imports(source, "x.py", module)
    assert len(problems) == 1 and expected in problems[0]


@pytest.mark.parametrize(("module", "source"), [
    ("retrain.gates", "from engine.protocol import SamplingParams\nfrom registry.models import GateReport\n"),
    ("tuneloop.app", "import ui\nfrom retrain import routes\n"),
    ("engine.prompting", "import torch\nfrom tuneloop.core.settings import Settings\n"),
])
def test_downward_and_foreign_imports_pass(module, source):
    assert upward_imports(source, "x.py", module) == []


# --- imports hidden inside functions ------------------------------------------------------------
# Below the composition root, a project module imports the project modules it uses at the top, where
# a reader sees its dependencies. A lazy import of a project module hides one (and usually a cycle
# that the module layout should resolve instead). Third-party imports may stay lazy where they are
# heavy or optional (llama_cpp, peft, pypdf, openpyxl...). The composition root (app, cli, ops,
# schema) imports lazily on purpose: `tuneloop --help` must not load torch.
LIBRARY_FLOORS = FLOORS[:-1]


def lazy_project_imports(source: str, path: str, this_module: str) -> list[str]:
    own = floor_of(this_module)
    if own is None or FLOORS[own] not in LIBRARY_FLOORS:
        return []
    problems = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for line, module in imported_modules(node, this_module):
            if module != "tuneloop" and floor_of(module) is not None:
                problems.append(f"{path}:{line}: {this_module} imports {module} inside a function")
    return sorted(set(problems))


def test_library_modules_import_project_modules_at_the_top():
    problems = []
    for path in project_modules():
        problems += lazy_project_imports(path.read_text(), str(path.relative_to(REPO)), module_name(path))
    assert not problems, "move these imports to the top of the module:\n" + "\n".join(problems)


def test_the_lazy_import_check_catches_one_and_spares_the_root():
    source = "import json\n\ndef f():\n    import torch\n    from registry.models import ModelVersion\n"
    assert lazy_project_imports(source, "x.py", "retrain.scheduler") == [
        "x.py:5: retrain.scheduler imports registry.models inside a function"]
    assert lazy_project_imports(source, "x.py", "tuneloop.cli.main") == []


# --- cycles inside a package --------------------------------------------------------------------
# The floors order the packages; inside one package its parts (sub-packages and modules) must be
# ordered too, so that a reader can read a package bottom-up. An import between two modules is an
# arrow between the parts of their deepest common package that hold them (retrain.jobs.child importing
# retrain.trainer.config is the arrow retrain.jobs -> retrain.trainer); any cycle of arrows fails.
# (part, part) cycles allowed, each with its reason. Keep this empty.
ALLOWED_CYCLES: dict[frozenset[str], str] = {
    frozenset({"engine.decode_state", "engine.transformers_model"}):
        "a type-only import (TYPE_CHECKING) of LoadedModel and _Request; engine/ was being reworked by others "
        "when the check came: move those two types beside DecodeState to drop this entry",
}


def part_arrows(modules: list[tuple[str, str, str]]) -> dict[tuple[str, str], list[str]]:
    """For (module, path, source) triples: each arrow between two parts of one package, with the imports
    that make it (``path:line: module imports module``)."""
    arrows: dict[tuple[str, str], list[str]] = {}
    for module, path, source in modules:
        for line, target in imported_modules(ast.parse(source), module):
            if floor_of(target) is None or target == "tuneloop":
                continue
            mine, theirs = module.split("."), target.split(".")
            common = 0
            while common < min(len(mine), len(theirs)) and mine[common] == theirs[common]:
                common += 1
            if 0 < common < len(mine) and common < len(theirs):  # neither is the other's package
                arrow = (".".join(mine[:common + 1]), ".".join(theirs[:common + 1]))
                arrows.setdefault(arrow, []).append(f"{path}:{line}: {module} imports {target}")
    return arrows


def part_cycles(arrows: dict[tuple[str, str], list[str]]) -> list[str]:
    """One line per group of parts that reach each other, with the imports that tie them."""
    reach: dict[str, set[str]] = {}
    for a, b in arrows:
        reach.setdefault(a, set()).add(b)
    changed = True
    while changed:  # transitive closure: the graphs are a few dozen parts
        changed = False
        for a, targets in reach.items():
            more = set().union(*(reach.get(b, set()) for b in targets)) - targets
            if more:
                targets |= more
                changed = True
    groups = {frozenset({a} | {b for b in reach[a] if a in reach.get(b, set())}) for a in reach if a in reach[a]}
    problems = []
    for group in sorted(groups, key=sorted):
        if group in ALLOWED_CYCLES:
            continue
        ties = [f"{a} -> {b} ({arrows[a, b][0]})" for a, b in sorted(arrows) if a in group and b in group]
        problems.append(" <-> ".join(sorted(group)) + ": " + "; ".join(ties))
    return problems


def test_no_cycle_between_the_parts_of_a_package():
    modules = [(module_name(p), str(p.relative_to(REPO)), p.read_text()) for p in project_modules()]
    problems = part_cycles(part_arrows(modules))
    assert not problems, "parts of a package that import each other:\n" + "\n".join(problems)


def test_the_cycle_check_catches_a_cycle_and_spares_a_chain():
    modules = [
        ("retrain.jobs.child", "retrain/jobs/child.py", "from retrain.trainer.config import TrainConfig\n"),
        ("retrain.trainer.rounds", "retrain/trainer/rounds.py", "import json\nfrom retrain.jobs.files import get_file\n"),
        ("retrain.jobs", "retrain/jobs/__init__.py", "from retrain.jobs.child import main\n"),  # its own part
        ("retrain.scheduler", "retrain/scheduler.py", "from retrain.jobs import service\n"),
        ("retrain.trainer.config", "retrain/trainer/config.py", "from feedback.examples import TrainingExample\n"),
    ]
    assert part_arrows(modules)[("retrain.jobs", "retrain.trainer")] == [
        "retrain/jobs/child.py:1: retrain.jobs.child imports retrain.trainer.config"]
    assert part_cycles(part_arrows(modules)) == [
        "retrain.jobs <-> retrain.trainer: "
        "retrain.jobs -> retrain.trainer (retrain/jobs/child.py:1: retrain.jobs.child imports retrain.trainer.config); "
        "retrain.trainer -> retrain.jobs (retrain/trainer/rounds.py:2: retrain.trainer.rounds imports retrain.jobs.files)"]
    assert part_cycles(part_arrows(modules[:1] + modules[2:])) == []  # scheduler -> jobs -> trainer: one way
