"""What can go wrong in the feedback workflow: members of the one error family
(``tuneloop.core.errors``), rendered by its one handler; the CLI prints them as one line. Every
message says what to fix. Named after the package (``FeedbackNotFoundError``, not ``NotFoundError``) so
that none shadows the core error it extends."""

from __future__ import annotations

from tuneloop.core import errors


class FeedbackError(errors.InvalidInputError):
    """Bad input (400)."""


class FeedbackNotFoundError(errors.NotFoundError):
    """No such message, correction or snapshot (404)."""


class FeedbackConflictError(errors.ConflictError, FeedbackError):
    """The object is no longer in a state that allows this (409): already decided, already pending."""


class FeedbackForbiddenError(errors.ForbiddenError):
    """The caller may not do this (403), e.g. approve their own correction."""


class FeedbackTooLargeError(errors.TooLargeError, FeedbackError):
    """An upload over ``settings.max_upload_bytes`` (413)."""
