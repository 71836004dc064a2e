"""docs/ARCHITECTURE.md cannot drift silently: every dotted name it gives (``retrain.scheduler.tick``,
``registry.lifecycle.promote``...) imports and resolves, and every file its table of floors names is
in that floor's package."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGE = (REPO / "docs" / "ARCHITECTURE.md").read_text()
PACKAGES = ("tuneloop", "engine", "registry", "bot", "feedback", "retrain", "ui")
DOTTED = sorted({name for name in re.findall(r"`([a-z_]+(?:\.[A-Za-z_]\w*)+)`", PAGE)
                 if name.split(".")[0] in PACKAGES})


def resolve(dotted: str) -> object:
    """Import the longest module prefix of ``dotted``, then look up the rest as attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            found: object = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):  # this prefix is no module: try a shorter one
                continue
            raise
        for attribute in parts[cut:]:
            found = getattr(found, attribute)
        return found
    raise ModuleNotFoundError(dotted)


def test_the_page_names_dotted_names():
    assert len(DOTTED) > 20 and "registry.lifecycle.promote" in DOTTED


@pytest.mark.parametrize("dotted", DOTTED)
def test_every_dotted_name_on_the_page_resolves(dotted):
    try:
        resolve(dotted)
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"docs/ARCHITECTURE.md names {dotted}, which does not resolve: {exc}")


def test_resolve_fails_on_a_name_that_moved():
    assert resolve("retrain.scheduler.tick").__name__ == "tick"
    with pytest.raises(AttributeError):
        resolve("retrain.gates.runs.execute")
    with pytest.raises(AttributeError):  # no module retrain.trainer.nowhere, no attribute either
        resolve("retrain.trainer.nowhere.plan_round")
    with pytest.raises(ModuleNotFoundError):
        resolve("nowhere.plan_round")


def table_files() -> list[tuple[str, str]]:
    """(package folder, file name) for every ``name.py`` in a row of the table of floors."""
    found = []
    for row in re.findall(r"^\| \d+ \| (.+)$", PAGE, flags=re.MULTILINE):
        folder = re.match(r"`([\w/]+)/`", row)
        if folder:
            found += [(folder.group(1), name) for name in re.findall(r"`(\w+\.py)`", row)]
    return found


def test_every_file_in_the_table_exists_in_its_package():
    assert len(table_files()) > 60
    missing = [f"{folder}/…/{name}" for folder, name in table_files()
               if not list((REPO / folder).rglob(name))]
    assert not missing, "docs/ARCHITECTURE.md's table names files that are not there: " + ", ".join(missing)
