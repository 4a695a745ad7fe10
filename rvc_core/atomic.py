"""Atomic file output: write beside the target, then `os.replace`, so a crash never leaves half a file."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

import contextlib
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO


def default_file_mode() -> int:
    """The mode a plain `open(..., "w")` would give a new file (0666 under the umask)."""
    return 0o666 & ~_umask()


@functools.cache
def _umask() -> int:
    # Reading the umask means setting it; do it once per process rather than on every write.
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yields a temporary path in the target's folder; on success it replaces `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes 0600 files; outputs get the usual permissions under the caller's umask.
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_file(target: Path) -> Iterator[BinaryIO]:
    """Yields a binary file open on a temporary beside `target`; on success it replaces `target`.

    The file is the descriptor `mkstemp` opened, not a second open of its path: creating files is
    most of the cost of writing thousands of small segments.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), default_file_mode())  # mkstemp makes 0600 files
            yield out
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def write_bytes(target: Path, data: bytes) -> None:
    with atomic_file(target) as out:
        out.write(data)


def write_text(target: Path, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: Path, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n")


def write_npy(target: Path, array: np.ndarray) -> None:
    import numpy as np  # here, not at import: the api service's image has no numpy

    with atomic_file(target) as fh:
        np.save(fh, array, allow_pickle=False)


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yields a temporary folder beside `target`; on success it is renamed to `target` in one step."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
