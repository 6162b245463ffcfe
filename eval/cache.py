"""Per-image score cache: a re-run computes only what is new, an interrupted run loses nothing.

A score is keyed by ``(content, metric, version)``: ``content`` is the SHA-256 of the image file's bytes (for
full-reference metrics ``"<image sha>:<reference sha>"``, for folder metrics a digest of all files involved),
``metric`` the metric name and ``version`` the metric's settings (library version, options, weight files; see
``eval.metrics``). Scores live in one SQLite file (default ``<out>/score_cache.sqlite``); each batch is one
transaction, so a run killed at any point keeps every batch it finished and never leaves a torn record. Several
processes (``accelerate launch``) may share the file: SQLite serialises writers (``timeout`` below).
"""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scores (
    content TEXT NOT NULL,
    metric TEXT NOT NULL,
    version TEXT NOT NULL,
    score REAL NOT NULL,
    PRIMARY KEY (content, metric, version)
)
"""


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ScoreCache:
    """SQLite-backed ``(content, metric, version) -> score`` store.

    Args:
        path: the SQLite file (created with its parent directory); ``None`` keeps scores in memory only.
        timeout: seconds a process waits for another one's lock on the file before giving up.
    """

    def __init__(self, path: str | os.PathLike | None, timeout: float = 60.0):
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path) if self.path is not None else ":memory:", timeout=timeout)
        self._setup("PRAGMA journal_mode=WAL" if self.path is not None else "PRAGMA journal_mode=MEMORY", timeout)

    def _setup(self, journal_pragma: str, timeout: float) -> None:
        """Set the journal mode and create the table, retrying while another process holds the file.

        When several processes open a new file at once (one per ``accelerate`` / ``torchrun`` rank), switching it
        to WAL can fail at once with "database is locked": SQLite reports that lock conflict without waiting on
        the connection's busy timeout. So the set-up is retried, with a short random back-off, until ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._db.execute(journal_pragma)
                self._db.execute(_SCHEMA)
                self._db.commit()
                return
            except sqlite3.OperationalError as e:
                if not ("locked" in str(e) or "busy" in str(e)) or time.monotonic() > deadline:
                    raise
                self._db.rollback()
                time.sleep(random.uniform(0.01, 0.05))

    def get_many(self, metric: str, version: str, contents: Iterable[str]) -> dict[str, float]:
        """Cached scores of ``contents`` for ``(metric, version)``; missing keys are absent from the result."""
        contents = list(dict.fromkeys(contents))
        found: dict[str, float] = {}
        for i in range(0, len(contents), 500):
            chunk = contents[i : i + 500]
            q = f"SELECT content, score FROM scores WHERE metric=? AND version=? AND content IN ({','.join('?' * len(chunk))})"
            for content, score in self._db.execute(q, [metric, version, *chunk]):
                found[content] = float(score)
        return found

    def put_many(self, metric: str, version: str, items: Iterable[tuple[str, float]]) -> None:
        """Store ``(content, score)`` pairs in one transaction (all or nothing)."""
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO scores (content, metric, version, score) VALUES (?, ?, ?, ?)",
                [(c, metric, version, float(s)) for c, s in items],
            )

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM scores").fetchone()[0])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ScoreCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
