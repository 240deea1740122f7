"""Secrets kept in files of the state directory (broker key, log note key, subject-key and sealing secrets).

Invariant: such a file is created whole or not at all, mode 0600, by whichever process gets there first. Several
broker processes may start at once: the content is written aside, flushed to disk and hard-linked into place
(link fails if the name exists), so a process either creates the file or reads the one another process created,
never a half-written one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def create_once(path: Path, make: Callable[[], bytes]) -> bytes:
    """The file's content, creating it with `make()` first if it does not exist."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)  # mkstemp creates it 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(make())
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):  # another process won the race: use its file
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    return path.read_bytes()
