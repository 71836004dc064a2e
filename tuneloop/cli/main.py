"""Entry point of the ``tuneloop`` command. Each sub-command lives in its own module."""

from __future__ import annotations

import sys

import typer

import tuneloop  # noqa: F401  (offline environment)
import tuneloop.cli.models  # noqa: F401  (adds `models list` to models_app)
from tuneloop.cli.chat import chat_app
from tuneloop.cli.data import data_app
from tuneloop.cli.demo import demo_app
from tuneloop.cli.distill import distill_app
from tuneloop.cli.errors import CliError, report
from tuneloop.cli.init import init_app
from tuneloop.cli.jobs import jobs_app
from tuneloop.cli.memory import memory_app
from tuneloop.cli.ops import forget, ops_app
from tuneloop.cli.registry import golden_app, models_app
from tuneloop.cli.server import db_app, serve_app
from tuneloop.cli.users import users_app
from tuneloop.cli.worker import worker_app

app = typer.Typer(
    help="tuneloop: a customer-service chat bot that learns from its reviewed conversations.\n\n"
    "Configuration comes from TUNELOOP_* environment variables or a .env file.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Top-level commands, from the Typer app that defines each (`tuneloop serve`, `tuneloop chat`, …).
COMMANDS = [serve_app, chat_app, ops_app, worker_app, demo_app, init_app]
# Command groups: (name, app) -> `tuneloop NAME SUBCOMMAND`.
GROUPS = [("db", db_app), ("users", users_app), ("data", data_app), ("models", models_app),
          ("golden", golden_app), ("jobs", jobs_app), ("distill", distill_app), ("memory", memory_app)]

for commands in COMMANDS:
    app.registered_commands += commands.registered_commands
for name, group in GROUPS:
    app.add_typer(group, name=name)
users_app.command("forget")(forget)



def main() -> None:
    """Run the CLI; expected failures print one line and exit 2."""
    from pydantic import ValidationError

    from tuneloop.ops.private_data import make_private

    make_private()  # before anything under the data directory is created
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
