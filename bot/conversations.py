"""Chat turns and their record: the service functions behind the chat API, the web chat and the CLI.

A turn is validated completely (model, conversation, context length) before anything is written, and
recorded in one transaction after the answer ends: the conversation (if new), the request's new
messages and the assistant message with the version that answered, latency, token counts and
``finish_reason``. A rejected request leaves no rows behind.

``finish_reason`` is ``stop`` or ``length`` as in OpenAI's API, plus two of ours: ``abort`` when the
client went away mid-stream (what was produced so far is stored; token counts are unknown and left
empty) and ``error`` when decoding failed part-way.

History: when a request names a stored conversation, the server builds the prompt from the stored
messages. If the request's messages begin with the stored ones (OpenAI clients re-send the full
history), only the rest is new; otherwise all of them are new (clients that send only the new user
message). A system message sent by the client steers this turn and is stored only when it opens a
new conversation.

Typical use from Python (the web chat)::

    turn = start_turn(app.state.runtime, messages=[{"role": "user", "content": "Hi"}],
                      conversation_id=None, channel="web", end_user=session_id)
    for delta in turn:          # text as it is decoded; the turn is recorded when the loop ends
        show(delta)
    turn.conversation_id, turn.message_id, turn.finish_reason
    # then feedback.ratings.service.rate_message(session, message_id=turn.message_id, value="up")
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from sqlalchemy import and_, func, or_
from sqlmodel import Session, select

from bot.memory import CANNED
from bot.models import Conversation, Message
from bot.ownership import ANONYMOUS, Caller, may_access, owner_of_new, token_hash
from engine.protocol import Completion, SamplingParams
from registry import versions
from registry.models import ModelVersion
from tuneloop.core import errors
from tuneloop.core.db import session_scope
from tuneloop.core.ids import new_id, utcnow
from tuneloop.core.metrics import observe_generation

log = logging.getLogger(__name__)

TITLE_CHARS = 80


class UnknownConversationError(errors.NotFoundError):
    param = "conversation_id"


class NoNewMessageError(errors.InvalidInputError):
    param = "messages"


# --- conversations ------------------------------------------------------------------------------
def create_conversation(session: Session, *, end_user: str = "anonymous", channel: str = "api",
                        title: str = "", conversation_id: str | None = None, owner_id: str | None = None,
                        token: str | None = None) -> Conversation:
    """``owner_id`` or ``token`` decide who may open it later (``bot.ownership``)."""
    conversation = Conversation(id=conversation_id or new_id("conv"), end_user=end_user or "anonymous",
                                channel=channel, title=title, owner_id=owner_id,
                                token_hash=token_hash(token) if token else None)
    session.add(conversation)
    session.flush()
    return conversation


def get_conversation(session: Session, conversation_id: str, caller: Caller | None = None) -> Conversation:
    """The conversation, if ``caller`` may open it (None: the server itself). One that exists but is not
    the caller's answers the same 404 as a missing one, so ids cannot be probed."""
    conversation = session.get(Conversation, conversation_id)
    if conversation is None or (caller is not None and not may_access(conversation, caller)):
        raise UnknownConversationError(f"No conversation {conversation_id!r}; start one without conversation_id.")
    return conversation


def conversation_messages(session: Session, conversation_id: str) -> list[Message]:
    return list(session.exec(
        select(Message).where(Message.conversation_id == conversation_id).order_by(Message.position)
    ))


def list_conversations(session: Session, *, limit: int = 20, after: str | None = None,
                       end_user: str | None = None) -> tuple[list[Conversation], bool]:
    """Newest first. ``after`` is the id of the last conversation of the previous page.
    Returns the page and whether more follow."""
    query = select(Conversation)
    if end_user is not None:
        query = query.where(Conversation.end_user == end_user)
    if after is not None:
        cursor = get_conversation(session, after)
        query = query.where(or_(
            Conversation.created_at < cursor.created_at,
            and_(Conversation.created_at == cursor.created_at, Conversation.id < cursor.id),
        ))
    rows = list(session.exec(
        query.order_by(Conversation.created_at.desc(), Conversation.id.desc()).limit(limit + 1)
    ))
    return rows[:limit], len(rows) > limit


# --- turns ----------------------------------------------------------------------------------------
def split_new_messages(stored: list[dict[str, str]], sent: list[dict[str, str]]) -> list[dict[str, str]]:
    """The messages of ``sent`` not yet stored (system messages are compared out; see module doc)."""
    stored_turns = [m for m in stored if m["role"] != "system"]
    sent_turns = [m for m in sent if m["role"] != "system"]
    if len(sent_turns) > len(stored_turns) and sent_turns[: len(stored_turns)] == stored_turns:
        return sent_turns[len(stored_turns):]
    return sent_turns


@dataclass
class ChatTurn:
    """One request and its answer. Iterate it for text deltas; it is recorded when the iteration ends
    (or when ``close()`` is called early: ``finish_reason`` "abort")."""

    db: object  # sqlalchemy Engine
    version: ModelVersion
    conversation_id: str
    is_new_conversation: bool
    new_messages: list[dict[str, str]]
    end_user: str
    channel: str
    source: Iterator[str | Completion] | None = None
    memory_correction_ids: list[str] = field(default_factory=list)
    memory_outcome: str | None = None  # verified | clarify | handoff | grounded | none; None when memory is off
    memory_scores: list[dict] = field(default_factory=list)
    store: bool = True  # False (OpenAI's ``store``): nothing is written, the turn leaves no trace
    owner_id: str | None = None  # a new conversation's owner (bot.ownership) ...
    conversation_token: str | None = None  # ... or its token, for an anonymous caller: shown to it once
    message_id: str = field(default_factory=lambda: new_id("msg"))
    text: str = ""
    completion: Completion | None = None
    finish_reason: str | None = None
    latency_ms: int | None = None
    recorded: bool = False
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None

    def __post_init__(self) -> None:
        self._deltas = self._run()

    def __iter__(self) -> Iterator[str]:
        return self._deltas

    def close(self) -> None:
        """Stop early (client went away); records what was produced so far."""
        self._deltas.close()
        if not self.recorded:  # never started: a generator closed before its first step runs no finally
            self.finish_reason = "abort"
            self._record()

    def wait(self) -> "ChatTurn":
        """Consume the whole answer (non-streaming use)."""
        for _ in self:
            pass
        return self

    def _run(self) -> Iterator[str]:
        self.finish_reason = "abort"
        try:
            for item in self.source:
                if isinstance(item, Completion):
                    self.completion = item
                    self.finish_reason = item.finish_reason
                else:
                    if self.first_token_at is None:
                        self.first_token_at = time.perf_counter()
                    self.text += item
                    yield item
        except Exception:
            self.finish_reason = "error"
            raise
        finally:
            close = getattr(self.source, "close", None)
            if close is not None:
                close()  # an upstream HTTP stream is released now, not when garbage-collected
            self._record()

    def _record(self) -> None:
        if self.recorded:
            return
        self.latency_ms = int((time.perf_counter() - self.started) * 1000)
        if self.completion is not None:
            self.text = self.completion.text
        if not self.store:
            self.recorded = True
            observe_generation(self.version.id, self.completion.completion_tokens if self.completion else 0,
                               self.first_token_at - self.started if self.first_token_at else None)
            return
        try:
            with session_scope(self.db) as session:
                record_turn(session, self)
            self.recorded = True
            observe_generation(self.version.id, self.completion.completion_tokens if self.completion else 0,
                               self.first_token_at - self.started if self.first_token_at else None)
        except Exception:
            log.exception("could not record turn %s of conversation %s", self.message_id, self.conversation_id)
            raise


def record_turn(session: Session, turn: ChatTurn) -> Message:
    """Write the turn (conversation if new, new messages, assistant answer) in the caller's transaction."""
    if turn.is_new_conversation:
        first_user = next((m["content"] for m in turn.new_messages if m["role"] == "user"), "")
        conversation = create_conversation(session, end_user=turn.end_user, channel=turn.channel,
                                           title=first_user[:TITLE_CHARS], conversation_id=turn.conversation_id,
                                           owner_id=turn.owner_id, token=turn.conversation_token)
    else:
        conversation = get_conversation(session, turn.conversation_id)
        conversation.updated_at = utcnow()
        session.add(conversation)
    position = session.exec(
        select(func.coalesce(func.max(Message.position), -1)).where(Message.conversation_id == conversation.id)
    ).one() + 1
    for message in turn.new_messages:
        session.add(Message(conversation_id=conversation.id, position=position, role=message["role"],
                            content=message["content"]))
        position += 1
    done = turn.completion
    answer = Message(
        id=turn.message_id, conversation_id=conversation.id, position=position, role="assistant",
        content=turn.text, model_version_id=turn.version.id, latency_ms=turn.latency_ms,
        prompt_tokens=done.prompt_tokens if done else None, completion_tokens=done.completion_tokens if done else None,
        finish_reason=turn.finish_reason, memory_correction_ids=list(turn.memory_correction_ids),
        memory_outcome=turn.memory_outcome, memory_scores=list(turn.memory_scores),
    )
    session.add(answer)
    session.flush()
    return answer


def start_turn(runtime, *, messages: list[dict[str, str]], params: SamplingParams | None = None,
               model: str | None = None, conversation_id: str | None = None, end_user: str | None = None,
               channel: str = "api", store: bool = True, caller: Caller = ANONYMOUS) -> ChatTurn:
    """Validate a chat turn and start decoding it; nothing is written until the answer ends
    (and nothing at all with ``store=False``).

    Correction memory decides the turn's outcome first (``bot.memory``): ``verified`` streams the
    approved answer itself, ``handoff`` the honest handoff reply, ``grounded`` puts approved answers
    into the system prompt, ``none`` leaves the model alone. The outcome, the corrections used and the best scores are recorded on the message.

    ``caller`` must be allowed to continue ``conversation_id`` (``bot.ownership``); a new conversation
    becomes its account's, or gets a token (``ChatTurn.conversation_token``) when it has none.

    ``runtime`` is ``app.state.runtime``. ``model`` defaults to the production alias. Raises
    ``versions.UnknownModelError``, ``UnknownConversationError``, ``NoNewMessageError``,
    ``engine.prompting.PromptTooLongError`` or ``engine.protocol.NotReadyError`` before any row is written.
    """
    settings = runtime.settings
    with Session(runtime.db) as session:
        # "" is a name like any other (and names no model): only an absent model means production
        version = served_version(session, runtime, settings.production_alias if model is None else model)
        if conversation_id is not None:
            conversation = get_conversation(session, conversation_id, caller)
            stored = [{"role": m.role, "content": m.content} for m in conversation_messages(session, conversation_id)]
            end_user = end_user or conversation.end_user
        else:
            stored = []
    new = split_new_messages(stored, messages) if conversation_id else list(messages)
    if not any(m["role"] == "user" for m in new):
        raise NoNewMessageError("messages: no new user message after the stored conversation")
    if conversation_id is None:
        prompt = list(messages)  # system and developer messages stay where the caller put them
    else:  # the request's system messages (all of them, in order) replace the stored ones
        system = [m for m in messages if m["role"] == "system"]
        prompt = system + [m for m in stored if m["role"] != "system" or not system] + \
            [m for m in new if m["role"] != "system"]
    params = params or SamplingParams(max_tokens=settings.max_tokens, temperature=settings.temperature,
                                      top_p=settings.top_p, repetition_ngram=settings.repetition_guard_ngram)
    # a reply held to a grammar (JSON, a required tool call), with logprobs or with logit_bias must be
    # decoded (and its logit_bias checked against the vocabulary): no canned answer from memory
    decoded = params.grammar is not None or params.logprobs is not None or bool(params.logit_bias)
    decision = None if decoded else runtime.recall(prompt, version)
    if decision is not None and decision.outcome in CANNED:  # the approved answer, or the handoff reply
        source = runtime.verified(version, prompt, decision.answer, params)
    else:
        source = runtime.stream(version, prompt, params, memory=decision.context if decision else "")
    owner_id, token = owner_of_new(caller) if conversation_id is None and store else (None, None)
    return ChatTurn(
        db=runtime.db, version=version, conversation_id=conversation_id or new_id("conv"),
        is_new_conversation=conversation_id is None,
        new_messages=new if conversation_id else list(messages),
        end_user=end_user or "anonymous", channel=channel, source=source,
        memory_correction_ids=decision.correction_ids if decision else [],
        memory_outcome=decision.outcome if decision else None,
        memory_scores=decision.logged_scores() if decision else [], store=store,
        owner_id=owner_id, conversation_token=token,
    )


def served_version(session: Session, runtime, model: str) -> ModelVersion:
    """The version a ``model`` name means now. The production alias means what this process is serving
    (it follows the pointer within ``version_poll_seconds``), so answers never wait on a reload."""
    if model == runtime.settings.production_alias and runtime.production_id is not None:
        return session.get(ModelVersion, runtime.production_id)
    return versions.resolve_model(session, runtime.settings, model)
