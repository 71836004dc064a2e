"""HTTP routes of serving: OpenAI-compatible chat completions and models, conversations, health.

Thin: parse, call ``bot.conversations``, answer JSON, an SSE stream or one error envelope.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy import text
from sqlmodel import Session
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from bot import chat_replies, conversations, protocol, resources
from bot.choices import close_others, drain, other_choices
from bot.tools import with_tools
from engine.protocol import Completion
from bot.ownership import Caller, owner_of_new
from registry import versions
from registry.checkpoints import checkpoint_adapters, checkpoint_name
from tuneloop.core.deps import OptionalAccount, SessionDep, StaffAccount
from tuneloop.core.errors import ApiError, generation_error, stream_error_event
from tuneloop.core.metrics import stream_ended, stream_started

router = APIRouter(tags=["serving"])
from bot.completion_routes import router as completion_router  # noqa: E402
router.include_router(completion_router)


# --- chat completions ------------------------------------------------------------------------------
@router.post("/v1/chat/completions", response_model=None)
def chat_completions(body: protocol.ChatCompletionRequest, request: Request, account: OptionalAccount):
    runtime = request.app.state.runtime
    turn = _start(runtime, body, Caller.of(account, body.conversation_token))
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return _SSEResponse(_sse(turn, body, include_usage), media_type="text/event-stream",
                            headers={"Cache-Control": "no-cache"})
    try:
        turn.wait()
        others = [drain(stream) for stream in other_choices(turn.source)]
    except Exception as exc:  # recorded with finish_reason "error"
        raise generation_error(exc) from exc
    return chat_replies.whole_completion(turn, others, body.model, body.tool_use, _stored_ids(turn))


def _stored_ids(turn: conversations.ChatTurn) -> tuple[str | None, str | None]:
    """The conversation and message ids a client can use later: none for a turn sent with store: false
    (only a conversation it continues, which exists)."""
    if turn.store:
        return turn.conversation_id, turn.message_id
    return (None if turn.is_new_conversation else turn.conversation_id), None


def _start(runtime, body: protocol.ChatCompletionRequest, caller: Caller) -> conversations.ChatTurn:
    """Validate and start the turn; every refusal here happens before anything is stored (each error
    names its param: model, conversation_id, messages; 503 while the model loads)."""
    messages = with_tools([m.as_dict() for m in body.messages], body.tool_use, runtime.settings.resolved_system_prompt)
    return conversations.start_turn(
        runtime, messages=messages, params=body.to_sampling_params(runtime.settings),
        model=body.model, conversation_id=body.conversation_id, end_user=body.end_user, channel="api",
        store=body.store is not False, caller=caller,
    )


async def _sse(turn: conversations.ChatTurn, body: protocol.ChatCompletionRequest,
               include_usage: bool) -> AsyncIterator[str]:
    """OpenAI's stream: per choice (one after the other) a role chunk, content chunks (or tool-call
    deltas), a finish chunk; optionally a usage chunk; [DONE]. The blocking decode runs in worker
    threads; if the client goes away, the turn is closed (and recorded with finish_reason "abort")
    by the response below."""
    chunks = protocol.ChunkFactory(body.model, turn.version.id, *_stored_ids(turn), turn.conversation_token)
    stream_started()
    try:
        done = []
        for index, stream in enumerate(chat_replies.choice_streams(turn)):
            async for chunk in iterate_in_threadpool(chat_replies.choice_chunks(chunks, index, stream, body.tool_use)):
                if isinstance(chunk, Completion):
                    done.append(chunk)
                else:
                    yield _event(chunk)
        if include_usage:
            yield _event(chunks.usage(protocol.Usage.of(done[0].prompt_tokens, sum(d.completion_tokens for d in done))))
    except Exception as exc:  # headers are sent: the error goes into the stream, as OpenAI does
        yield stream_error_event(exc)
    finally:
        stream_ended()
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(turn.close)
            await run_in_threadpool(close_others, turn.source)
    yield "data: [DONE]\n\n"


def _event(chunk: protocol.ChatCompletionChunk) -> str:
    return f"data: {chunk.model_dump_json()}\n\n"


class _SSEResponse(StreamingResponse):
    """Closes the body iterator when the client disconnects, so the turn is recorded right away
    rather than whenever the abandoned generator is garbage-collected."""

    async def stream_response(self, send) -> None:
        try:
            await super().stream_response(send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()


# --- models --------------------------------------------------------------------------------------
@router.get("/v1/models", response_model=resources.ModelList)
def list_models(request: Request, session: SessionDep) -> resources.ModelList:
    """Every name chat accepts: the production alias, then each version by id and by name."""
    settings = request.app.state.settings
    production = versions.production_version(session)
    cards = [_card(settings.production_alias, production)]
    for version in versions.servable_versions(session):
        cards += [_card(version.id, version), _card(version.name, version)]
        for step, _directory in checkpoint_adapters(settings, version):
            name = checkpoint_name(version.name, step)
            cards.append(_card(name, versions.resolve_model(session, settings, name)))
    return resources.ModelList(data=cards)


@router.get("/v1/models/{model:path}", response_model=resources.ModelCard)
def retrieve_model(model: str, request: Request, session: SessionDep) -> resources.ModelCard:
    return _card(model, versions.resolve_model(session, request.app.state.settings, model))  # 404 names model


def _card(name: str, version) -> resources.ModelCard:
    owner = "tuneloop" if not (version.adapter_path or version.hosted_model) else "org-tuneloop"
    return resources.ModelCard(id=name, created=protocol.unix(version.created_at), owned_by=owner)


# --- conversations -------------------------------------------------------------------------------
@router.post("/v1/conversations", response_model=resources.ConversationObject, status_code=201)
def create_conversation(body: resources.ConversationCreate, session: SessionDep,
                        account: OptionalAccount) -> resources.ConversationObject:
    """The conversation is the key's account's; without a key, the answer carries its one-time token."""
    owner_id, token = owner_of_new(Caller.of(account))
    conversation = conversations.create_conversation(session, end_user=body.user or "anonymous", title=body.title,
                                                     owner_id=owner_id, token=token)
    session.commit()
    return _conversation(conversation).model_copy(update={"conversation_token": token})


@router.get("/v1/conversations", response_model=resources.ConversationList)
def list_conversations(session: SessionDep, _staff: StaffAccount, limit: int = Query(20, ge=1, le=100),
                       after: str | None = None, user: str | None = None) -> resources.ConversationList:
    """Staff only: conversations hold what customers wrote."""
    try:
        page, has_more = conversations.list_conversations(session, limit=limit, after=after, end_user=user)
    except conversations.UnknownConversationError as exc:
        raise ApiError(400, f"after: {exc}", param="after") from exc
    data = [_conversation(c) for c in page]
    return resources.ConversationList(data=data, first_id=data[0].id if data else None,
                                     last_id=data[-1].id if data else None, has_more=has_more)


@router.get("/v1/conversations/{conversation_id}", response_model=resources.ConversationObject)
def get_conversation(conversation_id: str, session: SessionDep, account: OptionalAccount,
                     x_conversation_token: str | None = Header(None)) -> resources.ConversationObject:
    """Its owner's key, its token (anonymous conversations) or staff; anyone else gets 404 (bot.ownership)."""
    caller = Caller.of(account, x_conversation_token)
    conversation = conversations.get_conversation(session, conversation_id, caller)  # 404 names conversation_id
    messages = conversations.conversation_messages(session, conversation_id)
    return _conversation(conversation, messages)


def _conversation(conversation, messages=None) -> resources.ConversationObject:
    return resources.ConversationObject(
        id=conversation.id, created_at=protocol.unix(conversation.created_at),
        updated_at=protocol.unix(conversation.updated_at), end_user=conversation.end_user,
        channel=conversation.channel, title=conversation.title,
        messages=None if messages is None else [
            resources.MessageObject(
                id=m.id, created_at=protocol.unix(m.created_at), position=m.position, role=m.role,
                content=m.content, model_version_id=m.model_version_id, latency_ms=m.latency_ms,
                prompt_tokens=m.prompt_tokens, completion_tokens=m.completion_tokens, finish_reason=m.finish_reason,
            ) for m in messages
        ],
    )


# --- health --------------------------------------------------------------------------------------
@router.get("/healthz", include_in_schema=False)
def healthz() -> dict:
    """The process is up (liveness)."""
    return {"status": "ok"}


@router.get("/readyz", include_in_schema=False)
def readyz(request: Request) -> JSONResponse:
    """200 when the model is loaded (or the upstream answers) and the database is reachable; else 503
    listing what is missing."""
    runtime = request.app.state.runtime
    missing = []
    if not runtime.ready:
        missing.append(f"model: {runtime.load_error}" if runtime.load_error else "model: still loading")
    try:
        with Session(request.app.state.db) as session:
            session.exec(text("SELECT 1"))
    except Exception as exc:
        missing.append(f"database: {exc.__class__.__name__}: {exc}")
    body = {"status": "ready" if not missing else "not ready", "missing": missing,
            "model_version": runtime.production_id,
            # why this process still serves model_version although production moved (it retries)
            "swap_error": getattr(runtime, "swap_error", None)}
    return JSONResponse(body, status_code=200 if not missing else 503)
