"""``thermogate train`` and ``thermogate forecast``: the model lifecycle from the command line.

``train`` reads the last ``--days`` of telemetry from the historian, fits a
:class:`~thermogate.models.forecast.ThermalModel` on the first 80 % of it,
measures it (and the persistence/RC baselines) on the last 20 %, stores it in
the :class:`~thermogate.models.registry.Registry` of the same database and
promotes it only if it is not worse than the promoted model on that held-out
tail (:func:`~thermogate.controller.retrain.train_and_register`, which the
controller's scheduled retraining shares). ``forecast`` loads the promoted
model and forecasts every tank, loop and CDU from the latest telemetry; with
no usable promoted model (a new site) the physics prior from the site
description forecasts instead (:mod:`thermogate.models.prior`), its margin
measured by replaying the last hours, and the answer names its source.
"""

from __future__ import annotations

import getpass
import json
import sys
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from thermogate.plc.errors import ThermogateError

from .historian import HistoryReader
from .retrain import MIN_HOURS, history_dataset, train_and_register

__all__ = ["forecast_cli", "train_cli"]

LIVE_LOOKBACK_S = 3600.0  # telemetry read to build the live rows of a forecast
#: without a learned model: the physics prior replays this much to measure its margin
PRIOR_LOOKBACK_S = 3 * 3600.0
DEFAULT_DB = "thermogate.db"


def _step(msg: str) -> None:
    """A progress line on stderr, only on a terminal (logs and pipes stay clean)."""
    if sys.stderr.isatty():
        print(f"[train] {msg}", file=sys.stderr, flush=True)


def _db(args: Any) -> Path:
    """The database path; an absent database is the user's mistake."""
    db = Path(getattr(args, "db", None) or DEFAULT_DB)
    if not db.exists():
        raise ThermogateError(f"{db}: no such historian database")
    return db


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name (containers)
        return "unknown"


def _round(x: float) -> float | None:
    return round(float(x), 4) if np.isfinite(x) else None


def train_cli(args: Any) -> int:
    from thermogate.plc.site import load_site

    days = float(getattr(args, "days", None) or 7)
    db = _db(args)
    site = load_site(getattr(args, "site", None))
    out = train_and_register(
        db, site, days=days, by=f"thermogate train ({_user()})", progress=_step
    )
    t_start, t_split = out.window
    kinds = out.metrics["kinds"]
    summary = {
        "version": out.version,
        "promoted": out.promoted,
        "decision": out.reason,
        "window_h": round((t_split - t_start) / 3600.0, 2),
        "mae_c": {k: {h: _round(v) for h, v in m["mae_c"].items()} for k, m in kinds.items()},
        "persistence_mae_c": {
            k: {h: _round(v) for h, v in m["persistence_mae_c"].items()} for k, m in kinds.items()
        },
        "coverage": {k: {h: _round(v) for h, v in m["coverage"].items()} for k, m in kinds.items()},
        "train_s": round(out.train_s, 2),
    }
    print(json.dumps(summary, indent=1))
    return 0


def _headroom_entry(h: Any, conservative: bool) -> dict[str, Any]:
    """JSON form of a :class:`~thermogate.models.headroom.Headroom`; a time to limit
    beyond the last horizon (``inf``) is ``null``."""
    return {
        "extra_kw": _round(h.extra_kw),
        "time_to_limit_min": _round(h.time_to_limit_min),
        "limit_c": _round(h.limit_c),
        "bound_c": _round(h.bound_c),
        "conservative": conservative,
    }


def forecast_cli(args: Any) -> int:
    from thermogate.models.headroom import headroom
    from thermogate.models.prior import PRIOR_SOURCE, PhysicsPrior
    from thermogate.models.registry import ModelLoadError, Registry
    from thermogate.models.trust import Trust
    from thermogate.plc.site import load_site

    db = _db(args)
    why_prior = f"no promoted model yet (`thermogate train --db {db}` once it holds "
    why_prior += f"{MIN_HOURS:g} h of telemetry)"
    with Registry(db) as reg:
        try:
            got = reg.promoted()
        except ModelLoadError as exc:
            got = None
            why_prior = f"promoted {exc} (`thermogate train --db {db}` replaces it)"
        info = {v["id"]: v for v in reg.versions()}
    if got is not None and got[1].incompatible():
        why_prior = (
            f"promoted model version {got[0]} was trained on other features than this "
            f"version builds (`thermogate train --db {db}` replaces it)"
        )
        got = None
    site = load_site(getattr(args, "site", None))
    # read-only: a controller may be writing this file
    with HistoryReader(db, site.name) as reader, reader.snapshot():
        span = reader.span()
        if span is None:
            raise ThermogateError(f"{db}: no telemetry to forecast from")
        t_end = span[1]
        # the prior replays its last hours to measure its margin on this site
        lookback = LIVE_LOOKBACK_S if got is not None else PRIOR_LOOKBACK_S
        ds = history_dataset(
            reader, site, t0=max(span[0], t_end - lookback), t1=t_end, require_targets=False
        )
    if got is None:  # no learned model: the physics prior, from the site description
        prior = PhysicsPrior(site)
        prior.replay(ds)
        out = _forecast_entries(ds, prior.predict, lambda kd: np.zeros(len(kd), bool), t_end)
        hrs = prior.headroom(ds)
        version, source, trusted, reasons = None, PRIOR_SOURCE, False, [why_prior]
    else:
        version, model = got
        # headroom from the latest row of every zone; when the model is not trusted
        # (OOD, stale, ...) the conservative fallback is used and the reasons recorded
        trust = Trust(model)
        trained_t = float(info[version]["t1"]) if version in info else t_end  # data time
        verdict = trust.check(ds, now_t=t_end, last_trained_t=trained_t)
        hrs = headroom(model, ds, site) if verdict.ok else trust.conservative_headroom(ds, site)
        known = [kd for kd in ds if kd.kind in model.kinds]
        out = _forecast_entries(known, model.predict, model.ood, t_end)
        source, trusted, reasons = f"model version {version}", verdict.ok, list(verdict.reasons)
    zones: list[dict[str, Any]] = []
    for entry in out:
        hr = hrs.get(entry["zone"])
        entry["headroom"] = None if hr is None else _headroom_entry(hr, not trusted)
        zones.append(entry)
    result = {
        "version": version,
        "source": source,
        "db": str(db),
        "t": t_end,
        "generated_at": time.time(),
        "trusted": trusted,
        "reasons": reasons,
        "zones": zones,
    }
    if getattr(args, "json", False):
        print(json.dumps(result))
        return 0
    at = _when(t_end)
    if version is None:
        print(f"{source}, from data up to {at}: {why_prior}")
    else:
        print(f"model version {version}, from data up to {at}")
        if not trusted:
            print("MODEL NOT TRUSTED: headroom is the conservative fallback because")
            for reason in reasons:
                print(f"  - {reason}")
    hs = [str(h) for h in ds.horizons_min]
    head = "  ".join(f"{h + ' min':>15}" for h in hs)
    print(f"{'zone':<20} {'now °C':>7}  {head}   (mean / upper °C)")
    for z in zones:
        cells = "  ".join(f"{_fmt(z['mean_c'][h]):>7}/{_fmt(z['upper_c'][h]):<7}" for h in hs)
        flag = "  OUT OF RANGE" if z["ood"] else ""
        room = _fmt_headroom(z["headroom"])
        print(f"{z['zone']:<20} {_fmt(z['temp_c']):>7}  {cells}{room}{flag}")
    return 0


def _forecast_entries(
    kinds: Iterable[Any],
    predict: Callable[[Any], tuple[np.ndarray, np.ndarray]],
    ood: Callable[[Any], np.ndarray],
    t_end: float,
) -> list[dict[str, Any]]:
    """One JSON entry per zone: its latest row's forecast (``predict`` gives
    mean and upper, ``ood`` flags rows out of the model's range)."""
    out: list[dict[str, Any]] = []
    for kd in kinds:
        if len(kd) == 0:
            continue
        for zone in dict.fromkeys(kd.zones.tolist()):
            idx = np.flatnonzero(kd.zones == zone)
            rows = kd.take(idx[[int(np.argmax(kd.times[idx]))]])
            mean, upper = predict(rows)
            out.append(
                {
                    "kind": kd.kind,
                    "zone": zone,
                    "age_s": round(t_end - float(rows.times[0]), 1),
                    "temp_c": _round(rows.temp[0]),
                    "alarm_c": float(rows.alarm_c[0]),
                    "mean_c": {str(h): _round(mean[0, j]) for j, h in enumerate(kd.horizons_min)},
                    "upper_c": {str(h): _round(upper[0, j]) for j, h in enumerate(kd.horizons_min)},
                    "ood": bool(ood(rows)[0]),
                }
            )
    return out


def _fmt_headroom(h: dict[str, Any] | None) -> str:
    if h is None:
        return "  headroom -"
    ttl = h["time_to_limit_min"]
    when = "> 30 min" if ttl is None else f"{ttl:.1f} min"
    tag = " (conservative)" if h["conservative"] else ""
    return f"  headroom +{_fmt(h['extra_kw'])} kW, limit {_fmt(h['limit_c'])} °C in {when}{tag}"


def _when(t: float) -> str:
    """A data time for people (it printed as raw epoch seconds)."""
    try:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return f"t = {t:.0f} s"


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"
