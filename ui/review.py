"""The staff page at ``/staff``: work through the review queue and approve colleagues' corrections.

Queue tab: the answers to look at (thumbs-down first, then rated with a comment, optionally a sample of
the rest), filtered by status and model version; the selected answer's whole conversation; "mark fine"
or a correction (question, answer, key facts, other ways customers ask it, with suggestions from
logged questions, the model and the teacher) submitted for approval. Approvals tab: corrections
submitted by others, with what was masked as personal data and any near-duplicate or conflicting
approved correction, to approve or reject with a reason. Callbacks call ``feedback.review`` and
``feedback.corrections``, the same functions as the HTTP API.
"""

from __future__ import annotations

import gradio as gr
from fastapi import FastAPI

from feedback.corrections import contacts, service as corrections
from feedback.corrections.models import Correction, CorrectionStatus
from feedback.corrections.similarity import find_similar
from feedback.decisions import ReviewStatus
from feedback.phrasings import suggest_phrasings
from feedback.review import service as review
from tuneloop.core.db import session_scope
from ui.account import password_tab
from ui.auth import PageSignIn
from ui.errors import shown_to_user
from ui.text import as_text

QUEUE_HEADERS = ["id", "why", "status", "version", "when", "question", "answer"]
PENDING_HEADERS = ["id", "author", "submitted", "question", "answer"]
STATUS_CHOICES = ["open", "fine", "corrected", "all"]
PAGE_SIZE = 50


def build_review(app: FastAPI, sign_in: PageSignIn) -> gr.Blocks:
    with gr.Blocks(title="Review — tuneloop") as page:
        who = gr.Markdown(elem_classes="tl-header")
        with gr.Tabs():
            with gr.Tab("Review queue", id="queue"):
                load_queue = _queue_tab(app, sign_in)
            with gr.Tab("Approve corrections", id="approve") as approve_tab:
                pending_table = _approval_tab(app, sign_in)
            with gr.Tab("Account", id="account"):
                password_tab(app, sign_in)

        def greeting(request: gr.Request):
            return _greeting(sign_in, request)

        def pending(request: gr.Request):
            return _pending_rows(app, sign_in, request)

        page.load(greeting, outputs=who)
        page.load(**load_queue)
        approve_tab.select(pending, outputs=pending_table)
    return page


def _greeting(sign_in: PageSignIn, request: gr.Request) -> str:
    account = sign_in.account(request)
    return f"# Review\nSigned in as **{account.username}** ({account.role}) · [Sign out](/staff/logout)"


# --- the queue ----------------------------------------------------------------------------------
def _queue_tab(app: FastAPI, sign_in: PageSignIn) -> dict:
    """Build the tab; returns the queue's load event (function, inputs, outputs) for the page load."""
    selected = gr.State(None)  # message id of the answer being reviewed
    with gr.Row():
        status = gr.Dropdown(STATUS_CHOICES, value="open", label="Status", scale=1)
        version = gr.Textbox(label="Model version (empty: all)", placeholder="v3", scale=1)
        sample = gr.Slider(0, 1, value=0, step=0.05, label="Also sample unrated answers (share)", scale=2)
        refresh = gr.Button("Refresh", scale=1)
    table = gr.Dataframe(headers=QUEUE_HEADERS, interactive=False, wrap=True, max_height=320, elem_id="queue",
                         column_widths=["14%", "8%", "7%", "6%", "11%", "27%", "27%"],
                         label="Queue (thumbs-down first; click a row to open it)")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            conversation = gr.Chatbot(label="Conversation", height=360, feedback_options=None, buttons=[],
                                      elem_id="review-conversation")
            details = gr.Markdown(elem_id="review-details")
            fine = gr.Button("Mark fine", elem_id="mark-fine")
        with gr.Column(scale=2):
            gr.Markdown("### Correction\nThe answer the bot should have given.")
            question = gr.Textbox(label="Question", lines=2, elem_id="correction-question")
            answer = gr.Textbox(label="Answer", lines=5, elem_id="correction-answer")
            facts = gr.Textbox(label="Key facts (one per line; the answer must contain them)", lines=3,
                               elem_id="correction-facts")
            alternatives = gr.Textbox(label="Other ways customers ask this (one per line; edit or delete freely)",
                                      lines=3, elem_id="correction-alternatives")
            suggest = gr.Button("Suggest phrasings", size="sm", elem_id="suggest-phrasings")
            submit = gr.Button("Submit correction", variant="primary", elem_id="submit-correction")
    result = gr.Markdown(elem_id="review-result")

    filters = [status, version, sample]
    load_queue = dict(fn=lambda s, v, f: _queue_rows(app, s, v, f), inputs=filters, outputs=table)
    refresh.click(**load_queue)
    for control in filters:
        control.change(**load_queue)

    def open_item(evt: gr.SelectData):
        # the alternatives box is cleared by the same event that fills the form: as a second handler it
        # could land after the author had already typed into it (seen under load in the browser test)
        return (*_open(app, (evt.row_value or [None])[0]), "")

    table.select(open_item, outputs=[selected, conversation, details, question, answer, facts, result, alternatives])

    def suggest_phrasings(q, a, current, request: gr.Request):
        return _suggest(app, sign_in, request, q, a, current)

    suggest.click(suggest_phrasings, inputs=[question, answer, alternatives], outputs=[alternatives, result])

    def mark_fine(message_id, s, v, f, request: gr.Request):
        return _mark_fine(app, sign_in, request, message_id, s, v, f)

    fine.click(mark_fine, inputs=[selected, *filters], outputs=[table, result])

    def submit_correction(message_id, q, a, k, alt, s, v, f, request: gr.Request):
        return _submit(app, sign_in, request, message_id, q, a, k, alt, s, v, f)

    submit.click(submit_correction, inputs=[selected, question, answer, facts, alternatives, *filters],
                 outputs=[table, result, answer, facts, alternatives])
    return load_queue


def _queue_rows(app: FastAPI, status: str, version: str, sample: float) -> list[list[str]]:
    with shown_to_user(), session_scope(app.state.db) as session:
        page = review.review_queue(session, status=None if status == "all" else ReviewStatus(status),
                                   model_version_id=(version or "").strip() or None, sample_unrated=sample,
                                   limit=PAGE_SIZE)
        return [[item.message.id, item.reason.replace("_", " "), item.status.value,
                 item.message.model_version_id or "", f"{item.message.created_at:%Y-%m-%d %H:%M}",
                 _short(_question_of(item)), _short(item.message.content)] for item in page.items]


def _open(app: FastAPI, message_id: str):
    with shown_to_user(), session_scope(app.state.db) as session:
        item = review.review_item(session, message_id)
    # Customers' words are shown as text: as Markdown/HTML an <img> would fetch an attacker's URL.
    turns = [{"role": t.role, "content": as_text(t.content)} for t in item.conversation
             if t.role in ("user", "assistant")]
    ratings = "; ".join(f"{'thumbs up' if r.value > 0 else 'thumbs down'}" + (f" — “{as_text(r.comment)}”" if r.comment else "")
                        for r in item.ratings) or "no ratings"
    corrections_md = "".join(f"\n- correction by {as_text(c.author)}: {c.status}" for c in item.corrections)
    memory = {"verified": " · **verified reply** (the approved text of "
              f"{as_text(', '.join(item.message.memory_correction_ids))}: edit that correction)",
              "grounded": f" · grounded on {as_text(', '.join(item.message.memory_correction_ids))}",
              "clarify": " · asked the customer whether they meant the approved question of one of "
              f"{as_text(', '.join(item.message.memory_correction_ids))}",
              "handoff": " · **handed off** (no approved answer covered it: write one)"}.get(
                  item.message.memory_outcome or "", "")
    details = (f"**{item.reason.replace('_', ' ')}** · {item.status.value} · answered by "
               f"{as_text(item.message.model_version_id)}{memory} · {ratings}{corrections_md}")
    return message_id, turns, details, _question_of(item), "", "", ""


def _mark_fine(app, sign_in, request, message_id, status, version, sample):
    account = sign_in.account(request)
    if not message_id:
        raise gr.Error("Pick an answer in the queue first.")
    with shown_to_user(), session_scope(app.state.db) as session:
        review.mark_fine(session, message_id, actor=account.username)
    return _queue_rows(app, status, version, sample), f"Marked `{message_id}` fine."


def _suggest(app, sign_in, request, question, answer, current):
    """Append suggested phrasings (not yet listed) to the alternatives box; the author edits them."""

    account = sign_in.account(request)
    if not (question or "").strip():
        raise gr.Error("Write the question first; phrasings are suggested for it.")
    draft = Correction(id="corr_draft", lineage_id="corr_draft", question=question.strip(),
                       answer=(answer or "").strip() or question.strip(), author=account.username,
                       alternative_questions=_lines(current))
    withheld = []
    with shown_to_user(), session_scope(app.state.db) as session:
        found, skipped = suggest_phrasings(session, app.state.settings, draft, runtime=app.state.runtime,
                                           withheld=withheld)
    lines = _lines(current) + [s.text for s in found if s.text not in _lines(current)]
    note = f"{len(found)} suggestion(s) added: " + ", ".join(f"{s.source}" for s in found) if found else \
        "No suggestion routes to this question yet."
    if withheld:  # what accepting them would have changed
        note += " Not offered: " + "; ".join(f"“{as_text(s.text)}” asks about: {as_text(s.asks_about)} ({s.reason})"
                                             for s in withheld)
    if skipped:
        note += " Skipped: " + "; ".join(f"{k} ({v})" for k, v in skipped.items())
    return "\n".join(lines), note


def _lines(text: str | None) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def _submit(app, sign_in, request, message_id, question, answer, facts, alternatives, status, version, sample):
    account = sign_in.account(request)
    if not message_id:
        raise gr.Error("Pick an answer in the queue first.")
    key_facts = [line for line in (facts or "").splitlines() if line.strip()]
    with shown_to_user(), session_scope(app.state.db) as session:
        correction = corrections.create_correction(
            session, app.state.settings, actor=account.username, message_id=message_id, question=question,
            answer=answer or "", key_facts=key_facts, status=CorrectionStatus.submitted,
            alternative_questions=_lines(alternatives))
        masked = list(correction.pii_masked)
    undecided = [m for m in masked if m.get("decision") == "pending"]
    done = [m for m in masked if "decision" not in m]
    note = f" Masked as personal data: {', '.join(m['kind'] for m in done)}." if done else ""
    if undecided:
        note += (" Contacts in your answer (" + ", ".join(f"{m['kind']} {as_text(m['value'])}" for m in undecided)
                 + ") stay as written until you or the reviewer keeps them as the company's or masks them.")
    return (_queue_rows(app, status, version, sample),
            f"Correction `{correction.id}` submitted; another staff member will review it.{note}", "", "", "")


def _question_of(item: review.ReviewItem) -> str:
    users = [t.content for t in item.conversation if t.role == "user"]
    return users[-1] if users else ""


def _short(text: str, limit: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- approvals ----------------------------------------------------------------------------------
def _approval_tab(app: FastAPI, sign_in: PageSignIn) -> gr.Dataframe:
    selected = gr.State(None)  # (correction id, etag of the text shown): the approval is of that text
    refresh = gr.Button("Refresh")
    table = gr.Dataframe(headers=PENDING_HEADERS, interactive=False, wrap=True, max_height=320, elem_id="pending",
                         column_widths=["16%", "10%", "12%", "31%", "31%"],
                         label="Submitted corrections waiting for a second person (click a row)")
    details = gr.Markdown(elem_id="pending-details")
    with gr.Row():
        approve = gr.Button("Approve", variant="primary", elem_id="approve-correction")
        reason = gr.Textbox(label="Reason (needed to reject)", scale=3, elem_id="reject-reason")
        reject = gr.Button("Reject", variant="stop", elem_id="reject-correction")
    with gr.Row():
        keep = gr.Button("Keep contacts (they are the company's)", elem_id="keep-contacts")
        mask = gr.Button("Mask contacts (personal data)", elem_id="mask-contacts")
    result = gr.Markdown(elem_id="approve-result")

    def rows(request: gr.Request):
        return _pending_rows(app, sign_in, request)

    def show(evt: gr.SelectData):
        return _pending_details(app, (evt.row_value or [None])[0])

    def decide_approve(correction_id, request: gr.Request):
        return _decide(app, sign_in, request, correction_id, approve=True, reason="")

    def decide_reject(correction_id, why, request: gr.Request):
        return _decide(app, sign_in, request, correction_id, approve=False, reason=why)

    def contacts(action: str):
        def run(selection, request: gr.Request):
            return _decide_contacts(app, sign_in, request, selection, action)
        return run

    refresh.click(rows, outputs=table)
    table.select(show, outputs=[selected, details, result])
    keep.click(contacts("keep"), inputs=[selected], outputs=[selected, details, result])
    mask.click(contacts("mask"), inputs=[selected], outputs=[selected, details, result])
    approve.click(decide_approve, inputs=[selected], outputs=[table, details, result, selected])
    reject.click(decide_reject, inputs=[selected, reason], outputs=[table, details, result, selected])
    return table


def _pending_rows(app: FastAPI, sign_in: PageSignIn, request: gr.Request) -> list[list[str]]:
    """Submitted corrections this person may decide: others' (and their own in one-person teams)."""
    account = sign_in.account(request)
    own_allowed = app.state.settings.allow_self_approval
    with shown_to_user(), session_scope(app.state.db) as session:
        pending, _ = corrections.list_corrections(session, status=CorrectionStatus.submitted, limit=200)
    return [[c.id, c.author, f"{c.updated_at:%Y-%m-%d %H:%M}", _short(c.question), _short(c.answer)]
            for c in pending if own_allowed or c.author != account.username]


def _pending_details(app: FastAPI, correction_id: str):
    with shown_to_user(), session_scope(app.state.db) as session:
        correction = corrections.get_correction(session, correction_id)
        similar = find_similar(session, app.state.settings, correction)
    lines = [f"### {correction.id} (revision {correction.revision}) by {as_text(correction.author)}",
             f"**Question:** {as_text(correction.question)}", f"**Answer:** {as_text(correction.answer)}"]
    if correction.key_facts:
        lines.append("**Key facts:** " + "; ".join(as_text(f) for f in correction.key_facts))
    if correction.alternative_questions:
        lines.append("**Other ways customers ask this** (answered with this text when memory is confident):\n"
                     + "\n".join(f"- {as_text(q)}" for q in correction.alternative_questions))
    undecided = [m for m in correction.pii_masked if m.get("decision") == "pending"]
    masked = [m for m in correction.pii_masked if m.get("decision") in (None, "masked")]
    if undecided:
        lines.append("**Contacts in the answer, not masked yet** (keep them if they are the company's, mask them "
                     "if they are personal data; needed before approval): " + ", ".join(
                         f"{m['kind']} in {m['field']} ({as_text(m['value'])})" for m in undecided))
    if masked:
        lines.append("**Masked as personal data** (check for false positives): " + ", ".join(
            f"{m['kind']} in {m['field']} ({as_text(m['preview'])})" for m in masked))
    elif not undecided:
        lines.append("No personal data was masked.")
    if similar:
        lines.append("**Similar approved corrections:**")
        lines += [f"- {'**CONFLICT** — ' + s.conflict_reason + ': ' if s.conflict else 'near-duplicate: '}"
                  f"“{as_text(_short(s.question))}” → “{as_text(_short(s.answer))}” (`{s.correction_id}`, question similarity "
                  f"{s.question_similarity:.2f})" for s in similar]
    else:
        lines.append("No near-duplicate approved corrections.")
    return (correction_id, corrections.correction_etag(correction)), "\n\n".join(lines), ""


def _decide_contacts(app, sign_in, request, selected, action: str):
    account = sign_in.account(request)
    if not selected:
        raise gr.Error("Pick a correction first.")
    with shown_to_user(), session_scope(app.state.db) as session:
        contacts.decide(session, app.state.settings, corrections.get_correction(session, selected[0]),
                        actor=account.username, action=action)
    shown, details, _ = _pending_details(app, selected[0])
    return shown, details, f"Contacts {'kept as the company’s' if action == 'keep' else 'masked'}; read the text again before approving."


def _decide(app, sign_in, request, selected, *, approve: bool, reason: str):
    account = sign_in.account(request)
    if not selected:
        raise gr.Error("Pick a correction first.")
    correction_id, etag = selected
    with shown_to_user(), session_scope(app.state.db) as session:
        if approve:
            corrections.approve_correction(session, app.state.settings, correction_id, actor=account.username,
                                           etag=etag)
        else:
            corrections.reject_correction(session, app.state.settings, correction_id, actor=account.username,
                                          reason=reason)
    verdict = "approved" if approve else "rejected"
    return _pending_rows(app, sign_in, request), "", f"Correction `{correction_id}` {verdict}.", None
