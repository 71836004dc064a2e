"""Backups: an export from SQLite imports into PostgreSQL with every table's rows and bytes equal,
the files referenced by snapshots and adapters come along, and a non-empty target is refused."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from datetime import timedelta

import pytest
from sqlmodel import Session, select

from conftest import _create_pg_database, _drop_pg_database
from tuneloop.core import db
from tuneloop.ops.backup import BackupError, export_archive, import_archive


@pytest.fixture
def pg_url():
    name, url = _create_pg_database()
    yield url
    _drop_pg_database(name)


def seed_everything(engine, settings) -> None:
    """One row or more in every kind of table an operator cares about, plus files on disk."""
    from bot.models import Conversation, Message
    from registry.models import ModelVersion
    from registry.versions import set_production
    from feedback.corrections.models import Correction, CorrectionStatus
    from feedback.ratings.models import Rating
    from feedback.decisions import ReviewDecision, ReviewStatus
    from registry.models import GateReport
    from retrain.models import DatasetSnapshot, FineTuneJob, JobEvent, JobMetric, JobStatus
    from tuneloop.core.accounts.models import Account
    from tuneloop.core.accounts.service import create_api_key

    snap_dir = settings.datasets_dir / "snap_0123456789ab"
    snap_dir.mkdir(parents=True)
    (snap_dir / "train.jsonl").write_text('{"messages": []}\n')
    (snap_dir / "manifest.json").write_text('{"n_train": 1}')
    adapter_dir = settings.model_store_dir / "adapters" / "v1"
    adapter_dir.mkdir(parents=True)
    (adapter_dir / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 4)
    (adapter_dir / "adapter_config.json").write_text('{"r": 8}')

    with db.session_scope(engine) as session:
        admin = session.exec(select(Account)).one()
        create_api_key(session, admin, "backup-test")
        conv = Conversation(end_user="cust-42", channel="web", title="Returns — ünïcode ✓")
        session.add(conv)
        session.flush()
        user = Message(conversation_id=conv.id, position=0, role="user", content="Can I return boots?")
        bot = Message(conversation_id=conv.id, position=1, role="assistant", content="No.", model_version_id="v0",
                      latency_ms=120, prompt_tokens=30, completion_tokens=2, finish_reason="stop",
                      memory_correction_ids=["corr_x"])
        session.add_all([user, bot])
        session.flush()
        session.add(Rating(message_id=bot.id, value=-1, comment="wrong", rater="cust-42", model_version_id="v0"))
        session.add(ReviewDecision(message_id=bot.id, status=ReviewStatus.corrected, decided_by="admin"))
        session.add(Correction(lineage_id="corr_a", id="corr_a", message_id=bot.id, conversation_id=conv.id,
                               question="Can I return boots?", answer="Yes, within 60 days.",
                               key_facts=["60 days"], status=CorrectionStatus.approved, author="ann",
                               reviewer="admin", pii_masked=[{"kind": "email", "n": 1}]))
        session.add(DatasetSnapshot(id="snap_0123456789ab", content_hash="ab" * 32, n_train=1,
                                    counts={"approved": 1}, path="snap_0123456789ab"))
        job = FineTuneJob(parent_version_id="v0", snapshot_id="snap_0123456789ab", status=JobStatus.succeeded,
                          hyperparameters={"n_epochs": 2, "learning_rate_multiplier": 1.5},
                          result_files=["file-1"], result_version_id="v1")
        job.started_at = job.created_at
        job.finished_at = job.created_at + timedelta(seconds=90.5)
        session.add(job)
        session.flush()
        session.add(JobEvent(job_id=job.id, message="started", data={"step": 0}))
        session.add(JobMetric(job_id=job.id, step=1, train_loss=1.25, valid_loss=None))
        session.add(ModelVersion(id="v1", number=1, name="tuneloop-v1-test", base_model="bundled:x",
                                 adapter_path="adapters/v1", parent_id="v0", snapshot_id="snap_0123456789ab",
                                 job_id=job.id, status="approved", metrics={"valid_loss": 0.5}))
        session.add(GateReport(candidate_version_id="v1", baseline_version_id="v0", passed=True,
                               summary={"pass_rate": 1.0}, items=[{"q": "a", "ok": True}]))
        session.flush()
        set_production(session, "v1", actor="admin")


@pytest.mark.postgres
def test_sqlite_export_imports_into_postgresql_unchanged(make_settings, tmp_path, pg_url):
    from tuneloop.app import prepare_database

    source = make_settings(data_dir=tmp_path / "source")
    source_engine = prepare_database(source)
    seed_everything(source_engine, source)
    archive = tmp_path / "backup.tar.gz"
    exported = export_archive(source_engine, source, archive)
    assert exported["tables"]["conversation"]["rows"] == 1 and exported["tables"]["auditevent"]["rows"] >= 2
    assert set(exported["files"]) == {
        "datasets/snap_0123456789ab/train.jsonl", "datasets/snap_0123456789ab/manifest.json",
        "models/adapters/v1/adapter_model.safetensors", "models/adapters/v1/adapter_config.json"}
    with tarfile.open(archive) as tar:
        assert "manifest.json" in tar.getnames() and "tables/message.jsonl" in tar.getnames()

    # A freshly started PostgreSQL instance (version 0 and its first admin) accepts the import.
    target = make_settings(data_dir=tmp_path / "target", database_url=pg_url)
    target_engine = prepare_database(target)
    import_archive(target_engine, target, archive)
    again = export_archive(target_engine, target, tmp_path / "again.tar.gz")
    for name, meta in exported["tables"].items():
        assert (name, again["tables"][name]["rows"], again["tables"][name]["sha256"]) == (
            name, meta["rows"], meta["sha256"])
    assert again["files"] == exported["files"]
    assert (target.model_store_dir / "adapters/v1/adapter_config.json").read_text() == '{"r": 8}'

    from registry.versions import production_version
    from tuneloop.core.accounts.service import audit
    from tuneloop.core.accounts.models import AuditEvent

    with db.session_scope(target_engine) as session:
        assert production_version(session).id == "v1"
        audit(session, actor="admin", action="restore.checked", object_type="instance", object_id="-")
    with Session(target_engine) as session:  # sequences moved past the imported ids
        ids = session.exec(select(AuditEvent.id).order_by(AuditEvent.id)).all()
        assert len(ids) == exported["tables"]["auditevent"]["rows"] + 1 and ids[-1] == max(ids)

    with pytest.raises(BackupError, match="not empty"):
        import_archive(target_engine, target, archive)
    source_engine.dispose()
    target_engine.dispose()


def test_import_refuses_non_empty_instance_and_damaged_archives(make_settings, tmp_path):
    from tuneloop.app import prepare_database

    settings = make_settings()
    engine = prepare_database(settings)
    seed_everything(engine, settings)
    archive = tmp_path / "backup.tar.gz"
    export_archive(engine, settings, archive)
    env = {"TUNELOOP_DATABASE_URL": settings.database_url, "TUNELOOP_DATA_DIR": str(settings.data_dir),
           "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "tuneloop.cli.main", "import", str(archive)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "not empty" in result.stderr and "Traceback" not in result.stderr

    # Flip one byte of a table file: the import names the damaged table and writes nothing.
    damaged = tmp_path / "damaged.tar.gz"
    with tarfile.open(archive) as src, tarfile.open(damaged, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if member.name == "tables/message.jsonl":
                data = data.replace(b"No.", b"Ok.")
            dst.addfile(member, __import__("io").BytesIO(data))
    fresh = make_settings(data_dir=tmp_path / "fresh", database_url=f"sqlite:///{tmp_path / 'fresh.db'}")
    fresh_engine = prepare_database(fresh)
    with pytest.raises(BackupError, match="message.jsonl does not match its checksum"):
        import_archive(fresh_engine, fresh, damaged)
    engine.dispose()
    fresh_engine.dispose()
