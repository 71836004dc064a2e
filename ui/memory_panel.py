"""The admin page's "Memory" tab: answer selection fitted on this deployment's data, and how verified
replies would do at each probability (``feedback.memory.calibration``, the same report as
``tuneloop memory calibrate``)."""

from __future__ import annotations

import gradio as gr
from fastapi import FastAPI

from feedback.memory.calibration import calibrate, format_table
from tuneloop.core.db import session_scope
from ui.auth import PageSignIn
from ui.errors import shown_to_user


def memory_tab(app: FastAPI, sign_in: PageSignIn) -> None:
    settings = app.state.settings
    gr.Markdown(
        "Verified replies answer with an approved correction's own text when answer selection is confident it is "
        f"the right one. Now: verified {'on' if settings.memory_verified_enabled else 'off'} at probability "
        f"{settings.memory_verified_probability:.2f}, handoff {'on' if settings.memory_handoff_enabled else 'off'}, "
        f"grounded {'on' if settings.memory_grounded_enabled else 'off'}. "
        "Calibration holds each alternative question out in turn, uses logged questions that no correction "
        "covers as negatives, and fits the selector with the production model's scores.")
    with gr.Row():
        target = gr.Number(0.99, label="Target precision (share of verified replies that must be right)",
                           minimum=0.5, maximum=1.0, step=0.005, scale=3)
        run = gr.Button("Calibrate", variant="primary", scale=1, elem_id="calibrate-memory")
    report = gr.Markdown(elem_id="memory-calibration")

    def calibrate_now(precision, request: gr.Request):
        sign_in.account(request)
        return _report(app, float(precision or 0.99))

    run.click(calibrate_now, inputs=[target], outputs=report)


def _report(app: FastAPI, target_precision: float) -> str:
    if not 0.0 < target_precision <= 1.0:
        raise gr.Error("The target precision must be between 0 and 1, e.g. 0.99.")
    with shown_to_user(), session_scope(app.state.db) as session:
        runtime = app.state.runtime
        if runtime.memory is None:
            raise gr.Error("Correction memory is off: set TUNELOOP_MEMORY_ENABLED=true.")
        result = calibrate(session, app.state.settings, runtime.memory, scorer=runtime.answer_scorer(),
                           target_precision=target_precision)
    return f"```\n{format_table(result)}\n```"
