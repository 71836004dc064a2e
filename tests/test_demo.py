"""`tuneloop demo` loads the knowledge base as real traffic: conversations answered by the served model,
thumbs-down ratings, corrections by alice, approvals by bob, some left for review."""

import os
import subprocess
import sys

from pathlib import Path

from sqlmodel import Session, select

REPO = Path(__file__).resolve().parent.parent


def test_demo_loads_conversations_ratings_and_corrections(tmp_path, tiny_model_dir):
    from bot.models import Message
    from feedback.corrections.models import Correction, CorrectionStatus
    from feedback.ratings.models import Rating
    from tuneloop.core.db import make_engine

    env = {**os.environ, "TUNELOOP_DATA_DIR": str(tmp_path), "TUNELOOP_BASE_MODEL": str(tiny_model_dir),
           "TUNELOOP_ADMIN_PASSWORD": "admin-password", "TUNELOOP_MAX_TOKENS": "8", "TUNELOOP_DTYPE": "float32",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "tuneloop.cli.main", "demo", "--limit", "4", "--leave-pending", "1"],
                          env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    # The demo company's voice and contacts exist only under `tuneloop demo`, saved where settings are read.
    assert "TUNELOOP_COMPANY_NAME=\"Acme Outdoor Gear\"" in (tmp_path / ".env").read_text()
    assert "3 corrections approved, 1 waiting for review" in done.stdout
    engine = make_engine(f"sqlite:///{tmp_path / 'tuneloop.db'}")
    with Session(engine) as session:
        answers = session.exec(select(Message).where(Message.role == "assistant")).all()
        assert len(answers) == 4 and all(m.model_version_id == "v0" for m in answers)
        assert [r.value for r in session.exec(select(Rating)).all()] == [-1] * 4
        corrections = session.exec(select(Correction)).all()
        statuses = sorted(c.status for c in corrections)
        assert statuses == [CorrectionStatus.approved] * 3 + [CorrectionStatus.submitted]
        assert all(c.author == "alice" for c in corrections)
        assert {c.reviewer for c in corrections if c.status == CorrectionStatus.approved} == {"bob"}
    engine.dispose()
