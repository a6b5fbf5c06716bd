"""The one way the plugin replaces a small private file whole (job state,
notification states, browse sessions, a listing's kept verdicts, the erasure
ledger and its copy in a local storage): below every layer, so ``ops`` and
``storages`` share it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_private(path: str | os.PathLike, data: bytes, *, sync: bool = False) -> None:
    """``data`` as the whole of ``path``, mode 0600: written under a new hidden
    name in the same folder (``mkstemp``: never another file's bits), flushed (and
    fsync'd with ``sync``), then renamed over ``path``, so that a reader sees the
    old file or the new one, never half of one. The temporary file is removed on
    any failure; the OSError is the caller's to word."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".writing",
                               dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            if sync:
                os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
