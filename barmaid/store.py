"""What must survive a restart, a crash or a power cut: bottle levels, calibrations, pour history.

SQLite in WAL mode with synchronous=FULL: a pour is written when it starts and when it ends, each
in one transaction, so a pour cut off by a crash is found at the next start (`unfinished`).
A missing or corrupt database is rebuilt with one log line, never a crash.
"""

from __future__ import annotations

import itertools
import json
import logging
import sqlite3
import threading
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from .calibration import Run
from .errors import StoreError

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

FILENAME = "barmaid.db"
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
    outcome TEXT NOT NULL       -- running, completed, stopped, lost, shut down, interrupted
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


_PUMP_COLUMNS = {"level_ml", "flow_ml_s", "calibration_seconds"}


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


class Store:
    """barmaid.db in the data directory. Thread-safe; every write is one transaction."""

    def __init__(self, data_dir: Optional[Path]) -> None:
        """Opens (or creates) data_dir/barmaid.db; None keeps everything in memory (tests)."""
        self.path = Path(data_dir) / FILENAME if data_dir is not None else Path(":memory:")
        self._lock = threading.Lock()
        try:
            if data_dir is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the data directory {self.path.parent}: {exc.strerror}") from None
        if data_dir is not None and not self.path.exists():
            log.warning("no database at %s: starting a new one (no levels, calibrations or history yet)", self.path)
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as exc:
            self._db = self._rebuild(exc)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- reads ----------------------------------------------------------------------------

    def pumps(self) -> dict[int, PumpRecord]:
        with self._lock:
            rows = self._db.execute("SELECT pump, level_ml, flow_ml_s, calibration_seconds FROM pumps").fetchall()
        return {pump: PumpRecord(*rest) for pump, *rest in rows}

    def history(self, limit: int = 50) -> list[PourRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, started, ended, action, planned_ml, poured_ml, outcome FROM pours ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            PourRecord(i, s, e, a, _ml(planned), _ml(poured) if poured else None, o)
            for i, s, e, a, planned, poured, o in rows
        ]

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
        """Pours recorded as started but never as ended: a crash or power cut cut them off."""
        return [record for record in self.history(limit=1_000_000) if record.outcome == "running"]

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
                run_id = self._db.execute(
                    "INSERT INTO calibration_runs (pump, taken, seconds, charged_ml, cut, ml) VALUES (?, ?, ?, ?, ?, ?)",
                    (run.pump, run.taken, run.seconds, run.charged_ml, run.cut, run.ml),
                ).lastrowid
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

    def begin_pour(self, action: str, planned_ml: dict[int, float]) -> int:
        """Records a pour about to start; raises StoreError (the pour must then not start)."""
        return self._write(
            "INSERT INTO pours (started, action, planned_ml, outcome) VALUES (?, ?, ?, 'running')",
            (time.time(), action, json.dumps(planned_ml)),
        )

    def end_pour(
        self, pour_id: int, outcome: str, poured_ml: dict[int, float], pumps: dict[int, dict[str, Optional[float]]]
    ) -> None:
        """Records how a pour ended and what it changed per pump (level, calibration), at once."""
        with self._lock, self._transaction():
            self._db.execute(
                "UPDATE pours SET ended = ?, poured_ml = ?, outcome = ? WHERE id = ?",
                (time.time(), json.dumps(poured_ml), outcome, pour_id),
            )
            for pump, values in pumps.items():
                self._upsert(pump, values)

    # ---- inside ---------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=5)
        try:
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("quick_check found damage")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _rebuild(self, why: Exception) -> sqlite3.Connection:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = next(
            path
            for n in itertools.count()
            if not (path := self.path.with_name(f"{FILENAME}.corrupt-{stamp}" + (f"-{n}" if n else ""))).exists()
        )
        log.error("%s is unreadable (%s): moved it to %s and started a new one", self.path, why, aside.name)
        for suffix in ("", "-wal", "-shm"):
            part = Path(f"{self.path}{suffix}")
            if part.exists():
                part.replace(Path(f"{aside}{suffix}"))
        return self._open()

    def _upsert(self, pump: int, values: dict[str, Optional[float]]) -> None:
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

    def _write(self, sql: str, params: tuple) -> int:
        with self._lock, self._transaction():
            return self._db.execute(sql, params).lastrowid

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any error; sqlite errors become StoreError."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            yield
            self._db.execute("COMMIT")
        except BaseException as exc:
            if self._db.in_transaction:
                with suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot write {self.path}: {exc}") from None
            raise


def _ml(text: str) -> dict[int, float]:
    return {int(pump): ml for pump, ml in json.loads(text).items()}
