"""Regenerate migration 0001 from the current models (only until the first release ships;
after that, add a new revision with `alembic revision --autogenerate` instead)."""

import tempfile
from pathlib import Path

from alembic import command

from tuneloop.core.db import make_engine
from tuneloop.schema import MIGRATIONS_DIR, alembic_config, import_all_models

import_all_models()
for old in (MIGRATIONS_DIR / "versions").glob("0001_*.py"):
    old.unlink()
with tempfile.TemporaryDirectory() as tmp:
    engine = make_engine(f"sqlite:///{tmp}/blank.db")
    command.revision(alembic_config(engine), message="initial schema", autogenerate=True, rev_id="0001")
print(sorted(p.name for p in (MIGRATIONS_DIR / "versions").glob("*.py")))
