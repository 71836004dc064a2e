"""``POST /v1/completions`` (legacy completions; see bot.completions). Thin: parse, generate, answer
JSON or an SSE stream in OpenAI's shapes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import iterate_in_threadpool

from bot import completions
from engine.protocol import Completion
from registry import versions
from tuneloop.core.deps import SessionDep
from tuneloop.core.errors import generation_error, stream_error_event

router = APIRouter(tags=["serving"])


@router.post("/v1/completions", response_model=None)
def create_completion(body: completions.CompletionRequest, request: Request, session: SessionDep):
    runtime = request.app.state.runtime
    version = versions.resolve_model(session, runtime.settings, body.model)  # errors name model, prompt or max_tokens
    stream = completions.stream_completion(runtime, version, body.text, body.to_sampling_params(runtime.settings))
    objects = completions.TextCompletionFactory(body.model, version.id)
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_sse(stream, objects, usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    try:
        done = _last(stream)
    except Exception as exc:  # noqa: BLE001
        raise generation_error(exc) from exc
    return objects.whole(done)


def _last(stream: Iterator) -> Completion:
    return next(item for item in stream if isinstance(item, Completion))


async def _sse(stream: Iterator, objects: completions.TextCompletionFactory, include_usage: bool) -> AsyncIterator[str]:
    try:
        done = None
        async for item in iterate_in_threadpool(stream):
            if isinstance(item, Completion):
                done = item
            else:
                yield f"data: {objects.delta(item).model_dump_json()}\n\n"
        yield f"data: {objects.delta('', done.finish_reason, done).model_dump_json()}\n\n"
        if include_usage:
            yield f"data: {objects.usage(done).model_dump_json()}\n\n"
    except Exception as exc:  # noqa: BLE001  (headers are sent: the error goes into the stream)
        yield stream_error_event(exc)
    yield "data: [DONE]\n\n"
