"""The generalises gate: the held-out phrasing of each new correction (one of two or more accepted
phrasings, never trained on) is asked, judged and reported per item, against its own threshold; a
gate without questions is reported as not measured."""

from __future__ import annotations

from pathlib import Path

import pytest

from ui.text import as_text

from engine.protocol import VersionSpec
from engine.transformers_model import LoadedModel
from feedback.examples import TrainingExample
from support.lora_adapters import CANADA, RETURNS, SYSTEM_PROMPT, memorised_adapter
from retrain.trainer.augment import expand_phrasings, split_phrasings
from retrain.gates.items import generalises_items
from retrain.gates.judging import evaluate

CACHE = Path(__file__).resolve().parent.parent / ".tuneloop-test-cache"
OTHERS = ["Can my parcel go to Canada?", "Shipping to Toronto?", "Do you deliver in Canada?", "Canada delivery?",
          "Is Canada on your shipping list?", "Can I order from Vancouver?"]


def _record(cid: str, question: str, answer: str, alternatives: list[str]) -> TrainingExample:
    """A snapshot's example, read back from the line the snapshot wrote."""
    return TrainingExample.from_record(TrainingExample(
        id=f"ex_{cid}", correction_id=cid, lineage_id=cid, source="correction", alternative_questions=alternatives,
        messages=[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}],
        completion=answer).chat_record())


def records() -> list[TrainingExample]:
    """c_known: its held-out phrasing is the very question the candidate's adapter memorised (so it
    passes there and fails on production); c_unknown: its held-out phrasing is one nobody trained on."""
    other = next(o for o in OTHERS if split_phrasings("c_known", "Can you ship my order to Canada?",
                                                      [CANADA[0], o])[1] == CANADA[0])
    return [_record("c_known", "Can you ship my order to Canada?", CANADA[1], [CANADA[0], other]),
            _record("c_unknown", "How long is the return period?", RETURNS[1],
                    ["When must I send things back by?", "What's the deadline for returning an order?"]),
            _record("c_none", "Do you sell gift cards?", "Yes, from $10.", ["Gift cards?"])]


@pytest.fixture(scope="module")
def versions(tiny_model_dir):
    candidate = memorised_adapter(tiny_model_dir, [CANADA], CACHE)
    production = memorised_adapter(tiny_model_dir, [RETURNS], CACHE)
    return (LoadedModel.load(VersionSpec("v2", tiny_model_dir, candidate), dtype="float32"),
            LoadedModel.load(VersionSpec("v1", tiny_model_dir, production), dtype="float32"))


def test_the_held_out_phrasings_are_the_gate_and_never_trained_on():
    items = generalises_items(records())
    assert [i.name.split(":")[0] for i in items] == ["c_known", "c_unknown"]  # c_none has one phrasing: nothing held
    assert items[0].messages[-1]["content"] == CANADA[0] and items[0].reference == CANADA[1]
    trained = {e.question for e in expand_phrasings(records())}
    assert not trained & {i.messages[-1]["content"] for i in items}


@pytest.mark.parametrize("threshold, passes", [(0.5, True), (1.0, False)])
def test_generalises_is_reported_per_item_with_its_own_threshold(make_settings, tiny_model_dir, versions,
                                                                  threshold, passes):
    settings = make_settings(base_model=str(tiny_model_dir), gate_perplexity_margin=100.0,
                             gate_generalises_min_pass_rate=threshold)
    candidate, production = versions
    outcome = evaluate(settings, candidate, production, generalises_items(records()), texts=[])
    rows = {r["name"].split(":")[0]: r for r in outcome.items if r["gate"] == "generalises"}
    assert rows["c_known"]["question"] == CANADA[0] and rows["c_known"]["verdict"] == "fixed"
    assert not rows["c_unknown"]["candidate"]["passed"]
    gate = outcome.summary["gates"]["generalises"]
    assert gate["total"] == 2 and gate["candidate_passed"] == 1 and gate["measured"]
    assert gate["passed"] is passes and gate["status"] == ("passed" if passes else "failed")
    assert outcome.summary["thresholds"]["gate_generalises_min_pass_rate"] == threshold
    if not passes:
        assert any(r.startswith("generalises: the candidate answered 1/2") for r in outcome.summary["reasons"])
    # Gates nobody asked anything are not measured, and say so instead of "passed".
    for name in ("learned", "not_forgotten", "golden"):
        assert outcome.summary["gates"][name]["status"] == "not measured"
        assert outcome.summary["gates"][name]["measured"] is False


def test_the_admin_page_lists_each_held_out_phrasing_and_unmeasured_gates(make_settings, tiny_model_dir, versions,
                                                                          sqlite_url):
    from types import SimpleNamespace

    from retrain.gates.service import _store
    from tuneloop.app import prepare_database
    from ui.admin import _report_view

    settings = make_settings(base_model=str(tiny_model_dir), database_url=sqlite_url, gate_perplexity_margin=100.0)
    engine = prepare_database(settings)
    candidate, production = versions
    _store(engine, "v0", "v0", evaluate(settings, candidate, production, generalises_items(records()), texts=[]))
    text, rows = _report_view(SimpleNamespace(state=SimpleNamespace(db=engine)), "v0")
    assert "- **generalises** (passed): candidate 1/2" in text
    # user text is escaped for Markdown on the admin page (c_known → c\\_known)
    assert f'- ✓ c\\_known: "{as_text(CANADA[0])}"' in text and '- ✗ c\\_unknown: "' in text
    assert "- **golden**: not measured (no questions)" in text
    assert sorted(r[2] for r in rows if r[0] == "generalises") == sorted(
        i.messages[-1]["content"] for i in generalises_items(records()))
    engine.dispose()
