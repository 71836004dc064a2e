"""`tuneloop distill`: a teacher model writes question/answer pairs that wait for review.

Every command shows the estimate (tokens, and cost where prices are configured) and asks before
spending anything, unless --yes. A stopped run (Ctrl-C, budget, teacher outage) continues with
`tuneloop distill resume RUN_ID`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from tuneloop.cli.errors import fail

distill_app = typer.Typer(help="Teacher-generated training data (distillation); every pair waits for review.",
                          no_args_is_help=True)

YES = typer.Option(False, "--yes", help="Do not ask before calling the teacher.")
BUDGET = typer.Option(None, "--budget", help="Token budget of the run (default TUNELOOP_DISTILL_MAX_TOKENS_BUDGET; "
                                             "0 = no limit).")
ACTOR = typer.Option("cli", "--as", help="Recorded as the author of the pairs (a second person approves them).")


@distill_app.command("task")
def task(description: str = typer.Argument(..., help="One paragraph about the business, its products and policies."),
         count: int = typer.Option(20, "--count", help="Question/answer pairs wanted."),
         temperature: float = typer.Option(0.9, "--temperature", help="Teacher sampling temperature (0-2)."),
         budget: int = BUDGET, yes: bool = YES, actor: str = ACTOR) -> None:
    """Diverse customer questions with ideal answers in the company's voice, from a description."""
    from feedback.distill.plan import plan_task

    _confirm_and_run(plan_task(_settings(), description=description, count=count, temperature=temperature,
                               budget=budget), yes, actor)


@distill_app.command("docs")
def docs(files: list[Path] = typer.Argument(..., help="Markdown, text or PDF files."),
         per_chunk: int = typer.Option(3, "--per-chunk", help="Pairs asked for each chunk of ~600 tokens."),
         temperature: float = typer.Option(0.7, "--temperature"),
         budget: int = BUDGET, yes: bool = YES, actor: str = ACTOR) -> None:
    """Questions each part of the documents answers; every pair keeps its source chunk."""
    from feedback.distill.plan import plan_docs

    _confirm_and_run(plan_docs(_settings(), files, per_chunk=per_chunk, temperature=temperature, budget=budget),
                     yes, actor)


@distill_app.command("paraphrase")
def paraphrase(per_correction: int = typer.Option(
                   None, "--per-correction", help="Default TUNELOOP_DISTILL_PARAPHRASES_PER_CORRECTION (0 = off)."),
               temperature: float = typer.Option(0.9, "--temperature"),
               budget: int = BUDGET, yes: bool = YES, actor: str = ACTOR) -> None:
    """Other wordings of every approved correction's question (they share its answer and split side)."""
    from feedback.distill.plan import plan_paraphrases
    from tuneloop.core import db

    database = _database()
    with db.session_scope(database) as session:
        plan = plan_paraphrases(session, _settings(), per_correction=per_correction, temperature=temperature,
                                budget=budget)
    _confirm_and_run(plan, yes, actor, database)


@distill_app.command("resume")
def resume(run_id: str = typer.Argument(..., help="distill_… from `tuneloop distill runs`."),
           budget: int = BUDGET) -> None:
    """Continue a stopped or failed run where it stopped; nothing it stored is asked for again."""
    _execute(_database(), run_id, budget)


@distill_app.command("runs")
def runs() -> None:
    """Distillation runs, newest first: status, pairs stored of requested, tokens and cost."""
    from feedback.distill.service import list_runs
    from tuneloop.core import db

    with db.session_scope(_database()) as session:
        rows = list_runs(session)
    for r in rows:
        cost = f"${r.cost:.4f}" if r.cost is not None else "-"
        tokens = r.prompt_tokens + r.completion_tokens
        typer.echo(f"{r.id}  {r.created_at:%Y-%m-%d %H:%M}  {r.kind:<10} {r.status:<9} {r.stored:>5}/{r.requested:<5} "
                   f"dup {r.duplicates:<4} malformed {r.malformed:<4} tokens {tokens:>8,}  {cost}"
                   + (f"\n    {r.message}" if r.message else ""))


def _settings():
    from tuneloop.core.settings import get_settings

    return get_settings()


def _database():
    from tuneloop.app import prepare_database

    return prepare_database(_settings())


def _confirm_and_run(plan, yes: bool, actor: str, database=None) -> None:
    from feedback.distill.service import create_run
    from tuneloop.core import db

    typer.echo(plan.summary())
    if not yes:
        typer.confirm("Ask the teacher now?", abort=True)
    database = database or _database()
    with db.session_scope(database) as session:
        run = create_run(session, plan, actor=actor)
    _execute(database, run.id, None)


def _execute(database, run_id: str, budget: int | None) -> None:
    from tqdm import tqdm

    from feedback.distill.service import execute_run, get_run, progress_of
    from feedback.distill.teacher import TeacherError
    from tuneloop.core import db

    with db.session_scope(database) as session:
        run = get_run(session, run_id)
    done, total = progress_of(run)
    bar = tqdm(total=total, initial=done, unit="pair" if run.kind == "task" else "request")

    def show(run) -> None:
        bar.n = progress_of(run)[0]
        bar.set_postfix(stored=run.stored, dup=run.duplicates, malformed=run.malformed,
                        tokens=run.prompt_tokens + run.completion_tokens, refresh=True)

    try:
        run = execute_run(database, _settings(), run_id, budget=budget, on_progress=show)
    except KeyboardInterrupt:
        fail(f"interrupted; continue with `tuneloop distill resume {run_id}`")
    except TeacherError as exc:
        fail(f"{exc}; run {run_id} stopped there: continue with `tuneloop distill resume {run_id}`")
    finally:
        bar.close()
    cost = f", cost ${run.cost:.4f}" if run.cost is not None else ""
    typer.echo(f"{run.id} {run.status}: {run.stored} of {run.requested} pairs stored, {run.duplicates} duplicates, "
               f"{run.malformed} malformed; {run.prompt_tokens + run.completion_tokens:,} tokens "
               f"({run.prompt_tokens:,} prompt + {run.completion_tokens:,} completion){cost}")
    if run.message:
        typer.echo(run.message)
    if run.stored:
        typer.echo("They wait for approval: /staff (Approvals) or GET /v1/corrections?status=submitted")
