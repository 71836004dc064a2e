"""The admin page at ``/admin``: what is in production and where it came from, the candidates with
their gate reports (every changed answer side by side, every regression), promote / reject / rollback,
training history with loss curves, pause / resume of a job, the scheduler, the golden set, and
distillation (``ui.distill``: a teacher writes question/answer pairs from a description, after a cost
estimate).

Callbacks call ``registry.lifecycle``, ``retrain.jobs``, ``retrain.scheduler``, ``registry.golden`` and
``feedback.review``: the same functions as the HTTP API and the CLI. The registry checks the admin role
itself; the page's sign-in only lets admins in.
"""

from __future__ import annotations

import gradio as gr
import pandas as pd
from fastapi import FastAPI

from feedback.review import service as review
from registry import versions as serving, golden, lifecycle as registry
from retrain import scheduler
from retrain.gates import runs as gate_runs
from retrain.jobs import service as jobs
from tuneloop.core.company import is_configured
from tuneloop.core.db import session_scope
from ui.account import password_tab
from ui.auth import PageSignIn
from ui.company import company_tab
from ui.distill import distill_tab
from ui.errors import shown_to_user
from ui.memory_panel import memory_tab
from ui.text import as_text

VERSION_HEADERS = ["id", "name", "status", "parent", "snapshot", "job", "gates", "created"]
ITEM_HEADERS = ["gate", "verdict", "question", "production answer", "candidate answer", "key facts"]
JOB_HEADERS = ["id", "status", "parent", "snapshot", "result", "created", "finished"]
GOLDEN_HEADERS = ["id", "question", "answer", "key facts"]


def build_admin(app: FastAPI, sign_in: PageSignIn) -> gr.Blocks:
    with gr.Blocks(title="Admin — tuneloop") as page:
        header = gr.Markdown(elem_classes="tl-header")
        production = gr.Markdown(elem_id="production")
        seen_production = gr.State(None)  # the production id this admin saw: promotion is compare-and-swap
        first_start = not is_configured(app.state.settings)
        with gr.Tabs(selected="company" if first_start else None):
            with gr.Tab("Versions"):
                versions_table = _versions_tab(app, sign_in, production, seen_production)
            with gr.Tab("Training"):
                jobs_table, schedule = _training_tab(app, sign_in)
            with gr.Tab("Golden set"):
                golden_table = _golden_tab(app, sign_in)
            with gr.Tab("Distill"):
                distill_tab(app, sign_in)
            with gr.Tab("Memory"):
                memory_tab(app, sign_in)
            with gr.Tab("Company", id="company"):
                company_tab(app, sign_in)
            with gr.Tab("Account"):
                password_tab(app, sign_in)

        def load(request: gr.Request):
            account = sign_in.account(request)
            setup = "" if is_configured(app.state.settings) else (
                "\n\n**First start:** no company is set up yet, so the bot names no company and keeps no published "
                "contacts: fill in the Company tab (or run `tuneloop init`).")
            return (f"# Admin\nSigned in as **{account.username}** · [Sign out](/admin/logout){setup}",
                    *_production(app), _version_rows(app), _job_rows(app), _schedule_md(app), _golden_rows(app))

        page.load(load, outputs=[header, production, seen_production, versions_table, jobs_table, schedule,
                                 golden_table])
    return page


# --- versions and promotion ---------------------------------------------------------------------
def _production(app: FastAPI) -> tuple[str, str]:
    """The production summary (markdown) and the production version id."""
    with shown_to_user(), session_scope(app.state.db) as session:
        version = serving.production_version(session)
        detail = registry.version_as_dict(session, version, detail=True)
        backlog = review.review_queue(session, limit=200)
    chain = " ← ".join(
        f"`{v['id']}` (snapshot {v['snapshot_id'] or '—'}, job {v['job_id'] or '—'}, gates "
        f"{ {True: 'passed', False: 'failed', None: '—'}[v['gates_passed']] })" for v in detail["lineage"])
    backlog_n = f"{len(backlog.items)}{'+' if backlog.has_more else ''}"
    served = app.state.runtime.production_id or "loading"
    return (f"**Production:** `{version.id}` {version.name} (this server is serving `{served}`)  \n"
            f"**Lineage** (newest first): {chain}  \n**Review backlog:** {backlog_n} open items in the queue",
            version.id)


def _version_rows(app: FastAPI) -> list[list[str]]:
    with shown_to_user(), session_scope(app.state.db) as session:
        rows, _ = registry.list_versions(session, limit=50)
        out = []
        for v in rows:
            report = registry.gate_report_for(session, v)
            running = gate_runs.open_run_for(session, v.id)
            if running is not None:  # the worker is on it (or will be): say what it is doing
                gates = f"{running.status}: {running.stage}"
            elif report is None:
                gates = "—"
            else:
                gates = ("passed" if report.passed else "FAILED") + (
                    " (overridden)" if report.override_reason else "")
            data = registry.training_data_label(registry.training_data(v))
            out.append([v.id, v.name, str(v.status), v.parent_id or "", data, v.job_id or "", gates,
                        f"{v.created_at:%Y-%m-%d %H:%M}"])
    return out


def _versions_tab(app: FastAPI, sign_in: PageSignIn, production: gr.Markdown, seen: gr.State) -> gr.Dataframe:
    selected = gr.State(None)
    table = gr.Dataframe(headers=VERSION_HEADERS, interactive=False, wrap=True, elem_id="versions",
                         label="Model versions (click one to see its gate report)")
    report = gr.Markdown(elem_id="gate-report")
    items = gr.Dataframe(headers=ITEM_HEADERS, interactive=False, wrap=True, max_height=420, elem_id="gate-items",
                         label="Changed answers and regressions (production vs candidate)")
    with gr.Row():
        reason = gr.Textbox(label="Reason (required to reject, or to promote past failed gates)", scale=3,
                            elem_id="decision-reason")
        promote = gr.Button("Approve and promote", variant="primary", elem_id="promote")
        reject = gr.Button("Reject", variant="stop", elem_id="reject")
        rollback = gr.Button("Roll back to this version", elem_id="rollback")
    result = gr.Markdown(elem_id="admin-result")

    def show(evt: gr.SelectData):
        version_id = (evt.row_value or [None])[0]
        return (version_id, *_report_view(app, version_id), "")

    def decide(action: str):
        def run(version_id, why, expected, request: gr.Request):
            return _decide(app, sign_in, request, action, version_id, why, expected)
        return run

    table.select(show, outputs=[selected, report, items, result])
    for button, action in ((promote, "promote"), (reject, "reject"), (rollback, "rollback")):
        button.click(decide(action), inputs=[selected, reason, seen],
                     outputs=[table, production, seen, result, report, items])
    return table


def _report_view(app: FastAPI, version_id: str) -> tuple[str, list[list[str]]]:
    with shown_to_user(), session_scope(app.state.db) as session:
        version = registry.get_version(session, version_id)
        report = registry.gate_report_for(session, version)
        summary = registry.report_as_dict(report) if report else None
    if summary is None:
        return f"### {version.id}: no gate report yet", []
    lines = [f"### Gate report for {version.id} vs {summary['baseline_version_id']}: "
             f"{'PASSED' if summary['passed'] else 'FAILED'}"]
    lines += [f"- {as_text(reason)}" for reason in summary["reasons"]]  # reasons quote questions
    for gate, result in summary["gates"].items():
        if result.get("measured") is False or not result.get("total"):
            lines.append(f"- **{gate}**: not measured (no questions): does not count as passed")
            continue
        lines.append(f"- **{gate}** ({result.get('status') or ('passed' if result.get('passed') else 'failed')}): "
                     f"candidate {result.get('candidate_passed')}/{result.get('total')}, production "
                     f"{result.get('production_passed')}/{result.get('total')}"
                     + (f"; newly failing: {as_text(', '.join(result['newly_failing']))}"
                        if result.get("newly_failing") else ""))
    held_out = [i for i in summary["items"] if i["gate"] == "generalises"]
    if held_out:  # per item: the phrasings nobody trained on are the point of this gate
        lines.append("\n**Generalises: held-out phrasings of the new corrections (never trained on)**")
        lines += [f"- {'✓' if i['candidate']['passed'] else '✗'} {as_text(i['name'].split(':')[0])}: "
                  f"\"{as_text(i['question'])}\" → \"{as_text(i['candidate']['answer'])}\"" for i in held_out]
    if summary.get("override_reason"):
        lines.append(f"Overridden by {as_text(summary['overridden_by'])}: {as_text(summary['override_reason'])}")
    # Every regression, and every answer that changed; unchanged passing answers are left out.
    changed = [i for i in summary["items"] if i.get("verdict") not in ("both_pass", "unchanged")
               or i["candidate"]["answer"] != i["production"]["answer"] or i["gate"] == "generalises"]
    changed.sort(key=lambda i: i.get("verdict") != "newly_failing")
    rows = [[i["gate"], i.get("verdict", ""), i["question"], i["production"]["answer"], i["candidate"]["answer"],
             "; ".join(i.get("key_facts") or [])] for i in changed]
    return "\n".join(lines), rows


def _decide(app, sign_in, request, action, version_id, reason, expected):
    account = sign_in.account(request)
    if not version_id:
        raise gr.Error("Pick a version in the table first.")
    with shown_to_user(), session_scope(app.state.db) as session:
        if action == "promote":
            # an upstream refusing the adapter (the runtime's prepare) leaves production unchanged
            registry.promote(session, app.state.settings, version_id, account, reason=reason or None,
                             expected_production=expected, prepare=app.state.runtime.prepare)
        elif action == "rollback":
            registry.rollback(session, app.state.settings, version_id, account, reason=reason or None,
                              expected_production=expected, prepare=app.state.runtime.prepare)
        else:
            registry.reject(session, version_id, account, reason)
    done = {"promote": "promoted to production", "rollback": "is production again", "reject": "rejected"}[action]
    return (_version_rows(app), *_production(app), f"`{version_id}` {done}.", *_report_view(app, version_id))


# --- training and scheduler ---------------------------------------------------------------------
def _job_rows(app: FastAPI) -> list[list[str]]:
    with shown_to_user(), session_scope(app.state.db) as session:
        rows, _ = jobs.list_jobs(session, limit=50)
    return [[j.id, str(j.status), j.parent_version_id, j.snapshot_id or "", j.result_version_id or "",
             f"{j.created_at:%Y-%m-%d %H:%M}", f"{j.finished_at:%Y-%m-%d %H:%M}" if j.finished_at else ""]
            for j in rows]


def _schedule_md(app: FastAPI) -> str:
    with shown_to_user(), session_scope(app.state.db) as session:
        state = scheduler.state_as_dict(session, app.state.settings)
    return (f"**Scheduler** (`{state['cron']}`, at least {state['min_new_examples']} new examples): next run "
            f"{state['next_run_at'] or 'not scheduled (is the worker running?)'}; last decision: "
            f"{state['last_decision'] or '—'} ({state['last_tick_at'] or 'never'})")


def _loss_frame(app: FastAPI, job_id: str) -> pd.DataFrame:
    with shown_to_user(), session_scope(app.state.db) as session:
        metrics = jobs.list_metrics(session, job_id)
    rows = [{"step": m.step, "loss": value, "split": split} for m in metrics
            for split, value in (("train", m.train_loss), ("validation", m.valid_loss)) if value is not None]
    return pd.DataFrame(rows, columns=["step", "loss", "split"])


def _training_tab(app: FastAPI, sign_in: PageSignIn) -> tuple[gr.Dataframe, gr.Markdown]:
    schedule = gr.Markdown(elem_id="scheduler")
    with gr.Row():
        train = gr.Button("Train now", variant="primary", elem_id="train-now")
        refresh = gr.Button("Refresh")
    result = gr.Markdown(elem_id="training-result")
    table = gr.Dataframe(headers=JOB_HEADERS, interactive=False, wrap=True, elem_id="jobs",
                         label="Fine-tuning jobs (click one for its loss curve, then pause or resume it)")
    selected = gr.State(None)
    with gr.Row():
        pause = gr.Button("Pause job", elem_id="pause-job")
        resume = gr.Button("Resume job", elem_id="resume-job")
    plot = gr.LinePlot(pd.DataFrame(columns=["step", "loss", "split"]), x="step", y="loss", color="split",
                       title="Loss", elem_id="loss-plot")

    def train_now(request: gr.Request):
        account = sign_in.account(request)
        with shown_to_user(), session_scope(app.state.db) as session:
            job = scheduler.train_now(session, app.state.settings, account.username)
            job_id = job.id
        return _job_rows(app), _schedule_md(app), f"Started `{job_id}`; the worker picks it up."

    def show(evt: gr.SelectData):
        job_id = (evt.row_value or [None])[0]
        return _loss_frame(app, job_id), job_id

    def act(action, done: str):
        def run(job_id, request: gr.Request):
            account = sign_in.account(request)
            if not job_id:
                raise gr.Error("Pick a job in the table first.")
            with shown_to_user(), session_scope(app.state.db) as session:
                action(session, job_id, actor=account.username)
            return _job_rows(app), f"`{job_id}`: {done}"
        return run

    train.click(train_now, outputs=[table, schedule, result])
    refresh.click(lambda: (_job_rows(app), _schedule_md(app)), outputs=[table, schedule])
    table.select(show, outputs=[plot, selected])
    pause.click(act(jobs.pause_job, "pause requested; it pauses at the next step boundary."), inputs=selected,
                outputs=[table, result])
    resume.click(act(jobs.resume_job, "queued; the worker continues it from its checkpoint."), inputs=selected,
                 outputs=[table, result])
    return table, schedule


# --- golden set ---------------------------------------------------------------------------------
def _golden_rows(app: FastAPI) -> list[list[str]]:
    with shown_to_user(), session_scope(app.state.db) as session:
        rows = golden.list_golden(session)
    return [[g.id, g.question, g.answer, "; ".join(g.key_facts)] for g in rows]


def _golden_tab(app: FastAPI, sign_in: PageSignIn) -> gr.Dataframe:
    gr.Markdown("Must-pass questions: a candidate that fails one is not promoted without an override.")
    table = gr.Dataframe(headers=GOLDEN_HEADERS, interactive=False, wrap=True, elem_id="golden")
    with gr.Row():
        question = gr.Textbox(label="Question", scale=2)
        answer = gr.Textbox(label="Answer", scale=2)
        facts = gr.Textbox(label="Key facts (one per line)", lines=2, scale=2)
        add = gr.Button("Add", variant="primary", scale=1)
    with gr.Row():
        remove_id = gr.Textbox(label="Golden example id to remove", scale=3)
        remove = gr.Button("Remove", variant="stop", scale=1)

    def add_example(q, a, f, request: gr.Request):
        account = sign_in.account(request)
        if not (q or "").strip() or not (a or "").strip():
            raise gr.Error("A golden example needs both a question and an answer.")
        with shown_to_user(), session_scope(app.state.db) as session:
            golden.add_golden(session, question=q or "", answer=a or "", key_facts=(f or "").splitlines(),
                              actor=account.username)
        return _golden_rows(app), "", "", ""

    def remove_example(golden_id, request: gr.Request):
        account = sign_in.account(request)
        with shown_to_user(), session_scope(app.state.db) as session:
            golden.remove_golden(session, (golden_id or "").strip(), actor=account.username)
        return _golden_rows(app), ""

    add.click(add_example, inputs=[question, answer, facts], outputs=[table, question, answer, facts])
    remove.click(remove_example, inputs=[remove_id], outputs=[table, remove_id])
    return table
