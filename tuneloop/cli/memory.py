"""`tuneloop memory`: calibrate verified replies on this deployment's data, and see how a question is handled."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tuneloop.cli.errors import fail

memory_app = typer.Typer(help="Correction memory: verified replies, calibration.", no_args_is_help=True)


def _engine():
    from tuneloop.app import prepare_database
    from tuneloop.core.settings import get_settings

    return prepare_database(get_settings())


@memory_app.command("calibrate")
def calibrate_(target_precision: float = typer.Option(0.99, help="Share of verified replies that must be right."),
               negatives: Path = typer.Option(None, help="Extra off-topic questions, one per line (# comments)."),
               margin: float = typer.Option(None, help="Runner-up margin (default: memory_verified_margin)."),
               as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")) -> None:
    """Precision/recall of verified replies across thresholds (held-out alternative questions as positives,
    uncovered logged questions as negatives), and the threshold that meets the target precision."""
    from sqlmodel import Session

    from feedback.memory.calibration import calibrate, format_table
    from tuneloop.core.settings import get_settings

    if not 0.0 < target_precision <= 1.0:
        fail(f"--target-precision must be in (0, 1], e.g. 0.99; got {target_precision}")
    extra = []
    if negatives is not None:
        if not negatives.is_file():
            fail(f"--negatives {negatives}: no such file; give a text file with one question per line")
        extra = [line.strip() for line in negatives.read_text(encoding="utf-8").splitlines()
                 if line.strip() and not line.lstrip().startswith("#")]
    with Session(_engine()) as session:
        report = calibrate(session, get_settings(), target_precision=target_precision, margin=margin,
                           extra_negatives=extra)
    typer.echo(json.dumps(report.as_dict(), indent=2) if as_json else format_table(report))


@memory_app.command("decide")
def decide(question: str = typer.Argument(..., help="A customer's question.")) -> None:
    """How memory would handle QUESTION on its own: verified, grounded or none, with the best scores."""
    from feedback.memory.service import CorrectionMemory
    from tuneloop.core.settings import get_settings

    decision = CorrectionMemory(get_settings(), _engine()).decide([{"role": "user", "content": question}])
    typer.echo(f"{decision.outcome}  {' '.join(decision.correction_ids) or '-'}")
    for score in decision.logged_scores():
        typer.echo(f"  {score['correction_id']}  score {score['score']:.3f}  dense {score['dense']:.3f}  "
                   f"lexical {score['lexical']:.3f}")
