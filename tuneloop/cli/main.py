"""Entry point of the ``tuneloop`` command. Each sub-command lives in its own module."""

from __future__ import annotations

import sys

import typer

import tuneloop  # noqa: F401  (offline environment)
from tuneloop.cli.errors import CliError, report
from tuneloop.cli.server import db_app, serve_app

app = typer.Typer(
    help="tuneloop: a customer-service chat bot that learns from its reviewed conversations.\n\n"
    "Configuration comes from TUNELOOP_* environment variables or a .env file.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.registered_commands += serve_app.registered_commands
app.add_typer(db_app, name="db")


def main() -> None:
    """Run the CLI; expected failures print one line and exit 2."""
    from pydantic import ValidationError

    try:
        app()
    except CliError as exc:
        report(exc)
        sys.exit(2)
    except (ValueError, LookupError, PermissionError, FileNotFoundError, ValidationError) as exc:
        report(exc)
        sys.exit(2)


if __name__ == "__main__":
    main()
