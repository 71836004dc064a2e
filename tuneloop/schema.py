"""The whole schema: every package's tables and the Alembic migrations that create and change them.

It lives in the composition root because it is the one place that must see every package's
``models.py``; the ground floor (``tuneloop.core.db``) only makes engines and sessions."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def import_all_models() -> None:
    """Register every package's tables on SQLModel.metadata (for migrations and tests)."""
    import bot.models  # noqa: F401
    import feedback.corrections.models  # noqa: F401
    import feedback.decisions  # noqa: F401
    import feedback.distill.models  # noqa: F401
    import feedback.ratings.models  # noqa: F401
    import registry.models  # noqa: F401
    import retrain.models  # noqa: F401
    import tuneloop.core.accounts.models  # noqa: F401


def alembic_config(engine: Engine):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (all migrations by default)."""
    from alembic import command

    import_all_models()
    command.upgrade(alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
