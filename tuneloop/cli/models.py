"""`tuneloop models list`: the model versions, as /v1/models serves them, with their lifecycle."""

from __future__ import annotations

import typer

from tuneloop.cli.registry import models_app


@models_app.command("list")
def list_versions(
    all_: bool = typer.Option(False, "--all", help="Include deleted versions."),
) -> None:
    """Show every model version: id, name, status, parent version and creation time (UTC).

    The production version is marked with *. Any id or name here can be sent as the API's `model`.
    """
    from sqlmodel import Session, select

    from registry import versions
    from registry.models import ModelVersion
    from tuneloop.app import prepare_database
    from tuneloop.core.settings import get_settings

    db = prepare_database(get_settings())
    with Session(db) as session:
        rows = (list(session.exec(select(ModelVersion).order_by(ModelVersion.number))) if all_
                else versions.servable_versions(session))
        production_id = versions.production_pointer(session).version_id
    table = [("", "ID", "NAME", "STATUS", "PARENT", "CREATED")] + [
        ("*" if v.id == production_id else "", v.id, v.name, str(v.status), v.parent_id or "-",
         v.created_at.strftime("%Y-%m-%d %H:%M")) for v in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    db.dispose()
