"""Alembic environment: runs on the engine tuneloop hands in (see tuneloop.schema.upgrade)."""

from alembic import context
from sqlmodel import SQLModel

from tuneloop.core.db import make_engine
from tuneloop.schema import import_all_models

import_all_models()
target_metadata = SQLModel.metadata
config = context.config


def run_migrations() -> None:
    engine = config.attributes.get("engine") or make_engine(config.get_main_option("sqlalchemy.url"))
    with engine.begin() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        context.run_migrations()


run_migrations()
