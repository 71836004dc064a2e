"""Dataset snapshots: an immutable, content-hashed freeze of the approved training examples.

``create_snapshot`` writes ``datasets_dir/<id>/``::

    train.jsonl, valid.jsonl                                  OpenAI chat format (+ "tuneloop" metadata)
    train.prompt_completion.jsonl, valid.prompt_completion.jsonl   legacy prompt/completion format
    manifest.json                                             counts, content hash, parent, example ids
    preferences.jsonl                                         the training split's DPO pairs (OpenAI's lines)

Split: each *lineage* (all revisions of one correction) goes wholly to train or to validation,
decided by a seeded hash of its id, so revisions of one correction never straddle the split and a
lineage stays on the same side in every later snapshot. A paraphrase written by the teacher has its
own lineage but goes with the correction it rewords (the example's ``split_key``). About
``settings.validation_fraction`` of lineages go to validation (at least one). With fewer than 5 examples everything stays in train and
validation is empty: a validation set of one or two examples measures nothing.

The id is ``snap_`` + the first 12 hex digits of the content hash; the same content returns the
existing snapshot. Files are written to a temporary directory and renamed into place, and never
modified afterwards.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from collections.abc import Iterable, Sequence
from typing import Any

from sqlmodel import Session, col, select

from feedback.errors import FeedbackNotFoundError
from feedback.examples import PreferencePair, TrainingExample
from feedback.export import training_examples, write_chat_jsonl, write_prompt_completion_jsonl
from feedback.preferences import preference_pairs
from registry.lifecycle import lineage
from registry.models import ModelVersion
from retrain.models import DatasetSnapshot
from tuneloop.core.accounts.service import audit
from tuneloop.core.ids import utcnow
from tuneloop.core.settings import Settings

SPLIT_SEED = "tuneloop-split-v1"
MIN_EXAMPLES_FOR_VALIDATION = 5
SPLITS = ("train", "valid")
PREFERENCES_FILE = "preferences.jsonl"  # the training split's DPO pairs (snapshots since issue 23)


def split_examples(examples: list[TrainingExample],
                   fraction: float) -> tuple[list[TrainingExample], list[TrainingExample]]:
    """Deterministic train/validation split by lineage (see the module docstring)."""
    if len(examples) < MIN_EXAMPLES_FOR_VALIDATION or fraction <= 0:
        return list(examples), []
    lineages = sorted({_split_key(e) for e in examples})
    score = {lin: int(hashlib.sha256(f"{SPLIT_SEED}:{lin}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
             for lin in lineages}
    # The lineages with the lowest seeded scores, exactly round(n * fraction) of them (at least one, never
    # all): a lineage keeps its side as the data grows unless lower-scored newcomers take its place.
    count = min(max(1, round(len(lineages) * fraction)), len(lineages) - 1)
    valid_lineages = set(sorted(lineages, key=score.__getitem__)[:count])
    train = [e for e in examples if _split_key(e) not in valid_lineages]
    valid = [e for e in examples if _split_key(e) in valid_lineages]
    return train, valid


def _split_key(example: TrainingExample) -> str:
    return example.split_key or example.lineage_id or example.id


def content_hash(train: list[TrainingExample], valid: list[TrainingExample]) -> str:
    canonical = json.dumps({"train": [e.chat_record() for e in train], "valid": [e.chat_record() for e in valid]},
                           sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def create_snapshot(session: Session, settings: Settings, actor: str, *, tokenizer: Any = None) -> DatasetSnapshot:
    """Freeze the current approved examples. Returns the existing snapshot when nothing changed."""
    examples = training_examples(session, settings, tokenizer)
    train, valid = split_examples(examples, settings.validation_fraction)
    digest = content_hash(train, valid)
    existing = session.exec(select(DatasetSnapshot).where(DatasetSnapshot.content_hash == digest)).first()
    if existing is not None:
        return existing
    snapshot_id = f"snap_{digest[:12]}"
    parent = session.exec(select(DatasetSnapshot).order_by(col(DatasetSnapshot.created_at).desc())).first()
    counts = {"train": len(train), "valid": len(valid),
              "by_source": dict(sorted(Counter(e.source for e in examples).items()))}
    snapshot = DatasetSnapshot(id=snapshot_id, content_hash=digest, parent_id=parent.id if parent else None,
                               created_by=actor, n_train=len(train), n_valid=len(valid), counts=counts,
                               path=snapshot_id, created_at=utcnow())
    pairs = preference_pairs(session, settings, tokenizer, {e.correction_id for e in train if e.correction_id})
    _write_files(settings, snapshot, train, valid, pairs)
    session.add(snapshot)
    audit(session, actor=actor, action="snapshot.created", object_type="datasetsnapshot", object_id=snapshot_id,
          n_train=len(train), n_valid=len(valid))
    session.flush()
    return snapshot


def _write_files(settings: Settings, snapshot: DatasetSnapshot, train: list[TrainingExample],
                 valid: list[TrainingExample], pairs: list[PreferencePair]) -> None:
    final = settings.datasets_dir / snapshot.path
    if final.is_dir():  # written by an earlier attempt whose transaction failed: same content, keep it
        return
    settings.datasets_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{snapshot.id}.", dir=settings.datasets_dir))
    try:
        for split, rows in zip(SPLITS, (train, valid)):
            write_chat_jsonl(rows, staging / f"{split}.jsonl")
            write_prompt_completion_jsonl(rows, staging / f"{split}.prompt_completion.jsonl", settings)
        manifest = {
            "id": snapshot.id, "content_hash": snapshot.content_hash, "parent_id": snapshot.parent_id,
            "created_at": snapshot.created_at.isoformat(), "created_by": snapshot.created_by,
            "counts": snapshot.counts, "validation_fraction": settings.validation_fraction, "split_seed": SPLIT_SEED,
            "prompt_separator": settings.prompt_separator, "completion_stop": settings.completion_stop,
            "examples": [{"id": e.id, "lineage_id": e.lineage_id, "source": e.source, "split": split}
                         for split, rows in zip(SPLITS, (train, valid)) for e in rows],
        }
        manifest["preferences"] = len(pairs)
        (staging / PREFERENCES_FILE).write_text("".join(json.dumps(p.to_snapshot_line(), ensure_ascii=False) + "\n"
                                                        for p in pairs), encoding="utf-8")
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if not final.is_dir():
            raise


def list_snapshots(session: Session, *, limit: int = 50) -> list[DatasetSnapshot]:
    """Newest first."""
    return list(session.exec(select(DatasetSnapshot).order_by(col(DatasetSnapshot.created_at).desc())
                             .limit(limit)).all())


def get_snapshot(session: Session, snapshot_id: str) -> DatasetSnapshot:
    snapshot = session.get(DatasetSnapshot, snapshot_id)
    if snapshot is None:
        raise FeedbackNotFoundError(f"no dataset snapshot {snapshot_id!r}; list them with `tuneloop data snapshots`")
    return snapshot


def snapshot_dir(settings: Settings, snapshot: DatasetSnapshot) -> Path:
    return settings.datasets_dir / snapshot.path


def read_manifest(settings: Settings, snapshot: DatasetSnapshot) -> dict[str, Any]:
    return json.loads((snapshot_dir(settings, snapshot) / "manifest.json").read_text())


def load_examples(settings: Settings, snapshot: DatasetSnapshot, split: str = "train") -> list[TrainingExample]:
    """The examples of one split, read back from its chat lines."""
    return [TrainingExample.from_record(r) for r in load_records(settings, snapshot, split)]


def load_preferences(settings: Settings, snapshot: DatasetSnapshot) -> list[PreferencePair] | None:
    """The DPO pairs of the training split's corrections, as they were when the snapshot was made; None
    for a snapshot written before snapshots held them."""
    path = snapshot_dir(settings, snapshot) / PREFERENCES_FILE
    if not path.is_file():
        return None
    lines = path.read_text(encoding="utf-8").splitlines()
    return [PreferencePair.from_record(json.loads(line)) for line in lines if line.strip()]


def new_since(settings: Settings, snapshot: DatasetSnapshot, earlier: Iterable[DatasetSnapshot],
              splits: Sequence[str] = ("train",)) -> list[TrainingExample]:
    """The examples of ``snapshot`` (its ``splits``, in order) that none of the ``earlier`` snapshots held:
    the one answer to "is this example new?" for the scheduler (since the last successful job's
    snapshot), a round's plan and the gates (since the snapshots of the version's ancestry,
    ``ancestry_snapshots``). An example is known by its ``TrainingExample.key``, a correction's revision:
    an answer edited since counts as new, one merely still there does not."""
    seen = {e.key for s in earlier for split in SPLITS for e in load_examples(settings, s, split)}
    return [e for split in splits for e in load_examples(settings, snapshot, split) if e.key not in seen]


def ancestry_snapshots(session: Session, version: ModelVersion) -> list[DatasetSnapshot]:
    """The snapshots ``version`` and its ancestors were trained on, newest first (a version trained
    from an uploaded file has none of its own)."""
    found = (session.get(DatasetSnapshot, v.snapshot_id) for v in lineage(session, version) if v.snapshot_id)
    return [s for s in found if s is not None]


def load_records(settings: Settings, snapshot: DatasetSnapshot, split: str = "train",
                 *, format: str = "chat") -> list[dict[str, Any]]:
    """The lines of one split as written: chat lines (``messages`` + ``tuneloop`` metadata) or, with
    ``format="prompt_completion"``, legacy lines."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    name = f"{split}.jsonl" if format == "chat" else f"{split}.prompt_completion.jsonl"
    path = snapshot_dir(settings, snapshot) / name
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def snapshot_as_dict(snapshot: DatasetSnapshot) -> dict[str, Any]:
    return {"id": snapshot.id, "object": "dataset.snapshot", "content_hash": snapshot.content_hash,
            "parent_id": snapshot.parent_id, "created_at": snapshot.created_at.isoformat(),
            "created_by": snapshot.created_by, "n_train": snapshot.n_train, "n_valid": snapshot.n_valid,
            "counts": snapshot.counts, "path": snapshot.path}
