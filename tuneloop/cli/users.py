"""`tuneloop users`: staff and admin accounts and their API keys."""

from __future__ import annotations

import typer

from tuneloop.cli.errors import fail

users_app = typer.Typer(help="Staff and admin accounts, and their API keys.", no_args_is_help=True)
key_app = typer.Typer(help="Bearer API keys for the HTTP API.", no_args_is_help=True)
users_app.add_typer(key_app, name="key")


def _database():
    from tuneloop.app import prepare_database
    from tuneloop.core.settings import get_settings

    return prepare_database(get_settings())


@users_app.command("create")
def create(username: str = typer.Argument(..., help="Login name."),
           role: str = typer.Option("staff", help="staff (review, correct, approve) or admin (also manage users)."),
           password: str = typer.Option(None, help="At least 8 characters; prompted for when omitted.")) -> None:
    """Create a staff or admin account."""
    from tuneloop.core import db
    from tuneloop.core.accounts import service
    from tuneloop.core.accounts.models import Role

    if role not in ("staff", "admin"):
        fail(f"--role must be staff or admin, not {role!r}")
    if password is None:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    with db.session_scope(_database()) as session:
        account = service.create_account(session, username=username, password=password, role=Role(role), actor="cli")
    typer.echo(f"created {role} account {account.username} ({account.id})")


@users_app.command("password")
def password(username: str = typer.Argument(..., help="Login name."),
             new_password: str = typer.Option(None, "--password", help="At least 8 characters; prompted for when "
                                              "omitted (better: it stays out of the shell history).")) -> None:
    """Set a new password for an account (signed-in sessions on the web pages keep running until they end)."""
    from tuneloop.core import db
    from tuneloop.core.accounts import service

    if new_password is None:
        new_password = typer.prompt("new password", hide_input=True, confirmation_prompt=True)
    with db.session_scope(_database()) as session:
        account = service.change_password(session, username, new_password, actor="cli")
    typer.echo(f"changed the password of {account.username}")


@users_app.command("list")
def list_() -> None:
    """Accounts and their API keys (key prefixes only)."""
    from tuneloop.core import db
    from tuneloop.core.accounts import service

    with db.session_scope(_database()) as session:
        for account in service.list_accounts(session):
            state = "" if account.active else "  (inactive)"
            typer.echo(f"{account.username:<24} {account.role:<6} {account.id}{state}")
            for key in service.list_api_keys(session, account):
                revoked = f"  revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else ""
                typer.echo(f"    key {key.id}  {key.prefix}…  {key.name}{revoked}")


@key_app.command("create")
def key_create(username: str = typer.Argument(..., help="Account the key belongs to."),
               name: str = typer.Option("", help="A label, e.g. the script that uses it.")) -> None:
    """Create an API key and print it (shown once: store it now)."""
    from tuneloop.core import db
    from tuneloop.core.accounts import service

    with db.session_scope(_database()) as session:
        record, key = service.create_api_key(session, service.get_account(session, username), name)
    typer.echo(key)
    typer.echo(f"key id {record.id}; this key is shown once, store it now", err=True)


@key_app.command("revoke")
def key_revoke(key_id: str = typer.Argument(..., help="The key's id (key_…), from `tuneloop users list`.")) -> None:
    """Revoke an API key; requests using it are refused from now on."""
    from tuneloop.core import db
    from tuneloop.core.accounts import service

    with db.session_scope(_database()) as session:
        record = service.revoke_api_key_by_id(session, key_id, actor="cli")
    typer.echo(f"revoked {record.id}")
