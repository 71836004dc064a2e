"""`tuneloop models promote|reject|rollback|delete|show|gates` and `tuneloop golden add|list|remove`.

Commands that change production act as an admin account (``--as``, default the first admin); API
processes follow a promotion within ``version_poll_seconds``. ``tuneloop models list`` lives beside
these in the same group (tuneloop/cli/models.py adds it to ``models_app``).
"""

from __future__ import annotations

import json

import typer

from tuneloop.cli.errors import fail

models_app = typer.Typer(help="Model versions: gates, promotion, rollback, lineage.", no_args_is_help=True)
golden_app = typer.Typer(help="The golden set: must-pass questions for every candidate.", no_args_is_help=True)

AS_OPTION = typer.Option(None, "--as", help="Admin account to act as (default: TUNELOOP_ADMIN_USERNAME).")


def _context():
    from tuneloop.app import prepare_database
    from tuneloop.core.settings import get_settings

    settings = get_settings()
    return settings, prepare_database(settings)


def _admin(session, settings, username: str | None):
    from sqlmodel import select

    from tuneloop.core.accounts.models import Account

    name = username or settings.admin_username
    account = session.exec(select(Account).where(Account.username == name)).first()
    if account is None or not account.active:
        fail(f"no active account {name!r}; pass --as with an admin's username")
    return account


def _change(action: str, version_id: str, username: str | None, **kwargs) -> None:
    from registry.models import VersionStatus
    from registry import lifecycle as registry
    from tuneloop.core.db import session_scope

    settings, db = _context()
    try:
        with session_scope(db) as session:
            account = _admin(session, settings, username)
            function = getattr(registry, action)
            args = (session, settings, version_id, account) if action in ("promote", "rollback", "delete") \
                else (session, version_id, account)
            version = function(*args, **kwargs)
            line = f"{version.id} ({version.name}) is now {VersionStatus(version.status).value}"
    except registry.PromotionConflictError as exc:
        fail(str(exc))
    typer.echo(line + ("; API processes follow within %ss" % settings.version_poll_seconds
                       if action in ("promote", "rollback") else ""))


@models_app.command("promote")
def promote(version_id: str, reason: str = typer.Option(None, help="Why; required to override failed gates."),
            as_: str = AS_OPTION) -> None:
    """Put VERSION_ID into production (it needs passing gates, or --reason to override them)."""
    _change("promote", version_id, as_, reason=reason)


@models_app.command("rollback")
def rollback(version_id: str, reason: str = typer.Option(None, help="Why (recorded in the audit log)."),
             as_: str = AS_OPTION) -> None:
    """Return production to an earlier (retired) or approved VERSION_ID."""
    _change("rollback", version_id, as_, reason=reason)


@models_app.command("reject")
def reject(version_id: str, reason: str = typer.Option(..., help="Why the version must not be served."),
           as_: str = AS_OPTION) -> None:
    """Mark a candidate as not to be served."""
    _change("reject", version_id, as_, reason=reason)


@models_app.command("delete")
def delete(version_id: str, yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
           as_: str = AS_OPTION) -> None:
    """Delete a non-production version and its adapter files (its lineage record stays)."""
    if not yes:
        typer.confirm(f"Delete {version_id} and its adapter files?", abort=True)
    _change("delete", version_id, as_)


@models_app.command("show")
def show(version_id: str, as_json: bool = typer.Option(False, "--json", help="Print the full record as JSON.")) -> None:
    """A version with its lineage (parent chain, snapshot, job, gates) and its gate report summary."""
    from registry import lifecycle as registry
    from tuneloop.core.db import session_scope

    _settings, db = _context()
    with session_scope(db) as session:
        data = registry.version_as_dict(session, registry.get_version(session, version_id), detail=True)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    typer.echo(f"{data['id']}  {data['name']}  [{data['status']}]  changed by {data['status_changed_by']} "
               f"at {data['status_changed_at']}")
    typer.echo(f"  snapshot {data['snapshot_id'] or '-'}   job {data['job_id'] or '-'}   adapter {data['adapter_path'] or '-'}")
    report = data["gate_report"]
    if report is None:
        typer.echo("  gates: not run")
    else:
        typer.echo(f"  gates: {'PASSED' if report['passed'] else 'FAILED'} ({report['id']})")
        for name, gate in report["gates"].items():
            typer.echo(f"    {name:<14} {'pass' if gate['passed'] else 'FAIL'}  candidate {gate['candidate_passed']}"
                       f"/{gate['total']}  production {gate['production_passed']}/{gate['total']}")
        for reason in report["reasons"]:
            typer.echo(f"    - {reason}")
        if report["override_reason"]:
            typer.echo(f"    overridden by {report['overridden_by']}: {report['override_reason']}")
    typer.echo("  lineage: " + " ← ".join(f"{v['id']}[{v['status']}]" for v in data["lineage"]))


@models_app.command("gates")
def gates(version_id: str) -> None:
    """Run the evaluation gates on VERSION_ID against production here and now, and print the verdict.

    Minutes on a CPU; each stage is printed. (The API queues them for `tuneloop worker` instead.)
    """
    from engine.backends import servable_settings
    from retrain.gates.service import run_gates

    settings, db = _context()
    report = run_gates(servable_settings(settings), db, version_id,  # on what serves, as the worker gates
                       progress=lambda stage: typer.echo(f"  {stage} …"))
    typer.echo(f"gates {'PASSED' if report.passed else 'FAILED'} for {version_id} (report {report.id})")
    for reason in report.summary.get("reasons", []):
        typer.echo(f"  - {reason}")


@golden_app.command("add")
def golden_add(question: str = typer.Option(..., help="The customer's question."),
               answer: str = typer.Option(..., help="The answer every version must give."),
               fact: list[str] = typer.Option([], "--fact", help="A key fact the answer must contain (repeatable)."),
               as_: str = AS_OPTION) -> None:
    """Add a must-pass question to the golden set."""
    from registry import golden
    from tuneloop.core.db import session_scope

    settings, db = _context()
    with session_scope(db) as session:
        account = _admin(session, settings, as_)
        example = golden.add_golden(session, question=question, answer=answer, key_facts=fact, actor=account.username)
        typer.echo(f"added {example.id}")


@golden_app.command("list")
def golden_list() -> None:
    """The golden set, oldest first."""
    from registry import golden
    from tuneloop.core.db import session_scope

    _settings, db = _context()
    with session_scope(db) as session:
        for example in golden.list_golden(session):
            facts = f"  facts: {', '.join(example.key_facts)}" if example.key_facts else ""
            typer.echo(f"{example.id}  Q: {example.question}\n    A: {example.answer}{facts}")


@golden_app.command("remove")
def golden_remove(golden_id: str, as_: str = AS_OPTION) -> None:
    """Remove a question from the golden set."""
    from registry import golden
    from tuneloop.core.db import session_scope

    settings, db = _context()
    with session_scope(db) as session:
        account = _admin(session, settings, as_)
        golden.remove_golden(session, golden_id, actor=account.username)
    typer.echo(f"removed {golden_id}")


@models_app.command("export")
def export(
    version_id: str = typer.Argument(..., help="The version to export (v0, v3, …; `tuneloop models list`)."),
    format: str = typer.Option("gguf", "--format", help="Only gguf: one standalone file, adapter merged."),
    output: str = typer.Option(".", "--output", "-o", help="A .gguf file path, or a directory for model.gguf."),
    ollama: str = typer.Option(None, "--ollama", help="Also write an Ollama Modelfile into this directory "
                                                      "(the GGUF goes there too): then `ollama create NAME -f Modelfile`."),
) -> None:
    """Write VERSION_ID as a GGUF that llama.cpp, Ollama and LM Studio load (and a Modelfile with --ollama)."""
    from pathlib import Path

    from sqlmodel import Session

    from engine.ollama import export_gguf, write_modelfile
    from registry import lifecycle as registry
    from registry import versions

    if format != "gguf":
        fail(f"--format {format!r} is not supported; use --format gguf")
    settings, db = _context()
    with Session(db) as session:
        version = registry.get_version(session, version_id)
        if version.hosted_model:
            fail(f"{version_id} is served by a hosted API ({version.hosted_model}); there are no weights to export")
        spec = versions.version_spec(version, settings)
    target = Path(ollama) if ollama else Path(output)
    typer.echo(f"writing {version_id} as GGUF (merging its adapter; up to a minute for a new version) …")
    path = export_gguf(spec, settings, target)
    typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB)")
    if ollama:
        from engine.chat_tokenizer import ChatTokenizer, eos_ids

        tokenizer = ChatTokenizer(spec.base_dir)
        stops = tuple(tokenizer.decode([i]) for i in sorted(eos_ids(spec.base_dir, tokenizer)))  # the model's own
        modelfile = write_modelfile(path, Path(ollama), system_prompt=settings.resolved_system_prompt,
                                    chat_template=tokenizer.chat_template, stop_tokens=stops)
        typer.echo(f"wrote {modelfile}; next: cd {ollama} && ollama create {version.name} -f Modelfile")
