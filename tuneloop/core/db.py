"""Database engine, sessions and migrations, shared by every package.

SQLite (WAL mode) is the embedded default; PostgreSQL is the deployment database. Each package
declares its own SQLModel tables; the schema is created and changed only by Alembic migrations
(``tuneloop/schema.py``, which sees every package's tables), applied on startup or with
``tuneloop db upgrade``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, create_engine

def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # noqa: ANN001
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return create_engine(url, pool_pre_ping=True)


SETUP_LOCK_KEY = 0x7475_6E65  # "tune": the advisory lock serialising schema setup on PostgreSQL


@contextmanager
def setup_lock(engine: Engine) -> Iterator[None]:
    """Serialise migrations and first-start setup across processes: a PostgreSQL advisory lock, or a
    file lock beside the SQLite database."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            connection.exec_driver_sql(f"SELECT pg_advisory_lock({SETUP_LOCK_KEY})")
            try:
                yield
            finally:
                connection.exec_driver_sql(f"SELECT pg_advisory_unlock({SETUP_LOCK_KEY})")
                connection.commit()
        return
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    import fcntl

    with open(f"{database}.setup.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One transaction: committed if the block succeeds, rolled back if it raises."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
