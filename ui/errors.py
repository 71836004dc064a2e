"""Service errors shown to the person at the page: the message of any ``TuneloopError`` (which says
what to fix) becomes a gradio error toast instead of a stack trace."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import gradio as gr

from tuneloop.core.errors import TuneloopError

log = logging.getLogger(__name__)


@contextmanager
def shown_to_user() -> Iterator[None]:
    try:
        yield
    except gr.Error:
        raise
    except TuneloopError as exc:
        raise gr.Error(str(exc), print_exception=False) from exc
    except Exception as exc:
        log.exception("UI action failed")
        raise gr.Error("Something went wrong; the details are in the server log.", print_exception=False) from exc
