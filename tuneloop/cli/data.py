"""`tuneloop data`: validate and import question/answer files, freeze dataset snapshots."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tuneloop.cli.errors import fail

data_app = typer.Typer(help="Training data: validate and import files, dataset snapshots.", no_args_is_help=True)


def _database():
    from tuneloop.app import prepare_database
    from tuneloop.core.settings import get_settings

    return prepare_database(get_settings())


@data_app.command("validate")
def validate(file: Path = typer.Argument(..., help="CSV, TSV, XLSX, JSON or JSONL with prompt/completion or messages."),
             fix: Path = typer.Option(None, "--fix", help="Write the repaired examples as JSONL here."),
             tokenizer: Path = typer.Option(None, help="Tokenizer/model directory (default: the base model's).")) -> None:
    """Check a fine-tuning file: columns, empty rows, duplicates, lengths, separators, stop sequences."""
    from feedback.validate import fix_file, validate_file
    from tuneloop.core.settings import get_settings

    report = validate_file(file, get_settings(), tokenizer=tokenizer)
    if report.format:
        typer.echo(f"{file.name}: {report.n_examples} examples ({report.format}, {report.kind or 'unknown kind'}), "
                   f"{report.total_tokens} tokens, longest {report.max_tokens} ({report.tokenizer})")
    else:  # not even read (a line that is not JSON): counts and a format would be made up
        typer.echo(f"{file.name}: could not be read as examples")
    for error in report.errors:
        typer.secho(f"  error: {error}", fg=typer.colors.RED)
    for warning in report.warnings:
        typer.secho(f"  warning: {warning}", fg=typer.colors.YELLOW)
    if report.total_tokens:
        typer.echo(f"  estimated training time: ~{report.estimated_seconds_per_epoch / 60:.1f} min per epoch on CPU")
    if fix is not None:
        if not report.examples:
            fail(f"nothing to write to {fix}: no usable examples (fix the errors above)")
        typer.echo(f"wrote {fix_file(report, fix)} examples to {fix}")
    if not report.ok:
        fail(f"{file.name} has {len(report.errors)} error(s); fix them (or use --fix OUT) and validate again")
    typer.echo("ok")


@data_app.command("import")
def import_(file: Path = typer.Argument(..., help="CSV, TSV, XLSX, JSON or JSONL of question/answer pairs."),
            status: str = typer.Option("submitted", help="submitted (reviewed as usual) or approved (trusted source)."),
            actor: str = typer.Option("cli", "--as", help="Recorded as the author in the audit log.")) -> None:
    """Import question/answer pairs as corrections; all rows or none."""
    from feedback.importer import import_file
    from feedback.corrections.models import CorrectionStatus
    from tuneloop.core import db
    from tuneloop.core.settings import get_settings

    if status not in ("submitted", "approved"):
        fail(f"--status must be submitted or approved, not {status!r}")
    with db.session_scope(_database()) as session:
        created = import_file(session, get_settings(), file, actor=actor, status=CorrectionStatus(status))
    typer.echo(f"imported {len(created)} corrections as {status}")


@data_app.command("snapshot")
def snapshot(actor: str = typer.Option("cli", "--as", help="Recorded as the creator.")) -> None:
    """Freeze the approved examples into a new dataset snapshot (or show the identical existing one)."""
    from retrain.datasets import create_snapshot, snapshot_dir
    from tuneloop.core import db
    from tuneloop.core.settings import get_settings

    settings = get_settings()
    with db.session_scope(_database()) as session:
        snap = create_snapshot(session, settings, actor)
    typer.echo(f"{snap.id}: {snap.n_train} train / {snap.n_valid} valid  ({snapshot_dir(settings, snap)})")


@data_app.command("snapshots")
def snapshots() -> None:
    """List dataset snapshots, newest first."""
    from retrain.datasets import list_snapshots
    from tuneloop.core import db

    with db.session_scope(_database()) as session:
        for snap in list_snapshots(session):
            typer.echo(f"{snap.id}  {snap.created_at:%Y-%m-%d %H:%M}  {snap.n_train:>6} train {snap.n_valid:>5} valid"
                       f"  parent {snap.parent_id or '-'}")


@data_app.command("show")
def show(snapshot_id: str = typer.Argument(..., help="snap_… from `tuneloop data snapshots`.")) -> None:
    """A snapshot's manifest (counts, hash, parent, example ids with their split)."""
    from retrain.datasets import get_snapshot, read_manifest
    from tuneloop.core import db
    from tuneloop.core.settings import get_settings

    with db.session_scope(_database()) as session:
        snap = get_snapshot(session, snapshot_id)
    typer.echo(json.dumps(read_manifest(get_settings(), snap), indent=2, ensure_ascii=False))


@data_app.command("export-preferences")
def export_preferences(out: Path = typer.Argument(..., help="JSONL file to write (OpenAI's DPO format).")) -> None:
    """Write each corrected answer and its approved correction as a preference pair, for a DPO job
    (`method: {"type": "dpo"}`)."""
    from feedback.preferences import preference_records, write_preference_jsonl
    from tuneloop.core import db
    from tuneloop.core.settings import get_settings

    with db.session_scope(_database()) as session:
        n = write_preference_jsonl(preference_records(session, get_settings()), out)
    typer.echo(f"wrote {n} preference pairs to {out}")
