"""The data directory is private to the account that runs tuneloop.

It holds the database (password and API-key hashes, every conversation), uploaded training files,
datasets and adapters. Every ``tuneloop`` process sets its umask to 077 when it starts, so what it
creates is 0600 (files) or 0700 (directories) whatever the shell's umask was (commonly 022: readable
by every local account). A directory made before that, or copied in, is checked at start: anything
other accounts can read is named in one warning with the command that fixes it. It is not repaired
silently: an operator may have opened the model store to another account on purpose (an upstream
server reading adapters).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_UMASK = 0o077
SHOWN = 3  # paths named in the warning; the count covers the rest


def make_private() -> None:
    """From now on, files this process creates are 0600 and directories 0700."""
    os.umask(PRIVATE_UMASK)


def exposed_paths(data_dir: Path) -> list[Path]:
    """The data directory and everything under it that grants its group or other accounts any access."""
    if not data_dir.exists():
        return []
    found = [data_dir] if _exposed(data_dir) else []
    for root, dirs, files in os.walk(data_dir):
        found += [path for name in dirs + files if _exposed(path := Path(root) / name)]
    return found


def warn_if_exposed(data_dir: Path) -> list[Path]:
    """Log one warning naming the fix when other accounts can read the data directory; returns what is exposed."""
    exposed = exposed_paths(data_dir)
    if exposed:
        examples = ", ".join(f"{p} ({stat.filemode(p.lstat().st_mode)})" for p in exposed[:SHOWN])
        log.warning("%d paths in the data directory %s can be read by other accounts on this machine (%s%s); it "
                    "holds password hashes and conversations. Fix: chmod -R go-rwx %s", len(exposed), data_dir,
                    examples, ", ..." if len(exposed) > SHOWN else "", data_dir)
    return exposed


def _exposed(path: Path) -> bool:
    mode = path.lstat().st_mode
    return not stat.S_ISLNK(mode) and bool(mode & 0o077)
