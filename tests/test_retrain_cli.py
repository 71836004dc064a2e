"""`tuneloop jobs create|list|get|follow|cancel|pause|resume` and `tuneloop worker`: what an operator types, the real
worker training the tiny model, and one-line errors (exit 2, no traceback, nothing written)."""

from __future__ import annotations

import json
import re

import pytest
from sqlmodel import Session, select

from retrain.models import FineTuneJob
from retrain.worker import Worker
from tuneloop.app import prepare_database
from tuneloop.core.db import session_scope


@pytest.fixture
def settings(make_settings, tiny_model_dir, database_url):
    return make_settings(base_model=str(tiny_model_dir), database_url=database_url)


@pytest.fixture
def engine(settings):
    engine = prepare_database(settings)
    yield engine
    engine.dispose()


@pytest.fixture
def tuneloop(cli_runner, settings, engine):
    """The real CLI in-process on ``settings``; returns (exit code, stdout, stderr)."""
    return cli_runner({"DATA_DIR": settings.data_dir, "DATABASE_URL": settings.database_url,
                       "BASE_MODEL": settings.base_model, "DTYPE": "float32", "ADMIN_PASSWORD": "admin-password"})


def approve(engine, settings, n: int) -> None:
    from feedback.corrections.service import create_correction
    from feedback.corrections.models import CorrectionStatus

    with session_scope(engine) as session:
        for i in range(n):
            create_correction(session, settings, actor="admin", question=f"How long is the warranty on tent {i}?",
                              answer=f"Tent {i} has a {i + 2}-year warranty.", status=CorrectionStatus.approved)


def job_rows(engine) -> list[FineTuneJob]:
    with Session(engine) as session:
        return list(session.exec(select(FineTuneJob)).all())


def test_create_list_get_follow_and_cancel(tuneloop, settings, engine):
    approve(engine, settings, 3)
    assert tuneloop("data", "snapshot")[0] == 0
    code, out, err = tuneloop("jobs", "create", "--n-epochs", "1", "--batch-size", "4", "--set", "lora_r=4",
                              "--set", "min_steps=0", "--suffix", "cli", "--seed", "7")
    assert code == 0, err
    job_id = re.fullmatch(r"created (ftjob-\S+) \(status validating_files\); follow it with "
                          r"`tuneloop jobs follow \1`", out.strip()).group(1)

    code, out, _ = tuneloop("jobs", "list")
    assert code == 0 and out.split()[:4] == [job_id, "validating_files", "from", "v0"]
    code, out, _ = tuneloop("jobs", "get", job_id)
    job = json.loads(out)
    assert code == 0 and job["object"] == "fine_tuning.job" and job["id"] == job_id and job["model"] == "v0"
    assert job["hyperparameters"]["n_epochs"] == 1 and job["hyperparameters_full"]["lora_r"] == 4
    assert job["seed"] == 7 and job["suffix"] == "cli" and job["snapshot_id"].startswith("snap_")

    assert Worker(settings, engine).run_next_job() == job_id  # the real worker trains the tiny model
    code, out, err = tuneloop("jobs", "follow", job_id, "--poll", "0.1")
    assert code == 0, out + err
    assert "Created fine-tuning job" in out and "successfully completed" in out
    assert out.strip().endswith(f"{job_id}: succeeded")
    steps = re.findall(r"\b(\d+)/(\d+) \[", err)  # tqdm's bar over training steps
    assert steps and steps[-1][0] == steps[-1][1] and "loss=" in err

    code, _, err = tuneloop("jobs", "cancel", job_id)
    assert code == 2 and err.startswith("error: job") and "already succeeded" in err and "Traceback" not in err

    code, out, _ = tuneloop("jobs", "create", "--model", "tuneloop-v1-cli")
    second = out.split()[1]
    assert code == 0 and tuneloop("jobs", "cancel", second)[1].strip() == f"{second}: cancelled"
    code, out, _ = tuneloop("jobs", "follow", second)
    assert code == 1 and out.strip().endswith(f"{second}: cancelled")  # a job that did not succeed
    code, out, _ = tuneloop("jobs", "list", "--limit", "1")
    assert out.splitlines() == [out.splitlines()[0], f"... more: --after {second}"] and second in out
    assert "from v1" in out


BAD_CREATES = [
    (["--model", "v99"], "The model 'v99' does not exist"),
    (["--snapshot", "snap_nope"], "no dataset snapshot 'snap_nope'"),
    (["--n-epochs", "0"], "n_epochs must be at least 1"),
    (["--learning-rate-multiplier=-0.5"], "learning_rate_multiplier must be greater than 0"),
    (["--batch-size", "0"], "batch_size must be at least 1"),
    (["--set", "lora_r=0"], "lora_r (the LoRA rank) must be at least 1"),
    (["--set", "lora_r=two"], "lora_r must be an integer, not 'two'"),
    (["--set", "lora_dropout=1.5"], "lora_dropout must be in [0, 1)"),
    (["--set", "learning_rate=0.1"], "unknown hyperparameter(s): learning_rate"),
    (["--set", "lora_r"], "--set needs KEY=VALUE"),
    (["--backend", "cloud"], "backend must be 'local' or 'openai'"),
]


@pytest.mark.parametrize("args, message", BAD_CREATES, ids=[" ".join(a) for a, _ in BAD_CREATES])
def test_bad_job_requests_are_one_line_errors_and_write_nothing(tuneloop, settings, engine, args, message):
    approve(engine, settings, 2)
    assert tuneloop("data", "snapshot")[0] == 0
    code, out, err = tuneloop("jobs", "create", *args)
    assert (code, out) == (2, "") and "Traceback" not in err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and message in err
    assert job_rows(engine) == []


def test_unknown_jobs_and_an_empty_dataset(tuneloop, engine):
    code, _, err = tuneloop("jobs", "create")
    assert code == 2 and "there is no dataset snapshot yet" in err
    assert tuneloop("data", "snapshot")[0] == 0  # nothing approved: an empty snapshot
    code, _, err = tuneloop("jobs", "create")
    assert code == 2 and "has no training examples; approve some corrections first" in err
    for args in (["get", "ftjob-nope"], ["cancel", "ftjob-nope"], ["follow", "ftjob-nope"],
                 ["pause", "ftjob-nope"], ["resume", "ftjob-nope"], ["list", "--after", "ftjob-nope"]):
        code, out, err = tuneloop("jobs", *args)
        assert (code, out) == (2, "") and err == "error: no fine-tuning job 'ftjob-nope'\n", args
    assert job_rows(engine) == []


def test_worker_help(tuneloop):
    code, out, _ = tuneloop("worker", "--help")
    assert code == 0 and "--no-scheduler" in out and "retention" in out
    code, out, _ = tuneloop("jobs", "--help")
    assert code == 0 and all(command in out for command in ("create", "list", "get", "follow", "cancel", "pause",
                                                            "resume"))


def test_pause_and_resume(tuneloop, settings, engine):
    """The worker's side (the child pausing at a step boundary) is tests/test_retrain_pause.py's."""
    from retrain.jobs import service as jobs
    from retrain.models import JobStatus
    from tuneloop.core.ids import utcnow

    approve(engine, settings, 2)
    assert tuneloop("data", "snapshot")[0] == 0
    job_id = tuneloop("jobs", "create")[1].split()[1]
    code, _, err = tuneloop("jobs", "pause", job_id)
    assert code == 2 and err.strip() == f"error: job {job_id} is validating_files; only a running job can be paused"
    with session_scope(engine) as session:  # as a worker runs it
        jobs.set_status(session, job_id, JobStatus.running, worker_id="host:1", heartbeat_at=utcnow())
    code, out, _ = tuneloop("jobs", "pause", job_id)
    assert code == 0 and out.strip() == f"{job_id}: pause requested; it pauses at the next step boundary"
    code, _, err = tuneloop("jobs", "resume", job_id)
    assert code == 2 and "only a paused job can be resumed" in err
    with session_scope(engine) as session:  # as the worker leaves it once the child paused
        jobs.set_status(session, job_id, JobStatus.paused, pause_requested=False)
    code, out, _ = tuneloop("jobs", "follow", job_id)
    assert code == 0 and out.strip().endswith(f"{job_id}: paused (continue it with `tuneloop jobs resume {job_id}`)")
    code, out, _ = tuneloop("jobs", "resume", job_id)
    assert code == 0 and out.strip() == f"{job_id}: queued; the worker continues it from its checkpoint"
    assert [j.status for j in job_rows(engine)] == [JobStatus.queued]
