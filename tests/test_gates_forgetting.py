"""The gates on real (tiny) trained versions: a candidate trained only on a new correction forgets an
earlier one, and the "not forgotten" gate fails and names it; the learned gate sees the new one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlmodel import Session, select

from engine.protocol import VersionSpec
from engine.transformers_model import LoadedModel
from registry.models import ModelVersion, VersionStatus, GateReport
from support.lora_adapters import CANADA, RETURNS, install_adapter, memorised_adapter, messages_for
from registry import lifecycle as registry
from retrain.gates.items import GateItem
from retrain.gates.judging import evaluate
from retrain.gates.service import run_gates
from feedback.corrections.models import Correction
from tuneloop.core.accounts.models import Account, AuditEvent, Role
from tuneloop.core.db import session_scope

CACHE = Path(__file__).resolve().parent.parent / ".tuneloop-test-cache"


@pytest.fixture(scope="module")
def adapters(tiny_model_dir):
    """knows_returns: trained on RETURNS only; knows_canada: trained on CANADA only."""
    return {"returns": memorised_adapter(tiny_model_dir, [RETURNS], CACHE),
            "canada": memorised_adapter(tiny_model_dir, [CANADA], CACHE)}


def _item(gate: str, pair: tuple[str, str], facts: list[str]) -> GateItem:
    return GateItem(gate, pair[0], messages_for(pair[0]), pair[1], facts)


def test_evaluate_names_the_forgotten_item(make_settings, tiny_model_dir, adapters):
    # Perplexity of a random-weight 2-layer model says nothing; keep that check out of this test.
    settings = make_settings(base_model=str(tiny_model_dir), gate_perplexity_margin=100.0)
    production = LoadedModel.load(VersionSpec("v1", tiny_model_dir, adapters["returns"]), dtype="float32")
    candidate = LoadedModel.load(VersionSpec("v2", tiny_model_dir, adapters["canada"]), dtype="float32")
    items = [_item("learned", CANADA, ["Canada", "5 business days"]),
             _item("not_forgotten", RETURNS, ["30 days"])]
    outcome = evaluate(settings, candidate, production, items, texts=["Walking is good for you."])

    learned, kept = outcome.items
    assert learned["candidate"]["passed"] and not learned["production"]["passed"] and learned["verdict"] == "fixed"
    assert kept["production"]["passed"] and not kept["candidate"]["passed"]
    assert kept["verdict"] == "newly_failing" and "30 days" in kept["production"]["answer"]
    gates = outcome.summary["gates"]
    assert gates["learned"]["passed"] and gates["golden"]["total"] == 0
    assert not gates["golden"]["passed"] and gates["golden"]["measured"] is False  # no questions: not a pass
    assert not gates["not_forgotten"]["passed"]
    assert gates["not_forgotten"]["newly_failing"] == [RETURNS[0]]
    assert not outcome.passed and RETURNS[0] in " ".join(outcome.summary["reasons"])
    assert gates["general"]["candidate_perplexity"] > 0


def test_run_gates_on_the_registry(make_settings, tiny_model_dir, adapters, sqlite_url):
    """The whole path: approved corrections → snapshots → versions → gates → report linked, status."""
    from feedback.corrections.service import create_correction
    from feedback.corrections.models import CorrectionStatus
    from retrain.datasets import create_snapshot
    from tuneloop.app import prepare_database

    settings = make_settings(base_model=str(tiny_model_dir), database_url=sqlite_url, gate_perplexity_margin=100.0)
    engine = prepare_database(settings)

    def correction(pair, facts):
        with session_scope(engine) as session:
            return create_correction(session, settings, actor="admin", question=pair[0], answer=pair[1],
                                     key_facts=facts, status=CorrectionStatus.approved).id

    def version(adapter, parent_id):
        with session_scope(engine) as session:
            snapshot = create_snapshot(session, settings, "admin")
            parent = session.get(ModelVersion, parent_id)
            path = install_adapter(adapter, settings, f"adapters/{parent_id}-child")
            return registry.register_candidate(session, settings, job=None, parent=parent, adapter_path=path,
                                               snapshot_id=snapshot.id, metrics={"train_loss": 0.1}).id

    returns_id = correction(RETURNS, ["30 days"])
    v1 = version(adapters["returns"], "v0")
    report1 = run_gates(settings, engine, v1)
    # Round 1: nothing earlier to forget and no golden set: those gates are not measured (never
    # "passed"), and they do not block; the candidate learned the new correction.
    assert report1.passed, report1.summary["reasons"]
    assert {g for g, r in report1.summary["gates"].items() if r["measured"] is False} >= {"not_forgotten", "golden"}
    assert not report1.summary["gates"]["golden"]["passed"]
    assert report1.summary["gates"]["learned"]["total"] == 1  # the new correction
    with session_scope(engine) as session:
        admin = session.exec(select(Account).where(Account.role == Role.admin)).one()
        assert session.get(ModelVersion, v1).status == VersionStatus.approved
        registry.promote(session, settings, v1, admin)

    correction(CANADA, ["Canada", "5 business days"])
    v2 = version(adapters["canada"], v1)  # trained on the new correction only: forgets RETURNS
    report2 = run_gates(settings, engine, v2)

    assert not report2.passed and report2.baseline_version_id == v1
    gates = report2.summary["gates"]
    assert gates["learned"]["passed"] and gates["learned"]["total"] == 1
    assert not gates["not_forgotten"]["passed"]
    [forgotten] = gates["not_forgotten"]["newly_failing"]
    assert forgotten.startswith(returns_id) and RETURNS[0] in forgotten
    assert any(returns_id in reason for reason in report2.summary["reasons"])
    with Session(engine) as session:
        v2_row = session.get(ModelVersion, v2)
        assert v2_row.status == VersionStatus.candidate and v2_row.gate_report_id == report2.id
        stored = session.get(GateReport, report2.id)
        assert {i["gate"] for i in stored.items} == {"learned", "not_forgotten", "general"}
        assert all(i["candidate"]["answer"] is not None and "production" in i for i in stored.items)
        assert session.exec(select(AuditEvent).where(AuditEvent.action == "version.gated")).all()
    engine.dispose()

    # The report is reproducible from the artifacts: gate_report.json sits beside the adapter, and a
    # correction deleted after the run does not change what a re-run asks (items come from snapshots).
    with Session(engine) as session:
        adapter_dir = settings.model_store_dir / session.get(ModelVersion, v2).adapter_path
    on_disk = json.loads((adapter_dir / "gate_report.json").read_text())
    assert on_disk["id"] == report2.id and on_disk["summary"]["inputs"]["snapshot_id"]
    with session_scope(engine) as session:
        session.delete(session.get(Correction, returns_id))
    rerun = run_gates(settings, engine, v2)
    assert [(i["gate"], i["question"], i["reference"]) for i in rerun.items] == [
        (i["gate"], i["question"], i["reference"]) for i in report2.items]
    assert rerun.summary["inputs"] == report2.summary["inputs"]
