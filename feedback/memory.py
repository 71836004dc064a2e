"""Correction memory: approved corrections help the next customer before any retraining.

Approved corrections' questions are embedded (bundled all-MiniLM-L6-v2) into an in-memory index.
When a user's question is near one (cosine ≥ ``memory_threshold``), serving adds the corrected answer
to the model's context. Each API process refreshes its index by polling a cheap fingerprint of the
approved set (count and latest decision time), so an approval is in effect within seconds everywhere.
Gates evaluate candidates with memory off, so weights and memory can be told apart.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from feedback.models import Correction, CorrectionStatus
from tuneloop.core.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemoryHit:
    correction_id: str
    question: str
    answer: str
    score: float


class CorrectionMemory:
    def __init__(self, settings: Settings, db: Engine, *, refresh_seconds: float = 2.0):
        self.settings = settings
        self.db = db
        self.refresh_seconds = refresh_seconds
        self._fingerprint: tuple | None = None
        self._checked_at = 0.0
        self._ids: list[str] = []
        self._rows: dict[str, tuple[str, str]] = {}
        self._vectors = np.zeros((0, 384), dtype=np.float32)
        self._cache: dict[str, np.ndarray] = {}  # correction id -> vector, so refreshes embed only new ones
        self._lock = threading.Lock()

    def _current_fingerprint(self, session: Session) -> tuple:
        count, latest = session.exec(
            select(func.count(Correction.id), func.max(Correction.decided_at)).where(
                Correction.status == CorrectionStatus.approved
            )
        ).one()
        return count, str(latest)

    def refresh(self, *, force: bool = False) -> None:
        """Rebuild the index if the approved set changed (checked at most every refresh_seconds)."""
        now = time.monotonic()
        if not force and now - self._checked_at < self.refresh_seconds:
            return
        self._checked_at = now
        with Session(self.db) as session:
            fingerprint = self._current_fingerprint(session)
            if fingerprint == self._fingerprint:
                return
            rows = session.exec(
                select(Correction.id, Correction.question, Correction.answer).where(
                    Correction.status == CorrectionStatus.approved
                )
            ).all()
        from engine.embeddings import embed

        new = [(cid, q) for cid, q, _ in rows if cid not in self._cache]
        if new:
            vectors = embed([q for _, q in new])
            self._cache.update({cid: vec for (cid, _), vec in zip(new, vectors)})
        with self._lock:
            self._ids = [cid for cid, _, _ in rows]
            self._rows = {cid: (q, a) for cid, q, a in rows}
            self._vectors = (
                np.stack([self._cache[cid] for cid in self._ids]).astype(np.float32)
                if self._ids else np.zeros((0, 384), dtype=np.float32)
            )
            self._fingerprint = fingerprint

    def lookup(self, question: str, *, limit: int | None = None) -> list[MemoryHit]:
        if not self.settings.memory_enabled or not question.strip():
            return []
        self.refresh()
        with self._lock:
            if not self._ids:
                return []
            ids, vectors, rows = self._ids, self._vectors, self._rows
        from engine.embeddings import embed

        scores = vectors @ embed([question])[0]
        order = np.argsort(-scores)[: limit or self.settings.memory_max_hits]
        return [
            MemoryHit(ids[i], rows[ids[i]][0], rows[ids[i]][1], float(scores[i]))
            for i in order if scores[i] >= self.settings.memory_threshold
        ]


    def context_for(self, question: str) -> tuple[str, list[str]]:
        """What serving adds to the system prompt for ``question``, and which corrections it used."""
        hits = self.lookup(question)
        return (memory_context(hits), [hit.correction_id for hit in hits]) if hits else ("", [])


def memory_context(hits: list[MemoryHit]) -> str:
    """The text added to the system prompt: verified answers the model should rely on."""
    lines = ["Verified answers from our support team (use them when they answer the question):"]
    for hit in hits:
        lines.append(f"Q: {hit.question}\nA: {hit.answer}")
    return "\n".join(lines)
