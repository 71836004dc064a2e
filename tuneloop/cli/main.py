"""Entry point of the ``tuneloop`` command. Each sub-command lives in its own module."""

from __future__ import annotations

import sys

import typer

import tuneloop  # noqa: F401  (offline environment)
from tuneloop.cli.errors import CliError, report
from tuneloop.cli.ops import forget, ops_app
from tuneloop.cli.server import db_app, serve_app
from tuneloop.cli.chat import chat_app
import tuneloop.cli.models  # noqa: F401,E402  (adds `models list` to models_app)
from tuneloop.cli.users import users_app
from tuneloop.cli.data import data_app
from tuneloop.cli.registry import golden_app, models_app

app = typer.Typer(
    help="tuneloop: a customer-service chat bot that learns from its reviewed conversations.\n\n"
    "Configuration comes from TUNELOOP_* environment variables or a .env file.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.registered_commands += serve_app.registered_commands
app.registered_commands += chat_app.registered_commands
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
app.add_typer(golden_app, name="golden")
app.registered_commands += ops_app.registered_commands
users_app.command("forget")(forget)
from tuneloop.cli.jobs import jobs_app  # noqa: E402
app.add_typer(jobs_app, name="jobs")
from tuneloop.cli.worker import worker_app  # noqa: E402
app.registered_commands += worker_app.registered_commands
from tuneloop.cli.demo import demo_app  # noqa: E402
app.registered_commands += demo_app.registered_commands
from tuneloop.cli.distill import distill_app  # noqa: E402
app.add_typer(distill_app, name="distill")
from tuneloop.cli.memory import memory_app  # noqa: E402
app.add_typer(memory_app, name="memory")


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
