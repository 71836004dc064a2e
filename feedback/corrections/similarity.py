"""Near-duplicate and conflict detection for corrections, so a reviewer sees before approving that
the same question already has an approved answer, and whether the two answers disagree.

The index holds one unit vector per approved correction's question (all-MiniLM-L6-v2), so a lookup
is one matrix-vector product, fast for tens of thousands of corrections. Vectors are cached by
correction id in ``data_dir/similarity/questions.npz``; approved corrections never change text (an
edit makes a new revision with a new id), so a cached vector never goes stale and each ``sync``
embeds only the corrections approved since the last one. The file is replaced atomically.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlmodel import Session, col, select

from engine.embeddings import DIMENSIONS, embed
from feedback.corrections.models import Correction, CorrectionStatus
from tuneloop.core.settings import Settings

_NUMBER_RE = re.compile(r"\d+(?:[.,:]\d+)*")
_memory: dict[Path, tuple[float, list[str], np.ndarray]] = {}
_lock = threading.Lock()


@dataclass
class SimilarCorrection:
    correction_id: str
    lineage_id: str
    question: str
    answer: str
    question_similarity: float
    answer_similarity: float
    conflict: bool
    conflict_reason: str

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def index_path(settings: Settings) -> Path:
    return settings.data_dir / "similarity" / "questions.npz"


def sync_index(session: Session, settings: Settings) -> tuple[list[str], np.ndarray]:
    """Ids and question vectors of every currently approved correction, embedding only new ones."""
    rows = session.exec(select(Correction.id, Correction.question)
                        .where(Correction.status == CorrectionStatus.approved)).all()
    wanted = dict(rows)
    with _lock:
        ids, matrix = _load(index_path(settings))
        known = {cid: i for i, cid in enumerate(ids)}
        missing = [cid for cid in wanted if cid not in known]
        if not missing and len(known) == len(wanted):
            return ids, matrix
        keep = [cid for cid in ids if cid in wanted]
        parts = [matrix[[known[c] for c in keep]]] if keep else []
        if missing:
            parts.append(embed([wanted[c] for c in missing]))
        ids = keep + missing
        matrix = np.concatenate(parts) if parts else np.zeros((0, DIMENSIONS), dtype=np.float32)
        _save(index_path(settings), ids, matrix)
        return ids, matrix


def find_similar(session: Session, settings: Settings, correction: Correction, *,
                 limit: int = 5) -> list[SimilarCorrection]:
    """Approved corrections of other lineages whose question is a near-duplicate of this one's,
    most similar first, each marked as a conflict when the answers disagree."""
    ids, matrix = sync_index(session, settings)
    if not ids:
        return []
    scores = matrix @ embed([correction.question])[0]
    order = np.argsort(-scores)
    hits = [(ids[i], float(scores[i])) for i in order if scores[i] >= settings.duplicate_question_threshold]
    others = {c.id: c for c in session.exec(select(Correction).where(
        col(Correction.id).in_([cid for cid, _ in hits]))).all()} if hits else {}
    matches = [(others[cid], score) for cid, score in hits
               if cid in others and others[cid].lineage_id != correction.lineage_id][:limit]
    if not matches:
        return []
    answers = embed([correction.answer] + [m.answer for m, _ in matches])
    result = []
    for (other, score), vector in zip(matches, answers[1:]):
        answer_sim = float(vector @ answers[0])
        reason = conflict_reason(correction.answer, other.answer, answer_sim, settings.conflict_answer_threshold)
        result.append(SimilarCorrection(other.id, other.lineage_id, other.question, other.answer,
                                        round(score, 4), round(answer_sim, 4), bool(reason), reason))
    return result


def conflict_reason(answer: str, other: str, answer_similarity: float, threshold: float) -> str:
    """Why two answers to the same question disagree, or "" when they agree."""
    mine, theirs = numbers_in(answer), numbers_in(other)
    if mine and theirs and not (mine <= theirs or theirs <= mine):
        return f"the answers cite different numbers ({', '.join(sorted(mine))} vs {', '.join(sorted(theirs))})"
    if answer_similarity < threshold:
        return f"the answers say different things (similarity {answer_similarity:.2f} < {threshold:.2f})"
    return ""


def numbers_in(text: str) -> set[str]:
    return {n.replace(",", "") for n in _NUMBER_RE.findall(text)}


def _load(path: Path) -> tuple[list[str], np.ndarray]:
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return [], np.zeros((0, DIMENSIONS), dtype=np.float32)
    cached = _memory.get(path)
    if cached and cached[0] == mtime:
        return cached[1], cached[2]
    with np.load(path, allow_pickle=False) as data:
        ids, matrix = [str(i) for i in data["ids"]], data["vectors"].astype(np.float32)
    _memory[path] = (mtime, ids, matrix)
    return ids, matrix


def _save(path: Path, ids: list[str], matrix: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.npz")
    np.savez(staging, ids=np.array(ids, dtype=str), vectors=matrix)
    os.replace(staging, path)
    _memory[path] = (path.stat().st_mtime, ids, matrix)


# --- deduplication of generated questions (feedback.distill) ------------------------------------
LIVE_STATUSES = (CorrectionStatus.draft, CorrectionStatus.submitted, CorrectionStatus.approved)
PARAPHRASE_IDENTICAL_THRESHOLD = 0.97


class QuestionIndex:
    """The questions already in the data (approved, submitted and draft corrections) as unit vectors,
    each with its split group (its lineage; a paraphrase's parent lineage). Approved questions come
    from the similarity index's cache; pending ones are embedded once per run."""

    def __init__(self, vectors: np.ndarray, groups: list[str | None]):
        self.vectors, self.groups = vectors, groups

    @classmethod
    def load(cls, session: Session, settings: Settings) -> QuestionIndex:
        ids, matrix = sync_index(session, settings)
        live = {c.id: c for c in session.exec(select(Correction).where(col(Correction.status).in_(LIVE_STATUSES)))}
        keep = [i for i, cid in enumerate(ids) if cid in live]
        pending = [c for c in live.values() if c.status != CorrectionStatus.approved]
        vectors = np.concatenate([matrix[keep], embed([c.question for c in pending])])
        return cls(vectors, [live[ids[i]].split_key for i in keep] + [c.split_key for c in pending])

    def is_duplicate(self, vector: np.ndarray, threshold: float, *, group: str | None = None) -> bool:
        """Too close to a known question; a paraphrase (``group``: its parent's lineage) only has to
        differ from its own group by ``PARAPHRASE_IDENTICAL_THRESHOLD``."""
        if not self.groups:
            return False
        scores = self.vectors @ vector
        same = np.array([g is not None and g == group for g in self.groups])
        return bool(((scores >= threshold) & ~same).any() or ((scores >= PARAPHRASE_IDENTICAL_THRESHOLD) & same).any())

    def add(self, vector: np.ndarray, group: str | None) -> None:
        self.vectors = np.vstack([self.vectors, vector[None, :]])
        self.groups.append(group)

