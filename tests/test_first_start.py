"""The first start on a blank database, on both engines: migrations create every table, version 0
is in production, the first admin exists, and a second start changes nothing."""

from sqlalchemy import inspect
from sqlmodel import Session, select

from tuneloop import schema
from tuneloop.core.accounts.models import Account, Role


def test_fresh_database_has_schema_base_version_and_admin(make_settings, database_url):
    from registry.versions import production_version
    from tuneloop.app import prepare_database

    settings = make_settings(database_url=database_url)
    engine = prepare_database(settings)
    tables = set(inspect(engine).get_table_names())
    assert {"conversation", "message", "modelversion", "productionpointer", "rating", "correction",
            "datasetsnapshot", "finetunejob", "gatereport", "account", "auditevent"} <= tables
    assert schema.current_revision(engine) is not None
    with Session(engine) as session:
        assert production_version(session).id == "v0"
        admins = session.exec(select(Account).where(Account.role == Role.admin)).all()
        assert [a.username for a in admins] == ["admin"]
    # A second start changes nothing.
    prepare_database(settings)
    with Session(engine) as session:
        assert len(session.exec(select(Account)).all()) == 1
    engine.dispose()
