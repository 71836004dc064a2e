"""Bounds on what a request may carry, so that no input reaches the database or the model in a form
they cannot hold: integers beyond a 32-bit column (``sa.Integer`` is int4 on PostgreSQL), dates
that overflow when moved to UTC, empty strings posing as ids, and text with lone UTF-16 surrogates
(``"\\ud800"`` is valid JSON but cannot be encoded, stored or tokenized).

Route parameters use the ``Annotated`` aliases below; ``SurrogateGuard`` checks every JSON body,
so a lone surrogate is a 400 naming the field on every route, whichever model parses it.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import Query
from pydantic import AfterValidator, BeforeValidator
from tuneloop.core.errors import error_body, send_error

MAX_DB_INT = 2**31 - 1  # the largest value an Integer column holds on PostgreSQL (int4)

AfterCursor = Annotated[int, Query(ge=0, le=MAX_DB_INT, alias="after",
                                   description="offset to continue from: the previous page's next_after")]


def _representable(value: datetime) -> datetime:
    """A datetime that survives conversion to UTC (the database compares in UTC): 0001-01-01T00:00+01:00
    is a valid ISO 8601 string but lies before year 1 in UTC."""
    try:
        return value.astimezone(timezone.utc) if value.tzinfo else value
    except OverflowError:
        raise ValueError("date is out of range once converted to UTC; use a date between years 2 and 9998") from None


Timestamp = Annotated[datetime, AfterValidator(_representable)]


def _absent_if_empty(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


OptionalId = Annotated[str | None, BeforeValidator(_absent_if_empty)]
"""An optional id: ``""`` (as form libraries send an unset field) means absent, not the id ``""``."""


# --- lone surrogates -------------------------------------------------------------------------------
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def lone_surrogate_path(value: Any, path: tuple[str, ...] = ()) -> str | None:
    """The dotted path of the first string (or key) holding a lone surrogate, "" for the top level."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return ".".join(path)
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(key, str) and lone_surrogate_path(key, path) is not None:
            return ".".join((*path, key))
        found = lone_surrogate_path(item, (*path, str(key)))
        if found is not None:
            return found
    return None


class SurrogateGuard:
    """ASGI middleware: a JSON body with a lone surrogate is a 400 naming the field. Bodies without
    a ``\\uD8xx``-``\\uDFxx`` escape (nearly all) are only scanned, never parsed twice."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or b"json" not in dict(scope["headers"]).get(b"content-type", b""):
            return await self.app(scope, receive, send)
        messages, more = [], True
        while more:
            message = await receive()
            messages.append(message)
            more = message["type"] == "http.request" and message.get("more_body", False)
        body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")
        field = _field_with_lone_surrogate(body)
        if field is not None:

            where = field or "the request body"
            return await send_error(send, 400, error_body(
                f"{where}: text contains a lone UTF-16 surrogate (e.g. \\ud800), which is not a character; "
                "send valid Unicode (a surrogate pair or the character itself).", "invalid_request_error",
                field or None, "invalid_unicode"))
        replay = iter(messages)

        async def replay_receive():
            return next(replay, None) or await receive()

        await self.app(scope, replay_receive, send)


def _field_with_lone_surrogate(body: bytes) -> str | None:
    if not _SURROGATE_ESCAPE.search(body):
        return None
    try:
        parsed = json.loads(body)
    except ValueError:
        return None  # not JSON: the route's own parsing answers 400
    return lone_surrogate_path(parsed)
