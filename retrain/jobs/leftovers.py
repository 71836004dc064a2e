"""What a killed or failed training round can leave on disk, and its removal: the worker's per-job
work directories, half-written adapters (``adapters/.<job>.partial-<pid>``), snapshot staging
directories (``datasets/.<snap>.*``) and snapshot directories whose database row never committed
(a train-now that failed after writing its files).

The worker calls ``remove_leftovers`` when it starts and after a job fails. Work directories and
partial adapters belong to worker children, so those of jobs not running go at once; snapshot
directories younger than ``min_age_seconds`` are left alone, because an API process may be writing
one right now.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from retrain.models import DatasetSnapshot, FineTuneJob, JobStatus
from tuneloop.core.settings import Settings

log = logging.getLogger(__name__)


def work_root(settings: Settings) -> Path:
    return settings.data_dir / "work"


def remove_leftovers(settings: Settings, db: Engine, *, min_age_seconds: float = 600.0) -> list[Path]:
    """Remove leftovers of jobs that are not running; returns what was removed."""
    with Session(db) as session:
        running = set(session.exec(select(FineTuneJob.id).where(FineTuneJob.status == JobStatus.running)).all())
        snapshots = set(session.exec(select(DatasetSnapshot.path)).all())
    cutoff = time.time() - min_age_seconds
    doomed = [d for d in _dirs(work_root(settings)) if d.name.split(".")[0] not in running]
    doomed += [d for d in _dirs(settings.model_store_dir / "adapters")
               if d.name.startswith(".") and ".partial-" in d.name and d.name[1:].split(".")[0] not in running]
    doomed += [d for d in _dirs(settings.datasets_dir)
               if (d.name.startswith(".") or d.name not in snapshots) and d.stat().st_mtime < cutoff]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
        log.info("removed leftover %s", path)
    return doomed


def remove_snapshot_files(settings: Settings, snapshot: DatasetSnapshot) -> None:
    """The files of a snapshot whose row is being rolled back (nothing else refers to them)."""
    shutil.rmtree(settings.datasets_dir / snapshot.path, ignore_errors=True)


def _dirs(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
