"""`tuneloop users` and `tuneloop data`: what an operator types, and the one-line errors (exit 2)."""

from __future__ import annotations

import json
import re

import pytest


@pytest.fixture
def tuneloop(cli_runner, tmp_path):
    """The real CLI in-process on a fresh data directory; returns (exit code, stdout, stderr)."""
    return cli_runner({"DATA_DIR": tmp_path / "data", "ADMIN_PASSWORD": "admin-password",
                       "VALIDATION_FRACTION": "0.2"}, unset=("DATABASE_URL",))


def test_users_and_keys(tuneloop):
    code, out, _ = tuneloop("users", "create", "alice", "--role", "staff", "--password", "password1")
    assert code == 0 and "created staff account alice" in out
    code, _, err = tuneloop("users", "create", "alice", "--password", "password1")
    assert code == 2 and "already exists" in err and "Traceback" not in err
    code, _, err = tuneloop("users", "create", "eve", "--role", "boss", "--password", "password1")
    assert code == 2 and "--role must be staff or admin" in err
    code, key, err = tuneloop("users", "key", "create", "alice", "--name", "laptop")
    assert code == 0 and key.strip().startswith("tl-") and "shown once" in err
    key_id = err.split()[2].rstrip(";")
    code, out, _ = tuneloop("users", "list")
    assert "alice" in out and "admin" in out and key_id in out and "laptop" in out
    assert tuneloop("users", "key", "revoke", key_id)[0] == 0
    assert "revoked" in tuneloop("users", "list")[1]
    code, _, err = tuneloop("users", "key", "revoke", "key_nope")
    assert code == 2 and "no API key 'key_nope'" in err


def test_import_validate_and_snapshots(tuneloop, tmp_path, tiny_model_dir):
    good = tmp_path / "pairs.jsonl"
    good.write_text("".join(json.dumps({"question": f"Q{i}?", "answer": f"A{i}."}) + "\n" for i in range(6)))
    bad = tmp_path / "bad.csv"
    bad.write_text("question,answer\nfine?,yes\nempty?,\n")
    code, _, err = tuneloop("data", "import", str(bad), "--status", "approved")
    assert code == 2 and "nothing was imported" in err
    code, out, _ = tuneloop("data", "import", str(good), "--status", "approved")
    assert code == 0 and "imported 6 corrections as approved" in out
    code, out, _ = tuneloop("data", "snapshot")
    n_train, n_valid = map(int, re.search(r"(\d+) train / (\d+) valid", out).groups())
    assert code == 0 and n_train + n_valid == 6 and n_valid >= 1  # 6 examples: big enough for a validation split
    snap_id = out.split(":")[0]
    assert snap_id in tuneloop("data", "snapshots")[1]
    manifest = json.loads(tuneloop("data", "show", snap_id)[1])
    assert manifest["id"] == snap_id and len(manifest["examples"]) == 6
    code, _, err = tuneloop("data", "show", "snap_nope")
    assert code == 2 and "no dataset snapshot" in err
    code, out, err = tuneloop("data", "validate", str(bad), "--tokenizer", str(tiny_model_dir),
                              "--fix", str(tmp_path / "fixed.jsonl"))
    assert code == 2 and "row 2: empty prompt or completion" in out and "1 error(s)" in err
    assert (tmp_path / "fixed.jsonl").read_text().count("\n") == 1
    (tmp_path / "x.xlsx").write_bytes(b"plain text")
    code, out, _ = tuneloop("data", "validate", str(tmp_path / "x.xlsx"), "--tokenizer", str(tiny_model_dir))
    assert code == 2 and "not an Excel workbook" in out
    one_bad_line = tmp_path / "one-bad-line.jsonl"
    one_bad_line.write_text('{"prompt": "Q?", "completion": "A."}\n{not json\n')
    code, out, _ = tuneloop("data", "validate", str(one_bad_line), "--tokenizer", str(tiny_model_dir))
    assert code == 2 and "could not be read as examples" in out and "(, unknown)" not in out  # the probe's line
