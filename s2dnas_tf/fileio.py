"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never half.

Every file the library and the scripts write goes through here: the content is written to a
temporary name in the destination's own directory (a rename is atomic only within one file
system) and renamed onto the destination once complete. A failure leaves the destination as
it was and removes the temporary file.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

__all__ = ["atomic_path", "write_bytes", "write_json", "write_text"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yields a temporary path beside `path`; renames it onto `path` when the block succeeds.

    For writers that take a path rather than a file object (`keras.Model.save`,
    `Figure.savefig`), `suffix` keeps the extension they infer the format from, e.g.
    `with atomic_path(p, suffix=".keras") as tmp: model.save(tmp)`.

    Args:
        path: The destination file. Its directory is created if missing.
        suffix: Ending of the temporary name.

    Yields:
        The temporary path to write to.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # Not mkstemp: its file is private (0600), and the rename would keep that mode.
    tmp = os.path.join(
        directory, f".{os.path.basename(path)}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{suffix}"
    )
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes(path: str | os.PathLike, content: bytes) -> None:
    """Writes `content` to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(content)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def write_json(path: str | os.PathLike, payload: Any) -> None:
    """Writes `payload` as indented, key-sorted JSON (and a final newline) atomically."""
    write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")
