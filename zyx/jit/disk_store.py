"""The caches' disk store: one SQLite file per cache directory, every value inside it, nothing in it executed.

diskcache pickled keys and values, kept values of 32 KiB and more in files that a database column names (and
reads and deletes), and kept their metadata outside SQLite: each let a planted row run code or delete a file.
Here a table maps TEXT keys to a metadata text and a BLOB value, all inside `zyx.db`; the only files this
module creates, opens or deletes are `zyx.db` and SQLite's companions of it, by name.

What it trusts: a directory that the current user owns and that neither group nor others can write (the same
for `zyx.db` and its companions). Anything else is refused: the cache then stays in memory.

Faults are handled here, each with one warning: a damaged or foreign `zyx.db` is deleted and made afresh;
a directory that cannot be written is read only (`mode=ro`, else `immutable=1`), so a filled cache on a
read-only filesystem still serves; a directory that cannot be used at all leaves the store unavailable
(`on_disk` False), and every call answers as an empty store. WAL mode and one transaction per change mean a
killed process leaves every entry whole or absent. Commits are not flushed to the disk one by one (synchronous
NORMAL): a power loss may forget the last ones, never damage the file, and a warm start, which records a use of
each entry it loads, does not wait for a flush per entry (some 10 ms each on this CPU's disk).
"""
from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import stat
import threading
import time
import urllib.parse
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

__all__ = ["CacheDirectoryWarning", "CacheWarning", "DATABASE_FILES", "DiskStore", "Row", "untrusted_reason"]

DATABASE_NAME = "zyx.db"  # not diskcache's cache.db: an older zyx may share the directory
DATABASE_FILES = tuple(DATABASE_NAME + suffix for suffix in ("", "-wal", "-shm", "-journal"))
APPLICATION_ID = 0x5A5958  # "ZYX" in the database header: marks a zyx.db as this module's
SCHEMA_VERSION = 1
TABLES = ("kernels", "programs", "tuning")
_BUSY_TIMEOUT_SECONDS = 30.0
_CORRUPTION_CODES = ("SQLITE_CORRUPT", "SQLITE_NOTADB")

T = TypeVar("T")


class CacheWarning(UserWarning):
    """The cache met a fault it recovered from (a damaged entry or database, a read-only directory)."""


class CacheDirectoryWarning(CacheWarning):
    """The cache directory cannot be used, so compiled kernels and programs stay in memory only."""

    def __init__(self, reason: str):
        super().__init__(f"zyx cache: {reason}; keeping compiled kernels and programs in memory only")
        self.reason = reason


@dataclass(frozen=True)
class Row:
    """One entry without its value: what listing the cache needs."""
    key: str
    meta: str
    size: int
    created: float
    last_used: float
    hits: int


class _Damaged(Exception):
    """zyx.db is not a database this module wrote (garbage, truncated, or another program's)."""


def untrusted_reason(directory: Path) -> str | None:
    """Why `directory` (which exists) must not be trusted, or None: another user owns it, or group or others
    can write it or one of the database files in it."""
    for path in (directory, *(directory / name for name in DATABASE_FILES)):
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue
        what = "the cache directory" if path == directory else path.name
        expected = stat.S_ISDIR if path == directory else stat.S_ISREG
        if not expected(info.st_mode):
            return f"refusing {path}: {what} is a {_kind(info.st_mode)}; remove it"
        if info.st_uid != os.geteuid():
            return (f"refusing {directory}: {what} belongs to user {info.st_uid}, not to you ({os.geteuid()}); "
                    f"set ZYX_CACHE_DIR to a directory of your own")
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return (f"refusing {directory}: {what} is writable by group or others (mode "
                    f"{stat.S_IMODE(info.st_mode):o}), so they could plant entries; run `chmod go-w {path}` "
                    f"if only you can write there, or set ZYX_CACHE_DIR to a directory of your own")
    return None


def _kind(mode: int) -> str:
    return "symbolic link" if stat.S_ISLNK(mode) else "directory" if stat.S_ISDIR(mode) else "special file"


def _is_corruption(error: sqlite3.Error) -> bool:
    name = getattr(error, "sqlite_errorname", "")
    return name.startswith(_CORRUPTION_CODES) or (not name and type(error) is sqlite3.DatabaseError)


class DiskStore:
    """One table of `directory/zyx.db`: TEXT key -> (metadata text, BLOB value), bounded by `size_limit` bytes
    of keys, metadata and values together, least recently used evicted first. Thread-safe."""

    def __init__(self, directory: str | os.PathLike, table: str, size_limit: int):
        if table not in TABLES:
            raise ValueError(f"unknown cache table {table!r}; expected one of {TABLES}")
        self.directory = Path(directory)
        self.path = self.directory / DATABASE_NAME
        self.table = table
        self.size_limit = size_limit
        self.read_only = False
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._warned = False
        self._open()

    @property
    def on_disk(self) -> bool:
        """Whether entries are read from disk (they are written too unless `read_only`)."""
        return self._connection is not None

    # -- reading -------------------------------------------------------------------------------------

    def get(self, key: str) -> tuple[Row, bytes] | None:
        """The entry under `key`, or None. Reading does not count as a use: call `record_use` once it proved good."""
        found = self._guarded("read", lambda db: db.execute(
            f"SELECT key, meta, size, created, last_used, hits, value FROM {self.table} WHERE key = ?",
            (key,)).fetchone())
        if found is None:
            return None
        *fields, value = found
        return Row(*fields), bytes(value)

    def holds(self, key: str) -> bool:
        """Whether an entry is stored under `key` (without reading it or counting a use)."""
        return bool(self._guarded("read", lambda db: db.execute(
            f"SELECT 1 FROM {self.table} WHERE key = ?", (key,)).fetchone()))

    def is_empty(self) -> bool:
        """Whether the table is on disk and holds no entry."""
        return self.on_disk and self._guarded("read", lambda db: db.execute(
            f"SELECT 1 FROM {self.table} LIMIT 1").fetchone()) is None

    def rows(self) -> list[Row]:
        """Every entry without its value, least recently used first; listing refreshes nothing."""
        found = self._guarded("read", lambda db: db.execute(
            f"SELECT key, meta, size, created, last_used, hits FROM {self.table} ORDER BY last_used, rowid"
        ).fetchall())
        return [Row(*fields) for fields in found or []]

    def volume(self) -> int:
        """Bytes held: keys, metadata and values, as the size limit counts them."""
        return self._guarded("read", lambda db: db.execute(
            f"SELECT COALESCE(SUM(size), 0) FROM {self.table}").fetchone()[0]) or 0

    # -- writing -------------------------------------------------------------------------------------

    def put(self, key: str, meta: str, value: bytes) -> bool:
        """Store an entry unless `key` is present or it alone exceeds the size limit; evict least recently used
        entries to stay within the limit. One transaction: a killed process leaves it whole or absent."""
        size = len(key.encode()) + len(meta.encode()) + len(value)
        if size > self.size_limit or not self._writable():
            return False
        now = time.time()

        def insert(db: sqlite3.Connection) -> bool:
            with _transaction(db):
                if db.execute(f"SELECT 1 FROM {self.table} WHERE key = ?", (key,)).fetchone():
                    return False
                db.execute(f"INSERT INTO {self.table} (key, meta, value, size, created, last_used, hits) "
                           f"VALUES (?, ?, ?, ?, ?, ?, 0)", (key, meta, value, size, now, now))
                self._evict(db, keep=key)
                return True
        return bool(self._guarded("write to", insert))

    def record_use(self, key: str) -> None:
        """Count a hit and make the entry the most recently used."""
        if self._writable():
            self._guarded("write to", lambda db: db.execute(
                f"UPDATE {self.table} SET hits = hits + 1, last_used = ? WHERE key = ?", (time.time(), key)))

    def delete(self, keys: list[str]) -> int:
        """Remove entries; return how many were there."""
        if not keys or not self._writable():
            return 0

        def remove(db: sqlite3.Connection) -> int:
            with _transaction(db):
                return sum(db.execute(f"DELETE FROM {self.table} WHERE key = ?", (key,)).rowcount for key in keys)
        return self._guarded("write to", remove) or 0

    def clear(self) -> int:
        """Remove every entry of this table; return how many there were. A read-only store is an error here
        (a CacheDirectoryWarning), since clearing was asked for."""
        if self.read_only:
            warnings.warn(CacheDirectoryWarning(f"cannot clear {self.directory}: it is read-only"), stacklevel=2)
            return 0

        def remove(db: sqlite3.Connection) -> int:
            with _transaction(db):
                return db.execute(f"DELETE FROM {self.table}").rowcount
        return self._guarded("clear", remove) or 0

    def _evict(self, db: sqlite3.Connection, keep: str) -> None:
        excess = db.execute(f"SELECT COALESCE(SUM(size), 0) FROM {self.table}").fetchone()[0] - self.size_limit
        doomed = []
        for key, size in db.execute(f"SELECT key, size FROM {self.table} WHERE key != ? ORDER BY last_used, rowid",
                                    (keep,)):
            if excess <= 0:
                break
            doomed.append(key)
            excess -= size
        db.executemany(f"DELETE FROM {self.table} WHERE key = ?", [(key,) for key in doomed])

    # -- faults --------------------------------------------------------------------------------------

    def _writable(self) -> bool:
        """Whether writes can go to disk; a read-only store warned once when it opened."""
        return self._connection is not None and not self.read_only

    def _guarded(self, action: str, operation: Callable[[sqlite3.Connection], T]) -> T | None:
        """Run one operation. A damaged database is made afresh and the operation runs once more on it; any
        other fault leaves the store unavailable and the operation answers None (a miss, nothing written)."""
        with self._lock:
            for attempt in ("first", "on a fresh database"):
                if self._connection is None:
                    return None
                try:
                    return operation(self._connection)
                except sqlite3.Error as error:
                    if _is_corruption(error) and not self.read_only and attempt == "first":
                        self._start_afresh(f"{self.path} is damaged ({error})")
                    else:
                        self._give_up(f"cannot {action} {self.directory} ({error})")
            return None

    def _warn(self, warning: Warning) -> None:
        """One warning per store: the first fault explains the state; later ones add nothing."""
        if not self._warned:
            self._warned = True
            warnings.warn(warning, stacklevel=5)

    def _give_up(self, reason: str) -> None:
        self._close()
        self._warn(CacheDirectoryWarning(reason))

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        self.read_only = False

    def _start_afresh(self, reason: str) -> None:
        """Delete the database files (by name, nothing else) and create an empty database."""
        self._close()
        try:
            for name in DATABASE_FILES:
                (self.directory / name).unlink(missing_ok=True)
            self._connection = _connect(self.path)
        except (OSError, sqlite3.Error, _Damaged) as error:
            self._close()
            self._warn(CacheDirectoryWarning(f"{reason}, and it cannot be made afresh ({error}); "
                                             f"remove {self.path}"))
            return
        self._warn(CacheWarning(f"zyx cache: {reason}; it was made afresh, so compiled kernels and programs "
                                f"are built again"))

    # -- opening -------------------------------------------------------------------------------------

    def _open(self) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as error:
            self._warn(CacheDirectoryWarning(f"cannot open {self.directory} ({error})"))
            return
        reason = untrusted_reason(self.directory)
        if reason is not None:
            self._warn(CacheDirectoryWarning(reason))
            return
        unwritable = _unwritable_because(self.directory)
        if unwritable is not None:
            self._open_read_only(unwritable)
            return
        try:
            self._connection = _connect(self.path)
        except _Damaged as damage:
            self._start_afresh(f"{self.path} {damage}")
        except sqlite3.Error as error:
            if _is_corruption(error):
                self._start_afresh(f"{self.path} is damaged ({error})")
            else:
                self._open_read_only(str(error))
        except OSError as error:
            self._open_read_only(str(error))

    def _open_read_only(self, write_error: str) -> None:
        """Serve a filled cache from a directory this process cannot write (a read-only filesystem)."""
        for mode in ("mode=ro", "immutable=1"):
            try:
                self._connection = _connect(self.path, mode)
                self._connection.execute(f"SELECT 1 FROM {self.table} LIMIT 1").fetchall()
            except (sqlite3.Error, OSError, _Damaged):
                self._close()
                continue
            self.read_only = True
            self._warn(CacheWarning(f"zyx cache: cannot write to {self.directory} ({write_error}); reading "
                                    f"compiled kernels and programs from it, keeping new ones in memory only"))
            return
        self._warn(CacheDirectoryWarning(f"cannot open {self.directory} ({write_error})"))


def _unwritable_because(directory: Path) -> str | None:
    """Why the directory cannot be written, found before sqlite opens it: sqlite would open a database on a
    read-only filesystem without complaint, or fail in whichever call comes first, depending on its files."""
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return "read-only file system"
    except OSError as error:
        return str(error)
    return None if os.access(directory, os.W_OK) else "no write permission"


def _connect(path: Path, read_only_mode: str | None = None) -> sqlite3.Connection:
    """A connection to a ready database: created (0600, WAL) when absent; _Damaged when it is not ours."""
    if read_only_mode is None:
        if not path.exists():
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        target, uri = str(path), False
    else:
        if not path.is_file():
            raise _Damaged("does not exist")
        target, uri = f"file:{urllib.parse.quote(str(path))}?{read_only_mode}", True
    deadline = time.monotonic() + _BUSY_TIMEOUT_SECONDS
    while True:
        db = sqlite3.connect(target, uri=uri, timeout=_BUSY_TIMEOUT_SECONDS, isolation_level=None,
                             check_same_thread=False)
        try:
            _prepare(db, writable=read_only_mode is None)
            return db
        except sqlite3.OperationalError as error:
            db.close()
            # switching a new file to WAL while other processes open it answers "locked" at once, without
            # SQLite's busy wait (16 processes on the H200 host): wait a moment and open again
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.005, 0.05))
        except BaseException:
            db.close()
            raise


def _prepare(db: sqlite3.Connection, writable: bool) -> None:
    """Check that the database is ours, creating its tables in an empty one. Writers check inside one
    IMMEDIATE transaction: a process that meets a database another is creating waits for it, instead of
    mistaking the half-made file for someone else's and deleting it."""
    if not writable:
        if not _is_ours(db):
            raise _Damaged(_not_ours(db) or "is empty")
        return
    journal = db.execute("PRAGMA journal_mode = WAL").fetchone()
    if journal and str(journal[0]).lower() == "wal":  # NORMAL is safe against power loss only under WAL (some
        db.execute("PRAGMA synchronous = NORMAL")     # network filesystems refuse WAL: FULL stays there)
    with _transaction(db):  # fails at once on a read-only filesystem, not at the first write
        ours = _is_ours(db)
        reason = None if ours else _not_ours(db)
        if reason:
            raise _Damaged(reason)
        for table in TABLES:  # (in a database of ours too: one an older zyx made lacks the tables added since)
            db.execute(f"CREATE TABLE IF NOT EXISTS {table} (key TEXT PRIMARY KEY NOT NULL, meta TEXT NOT NULL, "
                       f"value BLOB NOT NULL, size INTEGER NOT NULL, created REAL NOT NULL, "
                       f"last_used REAL NOT NULL, hits INTEGER NOT NULL)")
            db.execute(f"CREATE INDEX IF NOT EXISTS {table}_by_last_used ON {table} (last_used)")
        if not ours:
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _not_ours(db: sqlite3.Connection) -> str | None:
    """Why a database that is not zyx's cannot be used (None when it is empty)."""
    if db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]:
        return "was written by another program or an older zyx"
    return None


def _is_ours(db: sqlite3.Connection) -> bool:
    return (db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
            and db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION)


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): one writer at a time, nothing half done."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
