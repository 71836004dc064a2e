"""The data directory is private (tuneloop.ops.private_data): what a tuneloop process creates there is
0600 / 0700 whatever the shell's umask, and an existing directory other accounts can read is named at
start with the fix. The probe found 33 of 38 files 0644, the database and the uploads among them."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_what_a_tuneloop_process_creates_is_private_whatever_the_umask(tmp_path):
    data = tmp_path / "data"
    env = {**os.environ, "TUNELOOP_DATA_DIR": str(data), "TUNELOOP_ADMIN_PASSWORD": "admin-password"}
    env.pop("TUNELOOP_DATABASE_URL", None)
    done = subprocess.run([sys.executable, "-m", "tuneloop.cli.main", "db", "upgrade"], env=env, capture_output=True,
                          text=True, timeout=300, preexec_fn=lambda: os.umask(0o022))  # a typical shell's umask
    assert done.returncode == 0, done.stderr
    assert _mode(data) == 0o700 and _mode(data / "tuneloop.db") == 0o600
    assert all(_mode(path) & 0o077 == 0 for path in data.rglob("*"))


def test_an_existing_readable_data_directory_is_named_at_start_with_the_fix(make_settings, caplog):
    settings = make_settings()
    upload = settings.data_dir / "files" / "file-1.jsonl"
    upload.parent.mkdir(parents=True)
    upload.write_text("{}\n")
    for path, mode in ((settings.data_dir, 0o755), (upload.parent, 0o755), (upload, 0o644)):  # a umask of 022
        path.chmod(mode)
    previous = os.umask(0o077)  # as tuneloop's processes run: what prepare_database creates is private
    try:
        _check_twice(settings, upload, caplog)
    finally:
        os.umask(previous)


def _check_twice(settings, upload, caplog) -> None:
    from tuneloop.app import prepare_database

    with caplog.at_level(logging.WARNING, logger="tuneloop.ops.private_data"):
        prepare_database(settings).dispose()
    [warning] = [r.getMessage() for r in caplog.records if r.name == "tuneloop.ops.private_data"]
    assert f"chmod -R go-rwx {settings.data_dir}" in warning and "3 paths" in warning and str(upload) in warning

    for path in (settings.data_dir, settings.data_dir / "files", upload):
        path.chmod(0o600 if path.is_file() else 0o700)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tuneloop.ops.private_data"):
        prepare_database(settings).dispose()
    assert not [r for r in caplog.records if r.name == "tuneloop.ops.private_data"]
