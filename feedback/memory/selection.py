"""Answer selection: which retrieved approved answer, if any, is *the* reply to a question.

Retrieval (``feedback.memory.retrieval``) ranks the right correction first for most rewordings and in
its top few for nearly all; what it cannot tell is which of two close candidates answers *this*
question. The served model can: after a round its weights know the facts. For each candidate answer
``A`` and the conversation ``q`` the engine that serves scores ``log p(A | q)`` (prompt evaluation
only, the candidates batched) and the same answer under a neutral question ``q0``; their difference
per answer token is the pointwise mutual information between question and answer: how much the
question makes this answer likelier, independent of how likely the answer is anyway (a long or
unusual answer is unlikely under any question). ``log p(A | q0)`` does not depend on the question,
so memory computes it once per version and answer.

A small logistic selector combines, for each candidate, the retrieval score, its lead over the best
other candidate, the PMI and the PMI's lead, into the probability that this candidate is the right
answer. ``tuneloop memory calibrate`` fits it on this deployment's own data (accepted phrasings held
out of the index as positives, logged questions no correction covers as negatives) and stores it
for the version it was fitted on, since each round changes the weights; until then the defaults,
fitted by ``bench/selection.py`` on three knowledge bases of different trades, apply.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

NEUTRAL_QUESTION = "Hello, I have a question."
FEATURES = ("retrieval", "retrieval_lead", "pmi", "pmi_lead")
RETRIEVAL_FEATURES = FEATURES[:2]


@dataclass(frozen=True)
class Candidate:
    """One retrieved approved answer for one question, with what the selector reads."""

    correction_id: str
    retrieval: float
    retrieval_lead: float  # its retrieval score minus the best other candidate's (negative when not first)
    pmi: float = 0.0  # (log p(A|q) - log p(A|q0)) per answer token; 0 without a scorer
    pmi_lead: float = 0.0

    def features(self, names: Sequence[str]) -> np.ndarray:
        return np.array([getattr(self, name) for name in names], dtype=np.float64)


def candidates_from(retrieved: Sequence[tuple[str, float]], pmi: Sequence[float] | None = None) -> list[Candidate]:
    """Candidates in retrieval order from (correction id, retrieval score) pairs and, when the model
    scored them, their PMI per token."""
    scores = np.array([s for _, s in retrieved], dtype=np.float64)
    pmis = np.array(pmi if pmi is not None else [0.0] * len(retrieved), dtype=np.float64)
    out = []
    for i, (correction_id, score) in enumerate(retrieved):
        others = np.delete(np.arange(len(retrieved)), i)
        best_other = scores[others].max() if len(others) else 0.0
        best_other_pmi = pmis[others].max() if len(others) else 0.0
        out.append(Candidate(correction_id, float(score), float(score - best_other), float(pmis[i]),
                             float(pmis[i] - best_other_pmi) if pmi is not None else 0.0))
    return out


@dataclass
class Selector:
    """Logistic weights over ``features``; ``probability`` is P(candidate is the right answer)."""

    features: tuple[str, ...]
    weights: tuple[float, ...]
    bias: float
    fitted_on: str = "defaults"  # "defaults", or what calibrate fitted it on
    version_id: str | None = None

    def probability(self, candidate: Candidate) -> float:
        z = self.bias + float(candidate.features(self.features) @ np.array(self.weights))
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))

    def as_dict(self) -> dict:
        return {**asdict(self), "features": list(self.features), "weights": list(self.weights)}

    @classmethod
    def from_dict(cls, data: dict) -> "Selector":
        return cls(tuple(data["features"]), tuple(float(w) for w in data["weights"]), float(data["bias"]),
                   data.get("fitted_on", "calibrated"), data.get("version_id"))


@dataclass
class SelectorPair:
    """The selector used when the engine scores answers, and the one for retrieval alone (an upstream
    backend, or scoring that failed)."""

    with_model: Selector
    retrieval_only: Selector
    verified_probability: float | None = None  # calibrated for these selectors; None: the setting applies

    def for_scored(self, scored: bool) -> Selector:
        return self.with_model if scored else self.retrieval_only


# Fitted by bench/selection.py (2026-12-05) on the customer wordings (positives) and the uncovered shop
# and off-topic questions (negatives) of the three knowledge bases in examples/ (acme, telecom, saas),
# scored by the bundled SmolLM2 before training (docs/benchmarks.md, "Answer selection").
DEFAULT_SELECTORS = SelectorPair(
    with_model=Selector(FEATURES, (9.813, 10.1639, -0.6093, 1.3553), -5.7022),
    retrieval_only=Selector(RETRIEVAL_FEATURES, (8.5093, 11.8629), -5.6978),
)


def fit(rows: Sequence[tuple[Candidate, bool]], features: Sequence[str], *, l2: float = 0.1,
        iterations: int = 50) -> Selector:
    """Logistic regression by Newton's method (a few hundred rows, a handful of features: no library
    needed). ``rows`` are (candidate, is the right answer) for every candidate of every question;
    a question no correction covers contributes only negatives."""
    if not rows:
        raise ValueError("nothing to fit on")
    x = np.stack([c.features(features) for c, _ in rows])
    y = np.array([1.0 if right else 0.0 for _, right in rows])
    x = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(x.shape[1])
    penalty = np.eye(x.shape[1]) * l2
    penalty[-1, -1] = 0.0  # the bias is not shrunk
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -60, 60)))
        gradient = x.T @ (p - y) + penalty @ w
        hessian = (x * (p * (1 - p))[:, None]).T @ x + penalty + np.eye(x.shape[1]) * 1e-9
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return Selector(tuple(features), tuple(round(float(v), 4) for v in w[:-1]), round(float(w[-1]), 4))


# --- storage: one file per version under the data directory -----------------------------------------
def selector_path(data_dir: Path, version_id: str) -> Path:
    return Path(data_dir) / "memory" / "selectors" / f"{version_id}.json"


def save_selectors(data_dir: Path, version_id: str, pair: SelectorPair, report: dict) -> Path:
    """Write atomically (a reader never sees half a file): ``report`` records what it was fitted on."""
    path = selector_path(data_dir, version_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"version_id": version_id, "with_model": pair.with_model.as_dict(),
            "retrieval_only": pair.retrieval_only.as_dict(), "verified_probability": pair.verified_probability,
            "report": report}
    handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(handle, "w") as out:
        json.dump(body, out, indent=2)
    os.replace(tmp, path)
    return path


def load_selectors(data_dir: Path, version_id: str | None) -> SelectorPair:
    """The selectors calibrated for ``version_id``, or the defaults when there are none."""
    if version_id is None:
        return DEFAULT_SELECTORS
    path = selector_path(data_dir, version_id)
    if not path.is_file():
        return DEFAULT_SELECTORS
    data = json.loads(path.read_text())
    return SelectorPair(Selector.from_dict(data["with_model"]), Selector.from_dict(data["retrieval_only"]),
                        data.get("verified_probability"))
