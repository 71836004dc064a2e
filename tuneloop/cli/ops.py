"""`tuneloop export`, `tuneloop import` and `tuneloop users forget`: backups and erasure requests."""

from __future__ import annotations

from pathlib import Path

import typer

from tuneloop.core.settings import get_settings

ops_app = typer.Typer()


@ops_app.command("export")
def export(archive: Path = typer.Argument(..., help="Where to write the archive (.tar.gz).")) -> None:
    """Write every table and the files they reference (snapshots, adapters) to a portable archive."""
    from tuneloop.core import db
    from tuneloop import schema
    from tuneloop.ops.backup import export_archive

    settings = get_settings()
    database = db.make_engine(settings.database_url)
    manifest = export_archive(database, settings, archive)
    rows = sum(t["rows"] for t in manifest["tables"].values())
    typer.echo(f"exported {rows} rows in {len(manifest['tables'])} tables and {len(manifest['files'])} files "
               f"(schema {manifest['schema_revision']}) to {archive}")


@ops_app.command("import")
def import_(archive: Path = typer.Argument(..., exists=True, dir_okay=False, help="An archive from `tuneloop export`.")) -> None:
    """Restore an archive into a new, empty instance (one transaction; refuses a database that holds data)."""
    from tuneloop.core import db
    from tuneloop import schema
    from tuneloop.ops.backup import import_archive

    settings = get_settings()
    database = db.make_engine(settings.database_url)
    schema.upgrade(database)
    manifest = import_archive(database, settings, archive)
    rows = sum(t["rows"] for t in manifest["tables"].values())
    typer.echo(f"imported {rows} rows and {len(manifest['files'])} files from {archive} "
               f"(exported {manifest['created_at']} from {manifest['source']})")


def forget(
    end_user: str = typer.Argument(..., help="The end user's id as stored on their conversations."),
    actor: str = typer.Option("admin", help="Who carried out the request (recorded in the audit log)."),
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
) -> None:
    """Delete one end user's conversations, messages and ratings (a right-to-erasure request)."""
    from tuneloop.core import db
    from tuneloop import schema
    from feedback.retention import forget_end_user

    if not yes:
        typer.confirm(f"Delete everything end user {end_user!r} said and rated? This cannot be undone.", abort=True)
    settings = get_settings()
    with db.session_scope(db.make_engine(settings.database_url)) as session:
        counts = forget_end_user(session, end_user, actor=actor)
    typer.echo(f"forgot {end_user!r}: " + ", ".join(f"{n} {kind}" for kind, n in counts.items()))
