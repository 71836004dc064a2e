"""Answer-vs-reference matching: key facts with normalised numbers, and embedding similarity."""

from __future__ import annotations

import json

from retrain.gates.items import GENERAL_DIR, general_texts
from retrain.gates.matching import match_answers, missing_key_facts, normalise


def test_numbers_are_normalised_on_both_sides():
    assert normalise("Refunds within THIRTY   days cost $ 1,000.00") == "refunds within 30 days cost $1000"
    assert missing_key_facts("You have seven days and it costs 1,000 dollars.", ["7 days", "1000"]) == []
    assert missing_key_facts("Returns within 30 days.", ["30 days", "receipt"]) == ["receipt"]
    assert missing_key_facts("Returns within 3 days.", ["30 days"]) == ["30 days"]


def test_match_needs_similarity_and_every_key_fact():
    reference = "Returns are accepted within 30 days of delivery."
    answers = ["You can return items within 30 days of delivery.",
               "You can return items within 14 days of delivery.",
               "Our stores open at nine in the morning."]
    results = match_answers(answers, [reference] * 3, [["30 days"]] * 3, threshold=0.75)
    assert [r.passed for r in results] == [True, False, False]
    assert results[0].similarity >= 0.75 and results[1].missing_facts == ["30 days"]
    assert results[2].similarity < 0.75
    # Without key facts only similarity counts.
    [alone] = match_answers([answers[1]], [reference], [[]], threshold=0.75)
    assert alone.passed


def test_shipped_general_set_is_well_formed():
    questions = json.loads((GENERAL_DIR / "questions.json").read_text())
    assert len(questions) >= 15 and len({q["id"] for q in questions}) == len(questions)
    for q in questions:
        assert q["question"].strip() and q["answer"].strip() and q["key_facts"]
        assert missing_key_facts(q["answer"], q["key_facts"]) == [], q["id"]  # the reference passes itself
    assert len(general_texts()) >= 2


def test_a_key_fact_counts_only_as_words_of_its_own():
    """Found by bench/loop.py on acme: the key fact "No" was "in" the handoff reply ("I'm not sure ..."),
    so every handoff counted as a wrong-fact reply, and "7 days" was "in" "17 days"."""
    from retrain.gates.matching import missing_key_facts, wrong_facts

    handoff = "I'm not sure about that, so I've passed your question to our team."
    assert wrong_facts(handoff, "Returns are free.", ["No", "7 days"]) == []
    assert missing_key_facts("Returns take 17 days.", ["7 days"]) == ["7 days"]
    assert missing_key_facts("No, we do not.", ["No"]) == []
    assert missing_key_facts("We sell two tents.", ["tent", "2"]) == []  # a plural counts
    assert wrong_facts("No, and delivery takes 7 days.", "Yes, it is free.", ["No"]) == ["No", "7 days"]
