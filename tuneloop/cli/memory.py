"""`tuneloop memory`: calibrate verified replies on this deployment's data, and see how a question is handled."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tuneloop.cli.errors import fail

memory_app = typer.Typer(help="Correction memory: verified replies, calibration.", no_args_is_help=True)


def _database():
    from tuneloop.app import prepare_database
    from tuneloop.core.settings import get_settings

    return prepare_database(get_settings())


def _memory_and_scorer(settings, db):
    """Memory over the database and the production version's weights, loaded in this process (a
    CLI run does not talk to a server); the scorer is None when no model can be loaded."""
    from bot.runtime import ServingRuntime
    from feedback.memory.service import CorrectionMemory

    runtime = ServingRuntime(settings, db)
    try:
        runtime.start(background=False)
    except Exception as exc:  # noqa: BLE001  (calibration still runs on retrieval alone)
        typer.echo(f"note: the production model could not be loaded ({exc}); scoring by retrieval alone", err=True)
    return runtime, CorrectionMemory(settings, db), runtime.answer_scorer() if runtime.ready else None


@memory_app.command("calibrate")
def calibrate_(target_precision: float = typer.Option(0.99, help="Share of verified replies that must be right."),
               negatives: Path = typer.Option(None, help="Extra off-topic questions, one per line (# comments)."),
               save: bool = typer.Option(False, "--save", help="Store the fitted selector for the production "
                                         "version: serving uses it from the next turn."),
               as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")) -> None:
    """Fit answer selection on this deployment's data (held-out alternative questions as positives,
    uncovered logged questions as negatives, the production weights scoring the candidates) and print
    precision/recall of verified replies across probability thresholds, with the one that meets the
    target precision. --save stores the fit for the version in production."""
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
    settings, db = get_settings(), _database()
    runtime, memory, scorer = _memory_and_scorer(settings, db)
    try:
        with Session(db) as session:
            report = calibrate(session, settings, memory, scorer=scorer, target_precision=target_precision,
                               extra_negatives=extra, save=save)
    finally:
        runtime.stop()
    typer.echo(json.dumps(report.as_dict(), indent=2) if as_json else format_table(report))


@memory_app.command("decide")
def decide(question: str = typer.Argument(..., help="A customer's question.")) -> None:
    """How memory would handle QUESTION on its own (verified, handoff, grounded or none), with the best
    candidates' retrieval scores, PMI under the production weights and selection probability."""
    from tuneloop.core.settings import get_settings

    runtime, memory, scorer = _memory_and_scorer(get_settings(), _database())
    try:
        decision = memory.decide([{"role": "user", "content": question}], scorer)
    finally:
        runtime.stop()
    typer.echo(f"{decision.outcome}  {' '.join(decision.correction_ids) or '-'}  ({decision.reason})")
    for score in decision.logged_scores():
        typer.echo(f"  {score['correction_id']}  score {score['score']:.3f}  dense {score['dense']:.3f}  "
                   f"lexical {score['lexical']:.3f}  pmi {score['pmi']:+.3f}  probability {score['probability']:.3f}")
