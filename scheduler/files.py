"""Folders and files only their owner may read: healthgate's state holds message bodies,
recipients' numbers and what they wrote.

Modes are given where each folder or file is created, never through the process umask:
healthgate may run inside an application's process, whose umask is the application's.
A folder or file an older version left open to others is tightened when healthgate
opens it: its group and other bits are removed, and no bit is ever added.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

#: Owner only: read, write and enter.
PRIVATE_DIR = 0o700
#: Owner only: read and write.
PRIVATE_FILE = 0o600


def private_dir(path: Path) -> Path:
    """``path`` as a folder only its owner may enter, created if missing.

    Missing parents are created as ``mkdir -p`` would; only ``path`` itself is made
    private, since a parent may be shared (``/var/lib``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=PRIVATE_DIR)
    except FileExistsError:
        if not path.is_dir():
            raise
        _tighten(path)
    return path


def private_file(path: Path) -> Path:
    """``path`` as a file only its owner may read, created empty (mode 0600) if missing."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
    os.close(fd)
    _tighten(path)
    return path


def tighten_if_present(path: Path) -> None:
    """Remove group and other access from ``path`` when it exists (left by an older
    version, e.g. a SQLite ``-wal`` or ``-shm`` file)."""
    if path.exists():
        _tighten(path)


def _tighten(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if not mode & 0o077:
        return
    try:
        path.chmod(mode & ~0o077)
    except OSError as exc:  # someone else's file: say so, but run
        log.warning("%s is readable by others and cannot be tightened (%s)", path, exc.strerror)
