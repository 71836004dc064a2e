"""Migrations: a blank database migrated to head has exactly the schema the models declare (on both
engines), and downgrading to nothing and upgrading again gives the same schema."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlmodel import SQLModel

from tuneloop.core import db
from tuneloop import schema


def schema_diffs(engine) -> list:
    """What alembic's autogenerate would still change: empty when migrations and models agree."""
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, SQLModel.metadata)


def columns_by_table(engine) -> dict[str, set[str]]:
    inspector = inspect(engine)
    return {t: {c["name"] for c in inspector.get_columns(t)} for t in inspector.get_table_names()}


def test_blank_database_migrates_to_the_models_schema(database_url):
    engine = db.make_engine(database_url)
    assert inspect(engine).get_table_names() == []
    schema.upgrade(engine)
    head = ScriptDirectory.from_config(schema.alembic_config(engine)).get_current_head()
    assert schema.current_revision(engine) == head
    assert schema_diffs(engine) == []
    columns = columns_by_table(engine)
    for table in SQLModel.metadata.sorted_tables:
        assert columns[table.name] == {c.name for c in table.columns}, table.name
    assert {"id", "conversation_id", "position", "role", "content", "model_version_id"} <= columns["message"]
    assert {"version_id", "revision"} <= columns["productionpointer"]
    engine.dispose()


def test_downgrade_to_base_and_upgrade_again(database_url):
    engine = db.make_engine(database_url)
    schema.upgrade(engine)
    before = columns_by_table(engine)
    command.downgrade(schema.alembic_config(engine), "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    assert schema.current_revision(engine) is None
    schema.upgrade(engine)
    assert columns_by_table(engine) == before
    assert schema_diffs(engine) == []
    engine.dispose()
