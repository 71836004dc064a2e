"""Registry rules on both database engines: promotion needs passing (or overridden) gates, one
production version at all times, conflicts, rollback, reject, delete, lineage and the audit trail.
Versions point at real adapter directories; gate reports are stored rows (the gates themselves are
tested in test_gates_*)."""

from __future__ import annotations

import threading

import pytest
from sqlmodel import Session, select

from registry import versions, lifecycle as registry
from registry.models import ModelVersion, VersionStatus, GateReport
from tuneloop.core.accounts import service as accounts
from tuneloop.core.accounts.models import Account, AuditEvent, Role
from tuneloop.core.db import session_scope


@pytest.fixture
def env(make_settings, tiny_model_dir, database_url):
    from tuneloop.app import prepare_database

    settings = make_settings(base_model=str(tiny_model_dir), database_url=database_url)
    engine = prepare_database(settings)
    with session_scope(engine) as session:
        accounts.create_account(session, username="second-admin", password="password-2", role=Role.admin)
        accounts.create_account(session, username="staff", password="password-3", role=Role.staff)
    yield settings, engine
    engine.dispose()


def _account(session, name="admin"):
    return session.exec(select(Account).where(Account.username == name)).one()


def _candidate(settings, engine, parent_id="v0", *, gates: bool | None = True) -> str:
    """A registered version with an adapter directory and, optionally, a stored gate report."""
    with session_scope(engine) as session:
        parent = session.get(ModelVersion, parent_id)
        number = len(session.exec(select(ModelVersion)).all())
        adapter = settings.model_store_dir / "adapters" / f"job{number}"
        adapter.mkdir(parents=True)
        (adapter / "adapter_config.json").write_text("{}")
        version = registry.register_candidate(session, settings, job=None, parent=parent,
                                              adapter_path=f"adapters/job{number}", snapshot_id=f"snap_{number}",
                                              metrics={"train_loss": 0.5})
        if gates is not None:
            report = GateReport(candidate_version_id=version.id, baseline_version_id=parent_id, passed=gates,
                                summary={"reasons": [] if gates else ["not_forgotten: newly failing: corr_1"]})
            session.add(report)
            version.gate_report_id = report.id
        return version.id


def _production(engine) -> tuple[str, int]:
    with Session(engine) as session:
        pointer = versions.production_pointer(session)
        statuses = session.exec(select(ModelVersion).where(ModelVersion.status == VersionStatus.production)).all()
        assert [v.id for v in statuses] == [pointer.version_id]  # exactly one production version
        return pointer.version_id, pointer.revision


def test_register_numbers_names_and_lineage(env):
    settings, engine = env
    v1 = _candidate(settings, engine)
    v2 = _candidate(settings, engine, v1)
    with session_scope(engine) as session:
        version = session.get(ModelVersion, v2)
        assert (v1, v2, version.name, version.status) == ("v1", "v2", "tuneloop-v2", VersionStatus.candidate)
        assert [v.id for v in registry.lineage(session, version)] == ["v2", "v1", "v0"]
        detail = registry.version_as_dict(session, version, detail=True)
        assert detail["lineage"][1] == {"id": "v1", "name": "tuneloop-v1", "status": "candidate",
                                        "snapshot_id": "snap_1", "job_id": None,
                                        "gate_report_id": session.get(ModelVersion, "v1").gate_report_id,
                                        "gates_passed": True}
        assert detail["gate_report"]["passed"] is True
    assert (settings.model_store_dir / "adapters/job2/version.json").is_file()


def test_promote_retires_previous_and_records_who(env):
    settings, engine = env
    v1 = _candidate(settings, engine)
    _, revision = _production(engine)
    with session_scope(engine) as session:
        registry.promote(session, settings, v1, _account(session), reason="better answers")
    assert _production(engine) == (v1, revision + 1)
    with Session(engine) as session:
        new, old = session.get(ModelVersion, v1), session.get(ModelVersion, "v0")
        assert (new.status, new.status_changed_by) == (VersionStatus.production, "admin")
        assert (old.status, old.status_changed_by) == (VersionStatus.retired, "admin")
        event = session.exec(select(AuditEvent).where(AuditEvent.action == "version.promoted")).one()
        assert (event.actor, event.object_id, event.detail["previous_production"]) == ("admin", v1, "v0")


def test_promotion_rules_leave_production_unchanged(env):
    settings, engine = env
    no_report = _candidate(settings, engine, gates=None)
    failed = _candidate(settings, engine, gates=False)
    rejected = _candidate(settings, engine)
    missing = _candidate(settings, engine)
    before = _production(engine)
    with session_scope(engine) as session:
        registry.reject(session, rejected, _account(session), "answers in the wrong tone")
    import shutil

    shutil.rmtree(settings.model_store_dir / "adapters/job4")
    cases = [(no_report, registry.InvalidStateError, "no gate report"),
             (failed, registry.RegistryError, "give a written reason"),
             (rejected, registry.InvalidStateError, "is rejected"),
             (missing, registry.InvalidStateError, "adapter is missing"),
             ("v99", registry.VersionNotFoundError, "no model version")]
    for version_id, error, message in cases:
        with pytest.raises(error, match=message), session_scope(engine) as session:
            registry.promote(session, settings, version_id, _account(session))
    with pytest.raises(registry.NotAdminError), session_scope(engine) as session:
        registry.promote(session, settings, failed, _account(session, "staff"), reason="trust me")
    assert _production(engine) == before


def test_override_of_failed_gates_is_recorded(env):
    settings, engine = env
    failed = _candidate(settings, engine, gates=False)
    with session_scope(engine) as session:
        registry.promote(session, settings, failed, _account(session), reason="corr_1 was wrong; fixed next round")
    assert _production(engine)[0] == failed
    with Session(engine) as session:
        report = session.get(GateReport, session.get(ModelVersion, failed).gate_report_id)
        assert (report.passed, report.overridden_by) == (False, "admin")
        assert report.override_reason == "corr_1 was wrong; fixed next round" and report.overridden_at
        event = session.exec(select(AuditEvent).where(AuditEvent.action == "version.promoted")).one()
        assert event.detail["gates_overridden"] is True


def test_auto_promotion_is_checked_and_prepared_like_an_admins(env):
    """Auto-promotion goes through the same checks as ``promote`` and the serving engine's ``prepare``:
    a refusal there (an upstream that cannot load the adapter) leaves production unchanged."""
    settings, engine = env
    failed, passed = _candidate(settings, engine, gates=False), _candidate(settings, engine)
    before, prepared = _production(engine), []

    def refuse(version):
        prepared.append(version.id)
        raise RuntimeError("the upstream cannot load this adapter")

    with pytest.raises(registry.RegistryError, match="only an admin can override"), session_scope(engine) as session:
        registry.auto_promote(session, settings, session.get(ModelVersion, failed))
    with pytest.raises(RuntimeError, match="cannot load"), session_scope(engine) as session:
        registry.auto_promote(session, settings, session.get(ModelVersion, passed), prepare=refuse)
    assert _production(engine) == before and prepared == [passed]
    with session_scope(engine) as session:
        registry.auto_promote(session, settings, session.get(ModelVersion, passed), prepare=prepared.append)
    assert _production(engine)[0] == passed and prepared[-1].id == passed
    with Session(engine) as session:
        event = session.exec(select(AuditEvent).where(AuditEvent.action == "version.promoted")).one()
        assert (event.actor, event.detail["reason"]) == (registry.AUTO_PROMOTER, "all gates passed (auto_promote)")


def test_stale_expected_production_is_a_conflict(env):
    settings, engine = env
    v1, v2 = _candidate(settings, engine), _candidate(settings, engine)
    with session_scope(engine) as session:
        registry.promote(session, settings, v1, _account(session), expected_production="v0")
    with pytest.raises(registry.PromotionConflictError, match="production is now v1"), session_scope(engine) as session:
        registry.promote(session, settings, v2, _account(session, "second-admin"), expected_production="v0")
    assert _production(engine)[0] == v1


def test_two_admins_promoting_at_once_one_wins(env):
    settings, engine = env
    v1, v2 = _candidate(settings, engine), _candidate(settings, engine)
    _, revision = _production(engine)
    barrier, results = threading.Barrier(2), {}

    def promote(version_id, username):
        try:
            with session_scope(engine) as session:
                admin = _account(session, username)
                versions.production_pointer(session)  # both read the same revision first
                barrier.wait()
                registry.promote(session, settings, version_id, admin)
            results[version_id] = "promoted"
        except registry.PromotionConflictError:
            results[version_id] = "conflict"

    threads = [threading.Thread(target=promote, args=args) for args in ((v1, "admin"), (v2, "second-admin"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results.values()) == ["conflict", "promoted"]
    winner = next(v for v, r in results.items() if r == "promoted")
    assert _production(engine) == (winner, revision + 1)
    with Session(engine) as session:
        loser = session.get(ModelVersion, v2 if winner == v1 else v1)
        assert loser.status == VersionStatus.candidate  # untouched by the failed promotion


def test_rollback_reject_and_delete(env):
    settings, engine = env
    v1 = _candidate(settings, engine)
    v2 = _candidate(settings, engine, v1)
    with session_scope(engine) as session:
        registry.promote(session, settings, v1, _account(session))
        registry.promote(session, settings, v2, _account(session))
    with pytest.raises(registry.InvalidStateError, match="v2 is production"), session_scope(engine) as session:
        registry.promote(session, settings, v2, _account(session))
    with session_scope(engine) as session:
        registry.rollback(session, settings, v1, _account(session), reason="v2 is rude")
    assert _production(engine)[0] == v1
    with Session(engine) as session:
        assert session.get(ModelVersion, v2).status == VersionStatus.retired
        assert session.exec(select(AuditEvent).where(AuditEvent.action == "version.rolled_back")).one().detail[
            "reason"] == "v2 is rude"
    with session_scope(engine) as session:  # and back to the base model
        registry.rollback(session, settings, "v0", _account(session))
    assert _production(engine)[0] == "v0"

    v3 = _candidate(settings, engine, v2)
    with pytest.raises(registry.InvalidStateError, match="roll back only"), session_scope(engine) as session:
        registry.rollback(session, settings, v3, _account(session))
    with pytest.raises(registry.RegistryError, match="reason"), session_scope(engine) as session:
        registry.reject(session, v3, _account(session), " ")
    with pytest.raises(registry.InvalidStateError, match="in production"), session_scope(engine) as session:
        registry.delete(session, settings, "v0", _account(session))
    with session_scope(engine) as session:
        registry.delete(session, settings, v1, _account(session))
    assert not (settings.model_store_dir / "adapters/job1").exists()
    with Session(engine) as session:
        assert session.get(ModelVersion, v1).status == VersionStatus.deleted
    for action in (registry.promote, registry.rollback):
        with pytest.raises(registry.InvalidStateError), session_scope(engine) as session:
            action(session, settings, v1, _account(session))
    assert _production(engine)[0] == "v0"
