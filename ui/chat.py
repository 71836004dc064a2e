"""The public web chat at ``/``: an end user asks, the production model answers token by token, and
each answer can be rated (thumbs up/down, optional comment).

The page is a client of the same service functions as the HTTP API: ``bot.conversations`` logs each
turn with the model version that answered, ``feedback.ratings.service.rate_message`` stores the rating. End
users are anonymous: each browser session gets its own ``web_…`` id, used as the conversation's end
user and as the rater.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import gradio as gr
from fastapi import FastAPI

from bot import conversations
from bot.ownership import Caller
from engine.prompting import PromptTooLongError
from engine.protocol import NotReadyError
from feedback.ratings.service import rate_message
from tuneloop.core.db import session_scope
from tuneloop.core.ids import new_id
from ui.text import as_markdown

log = logging.getLogger(__name__)

LIKE, DISLIKE = "Like", "Dislike"
# what correction memory did with the last turn (bot.memory), said under the chat
OUTCOME_NOTES = {"verified": "This answer was written and approved by our support team.",
                 "clarify": "Answer yes (or the number of your question): our approved answer follows; a no goes to our "
                            "support team.",
                 "handoff": "Your question was passed to our support team."}


@dataclass
class ChatSession:
    """What one browser session remembers between events (kept server-side in ``gr.State``)."""

    end_user: str = field(default_factory=lambda: new_id("web"))
    conversation_id: str | None = None
    conversation_token: str | None = None  # the anonymous conversation's secret (bot.ownership)
    # chat history index -> id of the stored assistant message, to rate the right one
    message_ids: dict[int, str] = field(default_factory=dict)
    last_rated: tuple[str, int] | None = None  # (message id, +1/-1), for the optional comment


def build_chat(app: FastAPI) -> gr.Blocks:
    settings = app.state.settings
    name = settings.company_name.strip()
    title = f"{name} — customer service" if name else "Customer service"
    with gr.Blocks(title=title) as page:
        # None until the first event: a callable default would run as a load event, and a question sent
        # while that event's stream closes was lost by gradio's client (seen 1 in 3 in the browser test).
        state = gr.State(None)
        gr.Markdown(f"# {name or 'Customer service'}\nAsk us anything about your order, our products or our policies.",
                    elem_classes="tl-header")
        chatbot = gr.Chatbot(
            label="Chat", height=480, feedback_options=(LIKE, DISLIKE), elem_id="chat", buttons=["copy"],
            placeholder="Ask your question below. Rate each answer with the thumbs under it so we can improve.",
            latex_delimiters=[],  # "$$" in a price list is text, not a formula
        )
        with gr.Row():
            question = gr.Textbox(placeholder="Type your question…", show_label=False, scale=8, autofocus=True,
                                  elem_id="question", submit_btn=False)
            send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
        with gr.Row(visible=False, elem_id="comment-row") as comment_row:
            comment = gr.Textbox(label="Thanks! Tell us more about this answer (optional)", scale=8,
                                 elem_id="rating-comment")
            comment_send = gr.Button("Send comment", scale=1)
        status = gr.Markdown("", elem_classes="tl-status", elem_id="chat-status")
        new_conversation = gr.Button("New conversation", variant="secondary", elem_id="new-conversation")

        def ask(state: ChatSession | None, history: list[dict], text: str):  # a generator: gradio streams it
            yield from _ask(app, state or ChatSession(), history, text)

        ask = dict(fn=ask, inputs=[state, chatbot, question], outputs=[state, chatbot, question, status],
                   show_progress="hidden")
        send.click(**ask)
        question.submit(**ask)

        def rate(state: ChatSession | None, data: gr.LikeData):  # gradio fills ``data`` from the type hint
            return _rate(app, state or ChatSession(), data)

        chatbot.like(rate, inputs=[state], outputs=[state, comment_row, status], show_progress="hidden")
        comment_send.click(lambda state, text: _comment(app, state or ChatSession(), text), inputs=[state, comment],
                           outputs=[state, comment_row, comment, status])
        new_conversation.click(_new_conversation, inputs=[state], outputs=[state, chatbot, comment_row, status])
        chatbot.clear(_new_conversation, inputs=[state], outputs=[state, chatbot, comment_row, status])
    return page


def _ask(app: FastAPI, state: ChatSession, history: list[dict], text: str):
    """Stream one answer into the chat, then log the turn; yields (state, history, textbox, status)."""
    text = (text or "").strip()
    if not text:
        yield state, history, "", ""
        return
    history = [*history, {"role": "user", "content": as_markdown(text)}, {"role": "assistant", "content": ""}]
    yield state, history, "", ""
    answer = ""
    try:
        turn = conversations.start_turn(
            app.state.runtime, messages=[{"role": "user", "content": text}],
            conversation_id=state.conversation_id, channel="web", end_user=state.end_user,
            caller=Caller(token=state.conversation_token),
        )
        for delta in turn:  # the turn is recorded (with its model version) when the loop ends
            answer += delta
            history[-1]["content"] = as_markdown(answer)
            yield state, history, "", ""
    except Exception as exc:  # shown to the user; the details go to the log
        log.exception("web chat answer failed")
        history[-1]["content"] = as_markdown(answer) or "…"
        yield state, history, text, f"**{_user_message(exc)}**"
        return
    state.conversation_id = turn.conversation_id
    state.conversation_token = turn.conversation_token or state.conversation_token
    history[-1]["content"] = as_markdown(turn.text)  # the recorded answer (stop strings removed)
    state.message_ids[len(history) - 1] = turn.message_id
    yield state, history, "", OUTCOME_NOTES.get(turn.memory_outcome or "", "")


def _user_message(exc: Exception) -> str:

    if isinstance(exc, NotReadyError):
        return "The assistant is starting up; please try again in a few seconds."
    if isinstance(exc, PromptTooLongError):
        return "That message is too long for me; please shorten it or start a new conversation."
    return "Sorry, something went wrong while answering. Please try again."


def _rate(app: FastAPI, state: ChatSession, data: gr.LikeData):
    index = data.index if isinstance(data.index, int) else data.index[0]
    message_id = state.message_ids.get(index)
    if message_id is None or data.liked not in (True, False):
        return state, gr.update(), ""
    value = 1 if data.liked else -1
    with session_scope(app.state.db) as session:
        rate_message(session, message_id=message_id, value=value, rater=state.end_user)
    state.last_rated = (message_id, value)
    return state, gr.update(visible=True), "Thanks for your feedback!"


def _comment(app: FastAPI, state: ChatSession, text: str):
    if state.last_rated is None or not (text or "").strip():
        return state, gr.update(visible=False), "", ""
    message_id, value = state.last_rated
    with session_scope(app.state.db) as session:
        rate_message(session, message_id=message_id, value=value, rater=state.end_user, comment=text.strip())
    return state, gr.update(visible=False), "", "Thanks, your comment was sent."


def _new_conversation(state: ChatSession | None):
    """Keep the anonymous id, forget the conversation: the next question starts a new one."""
    fresh = ChatSession(end_user=state.end_user) if state is not None else ChatSession()
    return fresh, [], gr.update(visible=False), ""
