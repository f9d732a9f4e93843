"""Files that appear whole or not at all.

Every tool that writes a file (trace conversion, corpus capture, plots, sweep
tables) writes into a temporary file beside the target and renames it into
place only once the content is complete. A conversion that fails on line
3,000,000 of a garbled trace, or a capture interrupted with Ctrl-C, thus
leaves the previous file (or none) behind, never half of a new one that a
later run would read as if it were whole (DESIGN principle 7).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by their owner only; the files we write are
# ordinary outputs, so they get the permissions open() would have given them.
_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_output(path: str | Path, mode: str = "wb", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success rename it to ``path``.

    The temporary file lives in the target's directory so that the final
    ``os.replace`` is a rename within one file system (atomic on POSIX). On
    any exception, including KeyboardInterrupt, it is removed and the
    exception propagates.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _MODE)
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for writers that want a file name
    (matplotlib's ``savefig``); renamed to ``path`` on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=target.suffix)
    try:
        os.fchmod(fd, _MODE)
        os.close(fd)
        yield Path(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
