"""Ids and clocks every table uses: prefixed random ids and timezone-aware UTC timestamps.

The lowest module of all: table modules import it, so it imports nothing of tuneloop's."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime


def utcnow() -> datetime:
    """Timezone-aware UTC now (SQLModel stores aware datetimes in UTC on both engines)."""
    return datetime.now(UTC)


def new_id(prefix: str, sep: str = "_") -> str:
    """A prefixed random id (``conv_…``, ``ftjob-…``): readable in logs, unguessable in URLs."""
    return f"{prefix}{sep}{secrets.token_hex(12)}"
