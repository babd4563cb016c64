"""Model versions in SQLite: what was trained on what, how good it was, which one is in use.

The registry lives in two tables of a SQLite file — by default the
historian's own database, so one file holds a site's telemetry and the models
learned from it:

``model_versions``
    one row per trained model: ``created_at``, ``created_by``, the training
    window ``t0``/``t1`` (data time, seconds), the feature names per kind, the
    metrics (JSON: MAE per kind and horizon, coverage, persistence/RC
    baselines), the pickled :class:`~thermogate.models.forecast.ThermalModel`
    and, once promoted, who promoted it, when and why.
``model_decisions``
    every promotion decision, taken or refused, with the scores compared.

Exactly one version is *promoted* at a time (the one the controller uses).
:meth:`Registry.maybe_promote` never promotes a candidate that is worse than
the promoted model on the same held-out rows.

Trust boundary: blobs are unpickled, which runs code. The registry only loads
blobs it wrote itself into the site's own database; never point it at a
database from somewhere you do not trust.
"""

from __future__ import annotations

import json
import math
import pickle
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from thermogate.plc.errors import ThermogateError

from .dataset import Dataset
from .forecast import ThermalModel
from .scoring import Score

__all__ = ["DECISION_HORIZON_MIN", "ModelLoadError", "Registry", "load_version", "pooled_mae"]

#: the horizon (minutes) whose pooled MAE decides a promotion
DECISION_HORIZON_MIN = 15

_SCHEMA = """
CREATE TABLE IF NOT EXISTS "model_versions" (
    "id" INTEGER PRIMARY KEY AUTOINCREMENT,
    "created_at" REAL NOT NULL,
    "created_by" TEXT NOT NULL,
    "t0" REAL NOT NULL,
    "t1" REAL NOT NULL,
    "features" TEXT NOT NULL,
    "metrics" TEXT NOT NULL,
    "promoted_at" REAL,
    "promoted_by" TEXT,
    "promoted_reason" TEXT,
    "model" BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS "model_decisions" (
    "id" INTEGER PRIMARY KEY AUTOINCREMENT,
    "at" REAL NOT NULL,
    "candidate" INTEGER NOT NULL,
    "current" INTEGER,
    "promoted" INTEGER NOT NULL,
    "by" TEXT NOT NULL,
    "reason" TEXT NOT NULL,
    "candidate_mae_c" REAL,
    "current_mae_c" REAL
);
CREATE TABLE IF NOT EXISTS "model_promoted" (
    "one" INTEGER PRIMARY KEY CHECK ("one" = 1),
    "version" INTEGER NOT NULL REFERENCES "model_versions"("id")
);
"""


def load_version(path: str | Path, version: int) -> ThermalModel:
    """The model of ``version`` in the registry of ``path``, read through a
    read-only connection: no schema written, no write lock waited for (a
    controller loads a promoted version between scans while its historian
    writes the same file)."""
    uri = f"{Path(path).resolve().as_uri()}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=5.0)
    try:
        return _load(conn, version)
    finally:
        conn.close()


class ModelLoadError(ThermogateError):
    """A stored version that does not unpickle into a :class:`ThermalModel` (a damaged
    file, or a blob of another library version): it forecasts nothing and scores
    worst, so the next retrain replaces it."""


def _load(conn: sqlite3.Connection, version: int) -> ThermalModel:
    row = conn.execute('SELECT "model" FROM "model_versions" WHERE "id" = ?', (version,)).fetchone()
    if row is None:
        raise KeyError(f"no model version {version}")
    try:
        model = pickle.loads(row[0])  # trust boundary: a blob this registry wrote
    except Exception as exc:  # whatever a damaged blob raises (truncated, bad opcode, ...)
        raise ModelLoadError(
            f"model version {version} cannot be loaded ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(model, ThermalModel):
        raise ModelLoadError(f"model version {version} is not a ThermalModel")
    return model


def pooled_mae(
    model: ThermalModel, rows: Dataset, horizon_min: int = DECISION_HORIZON_MIN
) -> float:
    """Mean absolute error (°C) at ``horizon_min`` over every row of every kind.

    Rows of a kind the model cannot forecast (or was trained on other features
    for) count as infinitely wrong, so a model that lost a kind, or predates a
    change of features, never looks better than one that has it.
    """
    if horizon_min not in rows.horizons_min:
        raise ValueError(f"the held-out rows have no {horizon_min}-minute target")
    j = rows.horizons_min.index(horizon_min)
    score = Score()
    for kd in rows:
        if len(kd) == 0:
            continue
        km = model.kinds.get(kd.kind)
        if km is None or horizon_min not in km.horizons_min or km.feature_names != kd.feature_names:
            return float("inf")  # cannot forecast these rows (or not with these features)
        jm = model.kinds[kd.kind].horizons_min.index(horizon_min)
        mean, _ = model.predict(kd)
        score.add(kd.temp + kd.y[:, j], mean[:, jm])
    if score.mae is None:
        raise ValueError("no held-out rows with a known target")
    return score.mae


def _json_default(o: object) -> object:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class Registry:
    """Model versions of one site in the SQLite file at ``path`` (WAL, one transaction per call)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            with self._tx():
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        self._conn.execute(stmt)
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:  # not SQLite, or damaged
            self._conn.close()
            raise ThermogateError(f"{self.path}: not a thermogate database ({exc})") from None
        except BaseException:
            self._conn.close()
            raise

    # -- plumbing -----------------------------------------------------------
    def _tx(self) -> _Tx:
        return _Tx(self._conn)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- API ----------------------------------------------------------------
    def add(
        self,
        model: ThermalModel,
        window: tuple[float, float],
        metrics: Mapping[str, Any],
        created_by: str,
    ) -> int:
        """Store a trained model; returns its version number (not promoted)."""
        t0, t1 = (float(window[0]), float(window[1]))
        features = {k: list(km.feature_names) for k, km in model.kinds.items()}
        blob = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
        with self._tx():
            cur = self._conn.execute(
                'INSERT INTO "model_versions" ("created_at", "created_by", "t0", "t1", '
                '"features", "metrics", "model") VALUES (?, ?, ?, ?, ?, ?, ?)',
                (
                    time.time(),
                    created_by,
                    t0,
                    t1,
                    json.dumps(features),
                    json.dumps(metrics, default=_json_default),
                    blob,
                ),
            )
            return int(cur.lastrowid or 0)

    def promote(self, version: int, by: str, reason: str) -> None:
        """Make ``version`` the one in use (unconditionally; see :meth:`maybe_promote`)."""
        with self._tx():
            self._promote(version, by, reason)

    def _promote(self, version: int, by: str, reason: str) -> None:
        if (
            self._conn.execute(
                'SELECT 1 FROM "model_versions" WHERE "id" = ?', (version,)
            ).fetchone()
            is None
        ):
            raise KeyError(f"no model version {version}")
        self._conn.execute(
            'UPDATE "model_versions" SET "promoted_at" = ?, "promoted_by" = ?, '
            '"promoted_reason" = ? WHERE "id" = ?',
            (time.time(), by, reason, version),
        )
        self._conn.execute(
            'INSERT INTO "model_promoted" ("one", "version") VALUES (1, ?) '
            'ON CONFLICT("one") DO UPDATE SET "version" = excluded."version"',
            (version,),
        )

    def promoted_version(self) -> int | None:
        row = self._conn.execute('SELECT "version" FROM "model_promoted"').fetchone()
        return None if row is None else int(row[0])

    def load(self, version: int) -> ThermalModel:
        """The model of ``version`` (unpickled: only our own database's blobs — see module doc)."""
        return _load(self._conn, version)

    def promoted(self) -> tuple[int, ThermalModel] | None:
        """``(version, model)`` of the promoted model, or None before the first promotion."""
        v = self.promoted_version()
        return None if v is None else (v, self.load(v))

    def versions(self) -> list[dict[str, Any]]:
        """Every version, oldest first, without the blob (``promoted``: the one in use)."""
        current = self.promoted_version()
        cols = (
            "id", "created_at", "created_by", "t0", "t1", "features", "metrics",
            "promoted_at", "promoted_by", "promoted_reason",
        )  # fmt: skip
        rows = self._conn.execute(
            f"SELECT {', '.join(chr(34) + c + chr(34) for c in cols)} "
            'FROM "model_versions" ORDER BY "id"'
        ).fetchall()
        out = []
        for r in rows:
            d = dict(zip(cols, r, strict=True))
            d["features"] = json.loads(d["features"])
            d["metrics"] = json.loads(d["metrics"])
            d["promoted"] = d["id"] == current
            out.append(d)
        return out

    def promoted_usable(self) -> tuple[int, ThermalModel]:
        """The promoted ``(version, model)`` for forecasting; a ``ThermogateError``
        telling what to run when there is none or it predates this version's features."""
        got = self.promoted()
        if got is None:
            raise ThermogateError(
                f"{self.path}: no promoted model; run `thermogate train --db {self.path}` first"
            )
        version, model = got
        if model.incompatible():
            raise ThermogateError(
                f"{self.path}: promoted model version {version} was trained on other features "
                f"than this version of thermogate builds ({', '.join(model.incompatible())}); "
                f"run `thermogate train --db {self.path}`"
            )
        return version, model

    def decisions(self) -> list[dict[str, Any]]:
        """Every promotion decision, oldest first."""
        cur = self._conn.execute('SELECT * FROM "model_decisions" ORDER BY "id"')
        names = [c[0] for c in cur.description]
        out = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        for d in out:
            d["promoted"] = bool(d["promoted"])
        return out

    def _mae_of(self, version: int, rows: Dataset) -> float:
        """``pooled_mae`` of a stored version; infinite for one that cannot be loaded
        (like a model that lost a kind: it never looks better than a candidate)."""
        try:
            model = self.load(version)
        except ModelLoadError:
            return math.inf
        return pooled_mae(model, rows)

    def maybe_promote(self, candidate_version: int, holdout_rows: Dataset, by: str) -> bool:
        """Promote the candidate unless it is worse than the promoted model on ``holdout_rows``.

        Both are scored by :func:`pooled_mae` at 15 minutes on the same rows;
        a tie keeps the current model. The decision is recorded either way;
        returns whether the candidate was promoted.
        """
        candidate = self.load(candidate_version)
        cand_mae = pooled_mae(candidate, holdout_rows)
        # score the promoted model before taking the write lock: predictions take
        # time, and the controller's historian writes to the same file meanwhile
        seen_v = self.promoted_version()
        seen_mae = None
        if seen_v is not None and seen_v != candidate_version:
            seen_mae = self._mae_of(seen_v, holdout_rows)
        with self._tx():
            current_v = self.promoted_version()
            cur_mae: float | None = None
            if current_v is None:
                promote, reason = True, "no model promoted yet"
            elif current_v == candidate_version:
                promote, reason = False, "candidate is already promoted"
            else:
                cur_mae = (
                    seen_mae
                    if current_v == seen_v and seen_mae is not None
                    else self._mae_of(current_v, holdout_rows)  # promoted meanwhile
                )
                promote = bool(cand_mae < cur_mae)
                rel = "<" if promote else ">="
                reason = (
                    f"{DECISION_HORIZON_MIN}-min pooled MAE {cand_mae:.4f} {rel} "
                    f"{cur_mae:.4f} °C of version {current_v}"
                )
            if promote:
                self._promote(candidate_version, by, reason)
            self._conn.execute(
                'INSERT INTO "model_decisions" ("at", "candidate", "current", "promoted", "by", '
                '"reason", "candidate_mae_c", "current_mae_c") VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
                (
                    time.time(),
                    candidate_version,
                    current_v,
                    int(promote),
                    by,
                    reason,
                    _finite_or_none(cand_mae),
                    _finite_or_none(cur_mae),
                ),
            )
        return promote


def _finite_or_none(x: float | None) -> float | None:
    return x if x is not None and np.isfinite(x) else None


class _Tx:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on an exception)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")
