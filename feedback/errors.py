"""What can go wrong in the feedback workflow. The API maps these to status codes (routes.py) and
the CLI prints them as one line; every message says what to fix."""

from __future__ import annotations

from contextlib import contextmanager
from tuneloop.core import errors


class FeedbackError(errors.InvalidInputError):
    """Bad input (400)."""


class NotFoundError(errors.NotFoundError):
    """No such message, correction or snapshot (404)."""


class ConflictError(errors.ConflictError, FeedbackError):
    """The object is no longer in a state that allows this (409): already decided, already pending."""


class ForbiddenError(errors.ForbiddenError):
    """The caller may not do this (403), e.g. approve their own correction."""


class TooLargeError(errors.TooLargeError, FeedbackError):
    """An upload over ``settings.max_upload_bytes`` (413)."""


@contextmanager
def http_errors():
    """Turn service errors into API errors (OpenAI's envelope) inside a route."""
    from tuneloop.core.accounts.service import AccountError
    from tuneloop.core.errors import ApiError

    try:
        yield
    except TooLargeError as exc:
        raise ApiError(413, str(exc), type="request_too_large") from exc
    except ConflictError as exc:
        raise ApiError(409, str(exc), type="conflict_error") from exc
    except (FeedbackError, AccountError) as exc:
        raise ApiError(400, str(exc)) from exc
    except NotFoundError as exc:
        raise ApiError(404, str(exc), type="not_found_error") from exc
    except ForbiddenError as exc:
        raise ApiError(403, str(exc), type="permission_error") from exc
