"""Is a question about the company? The decision between a handoff and letting the model answer alone.

Retrieval scores alone cannot tell: with few corrections, "Hello!" scores as high against the nearest
one as an uncovered shop question does. A question is about the company when it is nearer to what
customers ask companies than to small talk and general knowledge: its best cosine (bundled MiniLM)
to the questions a company's support gets (``topic_data/service.txt``, a list across trades, plus this
deployment's approved questions and phrasings) minus its best cosine to small talk and general
questions (``topic_data/general.txt``). ``memory_topic_threshold`` is the margin at or above which it
is; chosen by ``bench/selection.py`` on three knowledge bases of different trades, against questions
disjoint from both lists.
"""

from __future__ import annotations

import threading
from functools import cached_property
from pathlib import Path

import numpy as np

from engine.embeddings import embed

DATA = Path(__file__).parent / "topic_data"


def _lines(name: str) -> list[str]:
    text = (DATA / name).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


class TopicReference:
    """The two bundled reference sets, embedded once per process on first use."""

    _lock = threading.Lock()

    @cached_property
    def service(self) -> np.ndarray:
        with self._lock:
            return embed(_lines("service.txt"))

    @cached_property
    def general(self) -> np.ndarray:
        with self._lock:
            return embed(_lines("general.txt"))

    def score(self, vector: np.ndarray, company_questions: np.ndarray) -> float:
        """Best similarity to company questions (bundled and approved) minus best to general ones."""
        company = float((self.service @ vector).max())
        if len(company_questions):
            company = max(company, float((company_questions @ vector).max()))
        return company - float((self.general @ vector).max())


REFERENCE = TopicReference()
