"""The admin page's Distill tab: describe the business in one paragraph, choose how many question/answer
pairs, see the estimated tokens and cost, confirm, and the teacher's pairs wait for approval on /staff.
Calls ``feedback.distill.plan`` and ``feedback.distill`` like the CLI (`tuneloop distill task`) and the API
(``/v1/distill/runs``)."""

from __future__ import annotations

import gradio as gr
from fastapi import FastAPI

from feedback.distill import service as distill, plan as distill_plan
from feedback.distill.teacher import TeacherError
from tuneloop.core.db import session_scope
from ui.auth import PageSignIn
from ui.errors import shown_to_user


def distill_tab(app: FastAPI, sign_in: PageSignIn) -> None:
    settings = app.state.settings
    gr.Markdown("A teacher model writes customer questions with ideal answers in your company's voice. "
                "Every pair waits in the approvals queue on /staff until a second person approves it.")
    description = gr.Textbox(label="Describe the business: products, policies, tone (one paragraph)", lines=4,
                             elem_id="distill-description")
    with gr.Row():
        count = gr.Number(20, label="Question/answer pairs", precision=0, minimum=1, maximum=distill_plan.MAX_COUNT)
        estimate = gr.Button("Estimate cost", elem_id="distill-estimate")
        confirm = gr.Button("Confirm and run", variant="primary", interactive=False, elem_id="distill-run")
    result = gr.Markdown(elem_id="distill-result")
    estimated = gr.State(None)  # (description, count) whose estimate the admin saw

    def show_estimate(text, n):
        with shown_to_user():
            plan = distill_plan.plan_task(settings, description=text or "", count=int(n or 0))
        return plan.summary().replace("\n", "  \n"), (text, int(n)), gr.update(interactive=True)

    def run(seen, request: gr.Request, progress=gr.Progress()):
        account = sign_in.account(request)
        if not seen:
            raise gr.Error("Estimate the cost first.")
        with shown_to_user():
            plan = distill_plan.plan_task(settings, description=seen[0], count=seen[1])
            with session_scope(app.state.db) as session:
                run_id = distill.create_run(session, plan, actor=account.username).id
            try:
                done = distill.execute_run(app.state.db, settings, run_id,
                                           on_progress=lambda r: progress(distill.progress_of(r), unit="pairs"))
            except TeacherError as exc:
                raise gr.Error(f"{exc}. Run {run_id} stopped; continue it with `tuneloop distill resume {run_id}`.",
                               print_exception=False) from exc
        return (f"Run `{done.id}` {done.status}: **{done.stored}** pairs wait for approval on /staff "
                f"({done.duplicates} duplicates and {done.malformed} malformed dropped; "
                f"{done.prompt_tokens + done.completion_tokens:,} tokens). {done.message}",
                None, gr.update(interactive=False))

    def changed():  # a new description or count needs a new estimate
        return None, gr.update(interactive=False)

    estimate.click(show_estimate, [description, count], [result, estimated, confirm])
    confirm.click(run, [estimated], [result, estimated, confirm])
    description.change(changed, outputs=[estimated, confirm])
    count.change(changed, outputs=[estimated, confirm])
