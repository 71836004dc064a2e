"""CLI errors: a message that names the fix, exit status 2, never a traceback."""

from __future__ import annotations

import typer


class CliError(Exception):
    pass


def fail(message: str) -> None:
    raise CliError(message)


def report(exc: BaseException) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
