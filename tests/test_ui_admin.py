"""The admin page in a real browser: a candidate (a tiny LoRA adapter with a passing gate report) is
shown with its changed answers, promoted with one click, and the server then serves it."""

from __future__ import annotations

import pytest
from support.browser import browser, login, table_cell, ui_app, ui_server, ui_settings  # noqa: F401  (fixtures)
from sqlmodel import Session

from tuneloop.core.db import session_scope

pytestmark = pytest.mark.browser


def _candidate(app, tiny_model_dir) -> str:
    """Register v1: a freshly initialised LoRA on the tiny model, with a passing gate report."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from registry.versions import production_version
    from registry.models import GateReport
    from registry.lifecycle import register_candidate

    settings = app.state.settings
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(settings.model_store_dir / "adapters" / "ui-test")
    with session_scope(app.state.db) as session:
        version = register_candidate(session, settings, job=None, parent=production_version(session),
                                     adapter_path="adapters/ui-test", snapshot_id=None, metrics={})
        item = {"gate": "learned", "name": "refunds", "question": "How long do refunds take?",
                "reference": "5 business days", "key_facts": ["5 business days"], "verdict": "fixed",
                "candidate": {"answer": "Refunds take 5 business days.", "passed": True},
                "production": {"answer": "I do not know.", "passed": False}}
        report = GateReport(candidate_version_id=version.id, baseline_version_id="v0", passed=True,
                            summary={"reasons": [], "gates": {"learned": {"total": 1, "candidate_passed": 1,
                                                                          "production_passed": 0}}},
                            items=[item])
        session.add(report)
        session.flush()
        version.gate_report_id = report.id
        session.add(version)
        return version.id


def test_admin_promotes_candidate(browser, ui_server, ui_app, tiny_model_dir):  # noqa: F811
    from registry.versions import production_version

    candidate = _candidate(ui_app, tiny_model_dir)
    page = browser.new_page("admin")
    login(page, ui_server, "/admin", "admin", "admin-password")
    page.locator("#production").get_by_text("Production: v0").wait_for()
    table_cell(page, "versions", 0, 0).get_by_text(candidate).click()
    page.locator("#gate-report").get_by_text("PASSED").wait_for()
    table_cell(page, "gate-items", 0, 4).get_by_text("Refunds take 5 business days.").wait_for()
    page.screenshot(path="/tmp/tuneloop-admin.png", full_page=True)
    page.locator("#promote").click()
    page.locator("#admin-result").get_by_text("promoted to production").wait_for()
    page.locator("#production").get_by_text(f"Production: {candidate}").wait_for()

    with Session(ui_app.state.db) as session:
        assert production_version(session).id == candidate
    runtime = ui_app.state.runtime
    for _ in range(100):  # the server follows the pointer within version_poll_seconds (0.2 s here)
        if runtime.production_id == candidate:
            break
        page.wait_for_timeout(100)
    assert runtime.production_id == candidate


def test_admin_pauses_and_resumes_a_job(browser, ui_server, ui_app):  # noqa: F811
    """The buttons call retrain.jobs' pause and resume (the worker's side: tests/test_retrain_pause.py)."""
    from retrain.jobs import job_request, service as jobs
    from retrain.jobs.files import save_upload
    from retrain.models import FineTuneJob, JobStatus
    from support.retrain import chat_jsonl
    from tuneloop.core.ids import utcnow

    settings = ui_app.state.settings
    with session_scope(ui_app.state.db) as session:  # a job as a worker runs it
        upload = save_upload(session, settings, filename="t.jsonl", content=chat_jsonl(4))
        job_id = jobs.create_job(session, settings, job_request.JobRequest(training_file_id=upload.id), actor="admin",
                                 admin=True).id
        jobs.set_status(session, job_id, JobStatus.running, worker_id="host:1", heartbeat_at=utcnow())
    page = browser.new_page("admin")
    login(page, ui_server, "/admin", "admin", "admin-password")
    page.get_by_role("tab", name="Training").click()
    table_cell(page, "jobs", 0, 0).get_by_text(job_id).click()
    page.locator("#pause-job").click()
    page.locator("#training-result").get_by_text("pause requested").wait_for()
    with Session(ui_app.state.db) as session:
        assert session.get(FineTuneJob, job_id).pause_requested
    with session_scope(ui_app.state.db) as session:  # as the worker leaves it once training paused
        jobs.set_status(session, job_id, JobStatus.paused, pause_requested=False)
    page.locator("#resume-job").click()
    page.locator("#training-result").get_by_text("queued; the worker continues it").wait_for()
    with Session(ui_app.state.db) as session:
        assert session.get(FineTuneJob, job_id).status == JobStatus.queued
