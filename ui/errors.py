"""Service errors shown to the person at the page: the message (which says what to fix) becomes a
gradio error toast instead of a stack trace."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import gradio as gr

log = logging.getLogger(__name__)


def _expected_errors() -> tuple[type[Exception], ...]:
    """Errors whose message is meant for the user: feedback, accounts, and (once they exist) the
    registry's and the scheduler's own error types."""
    from feedback.errors import ConflictError, FeedbackError, ForbiddenError, NotFoundError
    from tuneloop.accounts.service import AccountError

    found: list[type[Exception]] = [FeedbackError, ConflictError, ForbiddenError, NotFoundError, AccountError]
    for module, names in (("bot.versions", ("ConcurrentChangeError", "UnknownModelError")),
                          ("bot.upstream", ("UpstreamAdapterError",)),
                          ("retrain.registry", ("RegistryError", "VersionNotFoundError", "PromotionConflictError",
                                                "NotAdminError")),
                          ("retrain.jobs", ("JobError", "JobNotFoundError")),
                          ("retrain.golden", ("GoldenNotFoundError",))):
        try:
            imported = __import__(module, fromlist=list(names))
        except ImportError:
            continue
        found += [getattr(imported, n) for n in names if isinstance(getattr(imported, n, None), type)]
    return tuple(found)


@contextmanager
def shown_to_user() -> Iterator[None]:
    try:
        yield
    except gr.Error:
        raise
    except _expected_errors() as exc:
        raise gr.Error(str(exc), print_exception=False) from exc
    except Exception as exc:
        log.exception("UI action failed")
        raise gr.Error("Something went wrong; the details are in the server log.", print_exception=False) from exc
