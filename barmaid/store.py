"""What must survive a restart, a crash or a power cut: bottle levels, calibrations, pour history.

The rule: **the recorded level is never above what is really in the bottle, and no pour is
counted twice.** When barmaid cannot know what a pour did (a lost daemon, a crash), it counts the
most that can have been poured and says so in the pour's outcome.

How the store keeps it: SQLite in WAL mode with synchronous=FULL. A pour is written when it
starts, with what a restart needs to count it (its spans, `time.monotonic()` at its start
and the boot id, so the time it ran is known exactly within one boot), and when it ends, its
outcome together with the levels it changed, in ONE transaction: a row still `running` has
changed no level on disk, so a restart deducts it exactly once. An end record that cannot be
written (a full disk, a lock) is kept in memory and retried, first in every later write (in the
same transaction, so the level on disk never includes a pour whose row still says `running`) and
by a retry thread.

Only a database that fails SQLite's own integrity check is moved aside and rebuilt. A full,
locked, read-only or failing disk leaves the file alone: writes wait a bounded busy timeout and
then fail with StoreError (the pour is refused before anything moves), and at start-up the
StoreError names the file and what to do.
"""

from __future__ import annotations

import itertools
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional

from .calibration import Run
from .drivers.base import Span
from .errors import StoreError

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

FILENAME = "barmaid.db"
#: How long a write waits for another connection's lock before it fails (and the pour is refused).
BUSY_TIMEOUT_S = 2.0
#: Seconds between two tries of an end-of-pour record that could not be written.
RETRY_S = 1.0
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS pumps (
    pump INTEGER PRIMARY KEY,
    level_ml REAL,              -- NULL: not tracked
    flow_ml_s REAL,             -- NULL: the config's
    calibration_seconds REAL    -- how long the last calibration run lasted
);
CREATE TABLE IF NOT EXISTS pours (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started REAL NOT NULL,      -- Unix time
    ended REAL,
    action TEXT NOT NULL,
    planned_ml TEXT NOT NULL,   -- JSON {pump: ml}
    poured_ml TEXT,             -- JSON {pump: ml}
    outcome TEXT NOT NULL       -- running, completed, stopped, lost, shut down, failed, interrupted
);
CREATE TABLE IF NOT EXISTS calibration_runs (  -- since the pump's last reset_calibration
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pump INTEGER NOT NULL,
    taken REAL NOT NULL,        -- Unix time the run ended
    seconds REAL NOT NULL,      -- how long the pump really ran
    charged_ml REAL NOT NULL,   -- what it took off the bottle's level
    cut TEXT,                   -- why its length is unknown; NULL: known
    ml REAL                     -- measured with set_flow; NULL: not yet (not a point)
);
"""
#: Columns added to `pours` after the first release: what a restart needs to count a pour.
_RESTART_COLUMNS = {
    "spans": "TEXT",            # JSON {pump: [start, stop]}: seconds from the start
    "mono_start": "REAL",       # time.monotonic() at the start, no later than the real start
    "boot_id": "TEXT",          # the boot mono_start belongs to
}
_PUMP_COLUMNS = {"level_ml", "flow_ml_s", "calibration_seconds"}
_POUR_COLUMNS = "id, started, ended, action, planned_ml, poured_ml, outcome, spans, mono_start, boot_id"


@dataclass(frozen=True)
class PumpRecord:
    level_ml: Optional[float] = None
    flow_ml_s: Optional[float] = None
    calibration_seconds: Optional[float] = None


@dataclass(frozen=True)
class PourRecord:
    id: int
    started: float
    ended: Optional[float]
    action: str
    planned_ml: dict[int, float]
    poured_ml: Optional[dict[int, float]]
    outcome: str
    #: When each pump runs; None for pours recorded before spans were.
    spans: Optional[dict[int, Span]] = None
    #: time.monotonic() at the start (no later than the real start) and the boot it belongs to.
    mono_start: Optional[float] = None
    boot_id: Optional[str] = None

    def elapsed(self, now: float, boot_id: Optional[str]) -> Optional[float]:
        """Seconds since the start (no fewer than really ran), or None when they cannot be known."""
        if self.mono_start is None or boot_id is None or boot_id != self.boot_id or now < self.mono_start:
            return None
        return now - self.mono_start


class _End(NamedTuple):
    """An end-of-pour record: the pour's row and the pump values it changed."""

    pour_id: int
    ended: float
    outcome: str
    poured_ml: str
    pumps: Mapping[int, Mapping[str, Optional[float]]]


def boot_id() -> Optional[str]:
    """This boot's id (Linux); None elsewhere: then time across a restart is never trusted."""
    try:
        return BOOT_ID.read_text(encoding="ascii").strip() or None
    except OSError:
        return None


class Store:
    """barmaid.db in the data directory. Thread-safe; every write is one transaction."""

    def __init__(self, data_dir: Optional[Path], busy_timeout: Optional[float] = None) -> None:
        """Opens (or creates) data_dir/barmaid.db; None keeps everything in memory (tests).

        Args:
            busy_timeout: seconds a write waits for another connection's lock; BUSY_TIMEOUT_S.

        Raises:
            StoreError: the folder or the file cannot be opened (full, locked, read-only, I/O
                error); the message names it and what to do. The file is left as it is.
        """
        self.path = Path(data_dir) / FILENAME if data_dir is not None else Path(":memory:")
        self.boot_id = boot_id()
        self._busy_timeout = BUSY_TIMEOUT_S if busy_timeout is None else busy_timeout
        self._lock = threading.Lock()
        self._pending: list[_End] = []
        self._retry: Optional[threading.Timer] = None
        self._closed = False
        try:
            if data_dir is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the data directory {self.path.parent}: {exc.strerror}") from None
        if data_dir is not None and not self.path.exists():
            log.warning("no database at %s: starting a new one (no levels, calibrations or history yet)", self.path)
        try:
            self._db = self._open_or_rebuild()
        except sqlite3.Error as exc:
            raise self._unusable(exc) from None
        except OSError as exc:  # moving a damaged file aside failed
            raise StoreError(
                f"{self.path} is damaged and cannot be moved aside ({exc.strerror}): move it away by hand"
            ) from None

    def close(self) -> None:
        """Writes what is still pending (one try), then closes."""
        with self._lock:
            self._closed = True
            if self._retry is not None:
                self._retry.cancel()
            if self._pending:
                with suppress(StoreError):
                    self._commit_pending()
            if self._pending:
                log.error(
                    "%d pour records could not be written to %s; the next start counts them as interrupted",
                    len(self._pending), self.path,
                )
            self._db.close()

    # ---- reads ----------------------------------------------------------------------------

    def pumps(self) -> dict[int, PumpRecord]:
        rows = self._read("SELECT pump, level_ml, flow_ml_s, calibration_seconds FROM pumps", ())
        return {pump: PumpRecord(*rest) for pump, *rest in rows}

    def history(self, limit: int = 50) -> list[PourRecord]:
        """The last pours, newest first; an end record not yet on disk is shown as it will be."""
        return self._pours(f"SELECT {_POUR_COLUMNS} FROM pours ORDER BY id DESC LIMIT ?", (limit,))

    def calibration_runs(self) -> dict[int, list[Run]]:
        """pump -> its calibrate runs since its last reset, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, pump, taken, seconds, charged_ml, cut, ml FROM calibration_runs ORDER BY id"
            ).fetchall()
        runs: dict[int, list[Run]] = {}
        for id_, pump, taken, seconds, charged, cut, ml in rows:
            runs.setdefault(pump, []).append(Run(pump, seconds, taken, charged, cut, ml, id_))
        return runs

    def unfinished(self) -> list[PourRecord]:
        """Pours recorded as started but never as ended, oldest first: a crash or power cut cut them off."""
        pours = self._pours(f"SELECT {_POUR_COLUMNS} FROM pours WHERE outcome = 'running' ORDER BY id", ())
        return [pour for pour in pours if pour.outcome == "running"]

    @property
    def pending(self) -> int:
        """End-of-pour records not yet on disk."""
        with self._lock:
            return len(self._pending)

    # ---- writes ---------------------------------------------------------------------------

    def set_pump(self, pump: int, **values: Optional[float]) -> None:
        """Sets level_ml, flow_ml_s and/or calibration_seconds of one pump."""
        with self._lock, self._transaction():
            self._upsert(pump, values)

    def save_calibration_run(self, run: Run, **pump: Optional[float]) -> int:
        """Stores a new run (its pump's unmeasured older runs go: only the newest can be measured)
        or, with its id, the ml measured after it; with what that changes of its pump, at once.
        Returns the run's id."""
        with self._lock, self._transaction():
            if run.id is None:
                self._db.execute("DELETE FROM calibration_runs WHERE pump = ? AND ml IS NULL", (run.pump,))
                run_id = _row_id(self._db.execute(
                    "INSERT INTO calibration_runs (pump, taken, seconds, charged_ml, cut, ml)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (run.pump, run.taken, run.seconds, run.charged_ml, run.cut, run.ml),
                ))
            else:
                self._db.execute("UPDATE calibration_runs SET ml = ? WHERE id = ?", (run.ml, run.id))
                run_id = run.id
            if pump:
                self._upsert(run.pump, pump)
        return run_id

    def reset_calibration(self, pump: int) -> None:
        """Forgets every calibrate run of the pump and its calibrated flow (the config's counts again)."""
        with self._lock, self._transaction():
            self._db.execute("DELETE FROM calibration_runs WHERE pump = ?", (pump,))
            self._upsert(pump, {"flow_ml_s": None})

    def begin_pour(
        self, action: str, planned_ml: dict[int, float], spans: Mapping[int, Span], mono_start: float
    ) -> int:
        """Records a pour about to start; raises StoreError (the pour must then not start).

        Args:
            mono_start: time.monotonic() now, before the pour starts: a restart that finds the
                pour unfinished counts it as run from then, never less than it really ran.
        """
        with self._lock, self._transaction():
            return _row_id(self._db.execute(
                "INSERT INTO pours (started, action, planned_ml, outcome, spans, mono_start, boot_id)"
                " VALUES (?, ?, ?, 'running', ?, ?, ?)",
                (
                    time.time(), action, json.dumps(planned_ml),
                    json.dumps({p: [s.start, s.stop] for p, s in spans.items()}), mono_start, self.boot_id,
                ),
            ))

    def end_pour(
        self, pour_id: int, outcome: str, poured_ml: dict[int, float], pumps: dict[int, dict[str, Optional[float]]]
    ) -> None:
        """Records how a pour ended and what it changed per pump (level, calibration), at once.

        Raises:
            StoreError: it could not be written now; it is kept and written with the next write
                or by the retry thread, whichever comes first.
        """
        end = _End(pour_id, time.time(), str(outcome), json.dumps(poured_ml), pumps)
        with self._lock:
            self._pending.append(end)
            try:
                self._commit_pending()
            except StoreError as exc:
                self._schedule_retry()
                raise StoreError(f"{exc}; kept in memory, tried again every {RETRY_S:g} s") from None

    # ---- inside ---------------------------------------------------------------------------

    def _read(self, sql: str, params: tuple) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read {self.path}: {exc}") from None

    def _pours(self, sql: str, params: tuple) -> list[PourRecord]:
        rows = self._read(sql, params)
        with self._lock:
            pending = {end.pour_id: end for end in self._pending}
        records = []
        for i, s, e, a, planned, poured, o, spans, mono, boot in rows:
            if i in pending:
                e, poured, o = pending[i].ended, pending[i].poured_ml, pending[i].outcome
            records.append(PourRecord(
                i, s, e, a, _ml(planned), _ml(poured) if poured else None, o,
                {int(p): Span(*span) for p, span in json.loads(spans).items()} if spans else None, mono, boot,
            ))
        return records

    def _open_or_rebuild(self) -> sqlite3.Connection:
        """Opens the database; moves it aside only if SQLite's integrity check fails.

        `sqlite3.OperationalError` (full, locked, read-only, I/O) is a DatabaseError too, but it
        says nothing about the file: it is raised as it is, never taken for damage.
        """
        try:
            return self._open()
        except sqlite3.OperationalError:
            raise
        except sqlite3.DatabaseError as exc:
            if not self._damaged():
                raise
            return self._rebuild(exc)

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=self._busy_timeout)
        try:
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("quick_check found damage")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            have = {row[1] for row in db.execute("PRAGMA table_info(pours)")}
            for name, kind in _RESTART_COLUMNS.items():
                if name not in have:
                    db.execute(f"ALTER TABLE pours ADD COLUMN {name} {kind}")
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _damaged(self) -> bool:
        """True only if SQLite's own integrity check says the file is damaged (or no database)."""
        try:
            with closing(sqlite3.connect(self.path, timeout=self._busy_timeout)) as db:
                return db.execute("PRAGMA integrity_check").fetchone()[0] != "ok"
        except sqlite3.OperationalError:
            return False  # it could not even be checked: locked, unreadable; not proven damaged
        except sqlite3.DatabaseError:
            return True

    def _unusable(self, exc: sqlite3.Error) -> StoreError:
        return StoreError(
            f"cannot open {self.path} ({exc}); the file was left as it is: free space on that disk,"
            " make the folder writable, or close the program holding the database, then start barmaid again"
        )

    def _rebuild(self, why: Exception) -> sqlite3.Connection:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = next(
            path
            for n in itertools.count()
            if not (path := self.path.with_name(f"{FILENAME}.corrupt-{stamp}" + (f"-{n}" if n else ""))).exists()
        )
        log.error("%s is damaged (%s): moved it to %s and started a new one", self.path, why, aside.name)
        for suffix in ("", "-wal", "-shm"):
            part = Path(f"{self.path}{suffix}")
            if part.exists():
                part.replace(Path(f"{aside}{suffix}"))
        return self._open()

    def _upsert(self, pump: int, values: Mapping[str, Optional[float]]) -> None:
        unknown = set(values) - _PUMP_COLUMNS
        if unknown:
            raise ValueError(f"no pump column {sorted(unknown)}")
        names = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        updates = ", ".join(f"{name} = excluded.{name}" for name in values)
        self._db.execute(
            f"INSERT INTO pumps (pump, {names}) VALUES (?, {marks}) ON CONFLICT(pump) DO UPDATE SET {updates}",
            (pump, *values.values()),
        )

    def _commit_pending(self) -> None:
        with self._transaction():
            pass

    def _schedule_retry(self) -> None:
        if self._closed or (self._retry is not None and self._retry.is_alive()):
            return
        self._retry = threading.Timer(RETRY_S, self._retry_pending)
        self._retry.name = "barmaid-store-retry"
        self._retry.daemon = True
        self._retry.start()

    def _retry_pending(self) -> None:
        with self._lock:
            if self._closed or not self._pending:
                return
            try:
                self._commit_pending()
                log.info("the pour records that could not be written are written now")
            except StoreError:
                self._retry = None
                self._schedule_retry()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE, the pending end records, the caller's writes, COMMIT; rolled back on
        any error; sqlite errors become StoreError. Call with self._lock held."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            for end in self._pending:
                self._db.execute(
                    "UPDATE pours SET ended = ?, poured_ml = ?, outcome = ? WHERE id = ?",
                    (end.ended, end.poured_ml, end.outcome, end.pour_id),
                )
                for pump, values in end.pumps.items():
                    self._upsert(pump, values)
            yield
            self._db.execute("COMMIT")
            self._pending.clear()
        except BaseException as exc:
            if self._db.in_transaction:
                with suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot write {self.path}: {exc}") from None
            raise


def _ml(text: str) -> dict[int, float]:
    return {int(pump): ml for pump, ml in json.loads(text).items()}


def _row_id(cursor: sqlite3.Cursor) -> int:
    """The id of the row an INSERT just wrote (sqlite3 leaves it None after any other statement)."""
    if cursor.lastrowid is None:
        raise StoreError("the database wrote the row but gave no id for it; restart barmaid")
    return cursor.lastrowid
