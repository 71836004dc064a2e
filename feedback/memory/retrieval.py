"""Hybrid retrieval over approved corrections: dense (bundled MiniLM) plus lexical (BM25, ``bm25s``).

Each correction contributes several documents: its question, each of its alternative questions and
its answer. A query's score for a correction combines

* ``dense``: the best cosine similarity to the correction's question or one of its alternatives,
  blended with the cosine to its answer (``answer_weight``), and
* ``lexical``: the best BM25 score over the correction's documents, divided by the score a document
  identical to the query would get, so it lies in [0, 1] and an exact rewording scores 1,

as ``(1 - lexical_weight) * dense + lexical_weight * lexical``. Both parts lie in [0, 1] for
realistic text, so thresholds are comparable across deployments of different sizes; calibrate them
with ``tuneloop memory calibrate``. Documents can be left out of one query (``exclude``), which is how
calibration holds a phrasing out of the index it is scored against.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from engine.embeddings import DIMENSIONS, embed

K1, B = 1.5, 0.75  # bm25s defaults (Lucene variant)


@dataclass(frozen=True)
class Entry:
    """One approved correction as the index sees it."""

    correction_id: str
    question: str
    answer: str
    alternatives: tuple[str, ...] = ()


@dataclass(frozen=True)
class Scored:
    correction_id: str
    score: float
    dense: float
    lexical: float

    def as_dict(self) -> dict:
        return {"correction_id": self.correction_id, "score": round(self.score, 4),
                "dense": round(self.dense, 4), "lexical": round(self.lexical, 4)}


@lru_cache(maxsize=1)
def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


def tokenize(texts: Sequence[str]) -> list[list[str]]:
    """Lower-cased, English stop words removed, Snowball-stemmed tokens (bm25s' tokenizer)."""
    import bm25s

    if not texts:
        return []
    return bm25s.tokenize(list(texts), stopwords="en", stemmer=_stemmer(), return_ids=False, show_progress=False)


class HybridIndex:
    """An immutable index over ``entries``; build a new one when the approved set changes.

    ``vector_cache`` (text -> unit vector) lets a rebuild embed only texts it has not seen."""

    def __init__(self, entries: Sequence[Entry], *, lexical_weight: float = 0.10, answer_weight: float = 0.45,
                 vector_cache: dict[str, np.ndarray] | None = None):
        import bm25s

        self.entries = list(entries)
        self.lexical_weight, self.answer_weight = lexical_weight, answer_weight
        texts, owner, is_answer = [], [], []
        for i, entry in enumerate(self.entries):
            for text in (entry.question, *entry.alternatives):
                texts.append(text), owner.append(i), is_answer.append(False)
            texts.append(entry.answer), owner.append(i), is_answer.append(True)
        self.texts = texts
        self.owner, self.is_answer = np.array(owner, dtype=np.int64), np.array(is_answer, dtype=bool)
        cache = vector_cache if vector_cache is not None else {}
        missing = list(dict.fromkeys(t for t in texts if t not in cache))
        if missing:
            cache.update(zip(missing, embed(missing)))
        self.vectors = np.stack([cache[t] for t in texts]) if texts else np.zeros((0, DIMENSIONS), np.float32)
        tokens = tokenize(texts)
        self.doc_lengths = np.array([len(t) for t in tokens], dtype=np.float64)
        self.avg_length = float(self.doc_lengths.mean()) if len(tokens) else 1.0
        self.df = Counter(token for doc in tokens for token in set(doc))
        self.bm25 = None
        if any(tokens):
            self.bm25 = bm25s.BM25(k1=K1, b=B)
            self.bm25.index([doc or ["\u2205"] for doc in tokens], show_progress=False)
            self._vocab = set(self.df)

    def __len__(self) -> int:
        return len(self.entries)

    def doc_ids(self, correction_id: str, text: str) -> list[int]:
        """Indices of the documents of ``correction_id`` with exactly this text (for ``exclude``)."""
        return [d for d, t in enumerate(self.texts)
                if t == text and self.entries[self.owner[d]].correction_id == correction_id]

    def search(self, query: str, *, exclude: Sequence[int] = (), vector: np.ndarray | None = None) -> list[Scored]:
        """Every correction scored against ``query``, best first."""
        if not self.entries or not query.strip():
            return []
        vector = embed([query])[0] if vector is None else vector
        dense_docs = self.vectors @ vector
        lexical_docs = self._lexical(tokenize([query])[0])
        if exclude:
            dense_docs[list(exclude)] = -np.inf
            lexical_docs[list(exclude)] = 0.0
        n = len(self.entries)
        question_best = np.full(n, -np.inf)
        np.maximum.at(question_best, self.owner[~self.is_answer], dense_docs[~self.is_answer])
        answer_sim = np.zeros(n)
        answer_sim[self.owner[self.is_answer]] = np.maximum(dense_docs[self.is_answer], 0.0)
        question_best = np.where(np.isfinite(question_best), question_best, 0.0)
        dense = (1 - self.answer_weight) * question_best + self.answer_weight * answer_sim
        lexical = np.zeros(n)
        np.maximum.at(lexical, self.owner, lexical_docs)
        combined = (1 - self.lexical_weight) * dense + self.lexical_weight * lexical
        order = np.argsort(-combined, kind="stable")
        return [Scored(self.entries[i].correction_id, float(combined[i]), float(dense[i]), float(lexical[i]))
                for i in order]

    def _lexical(self, query_tokens: list[str]) -> np.ndarray:
        """BM25 of every document, normalised by the score of a document identical to the query."""
        scores = np.zeros(len(self.texts))
        unique = list(dict.fromkeys(query_tokens))
        if self.bm25 is None or not unique:
            return scores
        known = [t for t in unique if t in self._vocab]
        if known:
            scores = np.asarray(self.bm25.get_scores(known), dtype=np.float64)
        n = len(self.texts)
        norm = 1.0 / (1.0 + K1 * (1 - B + B * len(query_tokens) / self.avg_length))
        ideal = sum(math.log(1 + (n - self.df.get(t, 0) + 0.5) / (self.df.get(t, 0) + 0.5)) * norm for t in unique)
        return np.clip(scores / ideal, 0.0, 1.0) if ideal > 0 else scores
