"""Datasets for the learned thermal model, built from recorded telemetry only.

The model never sees the simulated plant: everything here comes from recorded
telemetry (values + quality per scan, as arrays: the controller reads them
from its historian) and from the site *description* (which points exist, which
tank sits on which loop, nameplate power, alarm limits — the configuration the
controller itself runs on).

Pipeline
========
1. **Resample to one step** (default 60 s). Raw scans are binned by
   ``floor(t / step)``; a point's value in a step is the mean of its samples
   whose quality is not BAD (GOOD and UNCERTAIN count — the core acts on both).
   A step is *invalid* for a point when fewer than half of the step's scans
   carry a usable sample of it, and for every point when the step holds fewer
   than half the usual number of scans (a gap in the recording). Invalid steps
   are NaN; nothing is interpolated. The rule lives in :mod:`.bins`, shared
   with the live forecaster and the historian's aggregates.
2. **Zones.** ``tank`` (every immersion tank: target = fluid temperature, the
   mean of ``fluid_temp`` and ``fluid_temp_b`` where both are usable, the usable
   one where only one is), ``loop`` (target = loop ``supply_temp``) and ``cdu``
   (target = CDU ``supply_temp``). Each kind has its own feature list
   (:data:`FEATURES`); zones of a kind share it, so one regressor per kind and
   horizon can learn from all of them. Powers also enter as a fraction of the
   zone's nameplate so that zones of different size are comparable.
3. **Rows.** One row per zone and step ``i``: features at ``i`` plus the
   5- and 15-step deltas of the zone temperature and power; targets
   ``T[i + h] - T[i]`` for every horizon ``h`` (the model predicts the
   change). A row is kept only when every point it uses is valid over its
   whole feature window ``[i - 15, i]`` and the target is valid over
   ``[i, i + max(h)]`` — a row touching a gap or a bad sample is dropped,
   never repaired.

With ``require_targets=False`` rows whose future is unknown (the last
``max(h)`` steps: the *live* rows a forecast is made from) are kept with NaN
targets.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from thermogate.plc.points import BAD
from thermogate.plc.pointtable import (
    CduPoints,
    DryCoolerPoints,
    LoopPoints,
    PlcPoints,
    PumpPoints,
    RowPoints,
    TankPoints,
)
from thermogate.plc.records import PLAN_HORIZONS_MIN, plan_column, setpoint_column
from thermogate.plc.site import Site

from .bins import bin_index, bin_means, bin_sums, usual_scans

__all__ = [
    "BAD",
    "DELTA_STEPS",
    "FEATURES",
    "Dataset",
    "KindData",
    "Resampled",
    "build_dataset",
    "resample",
    "zone_specs",
]

DELTA_STEPS = (5, 15)
WINDOW = max(DELTA_STEPS)
DAY_S = 86400.0

_LOAD = ("temp", "power_kw", "load_frac")
#: the dynamics every kind shares: time of day, recent changes, plan and setpoint
_DYNAMICS = (
    "tod_sin",
    "tod_cos",
    "d_temp_5",
    "d_temp_15",
    "d_power_5",
    "d_power_15",
    "temp_minus_mean_15",
    "plan_d5",
    "plan_d15",
    "plan_d30",
    "sp_gap",
)
#: feature names per zone kind ("temp" = the zone's own temperature, "power_kw" its heat load)
FEATURES: dict[str, tuple[str, ...]] = {
    "tank": (
        *_LOAD,
        *("valve_pos", "supply_temp", "temp_minus_supply", "loop_flow", "fan_speed", "ambient"),
        *_DYNAMICS,
        "supply_sp_gap",
    ),
    "loop": (
        *_LOAD,
        *("return_temp", "loop_flow", "fan_speed", "pump_speed", "ambient", "temp_minus_ambient"),
        *_DYNAMICS,
        "sp_d5",
        "valve_max",
    ),
    "cdu": (
        *_LOAD,
        *("valve_pos", "supply_temp", "temp_minus_supply", "return_temp", "loop_flow"),
        *("fan_speed", "ambient"),
        *_DYNAMICS,
        "supply_sp_gap",
    ),
}
#: features that move with the zone's power (shifted together by ``KindData.with_power``)
POWER_FEATURES = ("power_kw", "load_frac")


@dataclass(frozen=True)
class ZoneSpec:
    """Which points make up one zone's features (from the site description)."""

    kind: str
    name: str
    temp: tuple[str, ...]  # averaged where both usable
    power: tuple[str, ...]  # summed (all must be usable)
    rated_kw: float
    alarm_c: float
    loop: str
    extra: dict[str, tuple[str, ...]] = field(default_factory=dict)  # feature -> points (mean)
    loads: tuple[str, ...] = ()  # tanks / rack rows whose planned load is the zone's plan

    def plan_points(self, h: int) -> tuple[str, ...]:
        return tuple(plan_column(ld, h) for ld in self.loads)

    @property
    def setpoint_points(self) -> tuple[str, str]:
        """The working setpoints of the zone's own temperature and of its loop's supply."""
        loop_supply = LoopPoints.point_name(self.loop, "supply_temp")
        return (setpoint_column(self.temp[0]), setpoint_column(loop_supply))


#: the last site's zones: a live forecaster asks for them every minute of a run
#: (dataset and headroom), and a site is frozen, so the same object has the same zones
_last_specs: tuple[Site, tuple[ZoneSpec, ...]] | None = None


def zone_specs(site: Site) -> list[ZoneSpec]:
    """The zones of a site: every tank, loop and CDU, with their feature points."""
    global _last_specs
    last = _last_specs
    if last is not None and last[0] is site:
        return list(last[1])
    specs = _zone_specs(site)
    _last_specs = (site, tuple(specs))
    return specs


def _zone_specs(site: Site) -> list[ZoneSpec]:
    specs: list[ZoneSpec] = []
    loops = {lp.name: lp for lp in site.loops}
    # point names from the point table (a misspelled attribute raises here)
    tank, loop, cdu = TankPoints.point_name, LoopPoints.point_name, CduPoints.point_name
    cooler, pump, row = DryCoolerPoints.point_name, PumpPoints.point_name, RowPoints.point_name

    def loop_points(lp_name: str) -> dict[str, tuple[str, ...]]:
        lp = loops[lp_name]
        return {
            "supply_temp": (loop(lp.name, "supply_temp"),),
            "return_temp": (loop(lp.name, "return_temp"),),
            "loop_flow": (loop(lp.name, "flow"),),
            "fan_speed": tuple(cooler(d.name, "fan_speed") for d in lp.dry_coolers),
            "pump_speed": tuple(pump(p.name, "speed") for p in lp.pumps),
            "ambient": (PlcPoints.point_name("plc", "ambient_temp"),),
        }

    for t in site.tanks:
        lpp = loop_points(t.loop)
        specs.append(
            ZoneSpec(
                "tank",
                t.name,
                (
                    tank(t.name, "fluid_temp"),
                    tank(t.name, "fluid_temp_b"),
                ),
                (tank(t.name, "power_kw"),),
                float(t.units * t.unit_power_kw),
                float(t.limits.fluid_alarm_c),
                t.loop,
                {
                    "valve_pos": (tank(t.name, "valve_pos"),),
                    **{k: lpp[k] for k in ("supply_temp", "loop_flow", "fan_speed", "ambient")},
                },
                (t.name,),
            )
        )
    rows_of_cdu: dict[str, list[Any]] = {}
    for r in site.rack_rows:
        rows_of_cdu.setdefault(r.cdu, []).append(r)
    for c in site.cdus:
        rows = rows_of_cdu.get(c.name, [])
        lpp = loop_points(c.loop)
        specs.append(
            ZoneSpec(
                "cdu",
                c.name,
                (cdu(c.name, "supply_temp"),),
                tuple(row(r.name, "power_kw") for r in rows),
                float(sum(r.nodes * r.node_power_kw for r in rows)) or 1.0,
                float(c.supply_alarm_c),
                c.loop,
                {
                    "valve_pos": (cdu(c.name, "valve_pos"),),
                    "return_temp": (cdu(c.name, "return_temp"),),
                    **{k: lpp[k] for k in ("supply_temp", "loop_flow", "fan_speed", "ambient")},
                },
                tuple(r.name for r in rows),
            )
        )
    for lp in site.loops:
        tanks = [t for t in site.tanks if t.loop == lp.name]
        cdu_names = {c.name for c in site.cdus if c.loop == lp.name}
        rows = [r for r in site.rack_rows if r.cdu in cdu_names]
        lpp = loop_points(lp.name)
        specs.append(
            ZoneSpec(
                "loop",
                lp.name,
                lpp["supply_temp"],
                tuple(tank(t.name, "power_kw") for t in tanks)
                + tuple(row(r.name, "power_kw") for r in rows),
                float(
                    sum(t.units * t.unit_power_kw for t in tanks)
                    + sum(r.nodes * r.node_power_kw for r in rows)
                )
                or 1.0,
                float(lp.supply_alarm_c),
                lp.name,
                {
                    **{
                        k: lpp[k]
                        for k in ("return_temp", "loop_flow", "fan_speed", "pump_speed", "ambient")
                    },
                    # the most open valve on the loop drives trim & respond of its supply
                    "valve_max": tuple(tank(t.name, "valve_pos") for t in tanks)
                    + tuple(cdu(c, "valve_pos") for c in sorted(cdu_names)),
                },
                tuple(t.name for t in tanks) + tuple(r.name for r in rows),
            )
        )
    return specs


#: samples ``resample`` works on in one pass (~16 MB of float64 a copy)
RESAMPLE_CHUNK_VALUES = 2_000_000


# ----------------------------------------------------------------------------
@dataclass
class Resampled:
    """Telemetry on a regular grid: ``t`` step starts, per point a value (NaN = invalid)."""

    t: np.ndarray
    values: dict[str, np.ndarray]
    step_s: float


def resample(
    t: np.ndarray,
    values: Mapping[str, np.ndarray],
    quality: Mapping[str, np.ndarray] | None = None,
    *,
    step_s: float = 60.0,
) -> Resampled:
    """Means per step of the usable samples (see the module docstring, step 1)."""
    t = np.asarray(t, dtype=np.float64)
    names = list(values)
    if len(t) == 0:
        return Resampled(np.zeros(0), {n: np.zeros(0) for n in names}, step_s)
    k = bin_index(t, step_s)
    k0 = int(k.min())
    b = k - k0
    nb = int(b.max()) + 1
    rows = np.bincount(b, minlength=nb).astype(np.float64)
    usual = usual_scans(rows)
    out: dict[str, np.ndarray] = {}
    # Many series a pass (one per row), not one: a live minute of a 10,000-point
    # site is ~3,000 series of 30 samples, where a pass each cost more than the
    # sums. One bincount over (series, bin) cells adds each cell's samples in
    # their order, exactly as a bincount per series does, so the means are the
    # same to the bit; chunks bound the memory of a long history.
    per = max(1, RESAMPLE_CHUNK_VALUES // max(len(t), nb))  # samples and cells bounded
    for c0 in range(0, len(names), per):
        chunk = names[c0 : c0 + per]
        m = len(chunk)
        v = np.empty((m, len(t)))
        for j, n in enumerate(chunk):
            v[j] = np.asarray(values[n], dtype=np.float64)
        ok = np.isfinite(v)
        for j, n in enumerate(chunk):
            if quality is not None and n in quality:
                ok[j] &= np.asarray(quality[n]) != BAD
        cell = (np.arange(m)[:, None] * nb + b).ravel()
        s, cnt = bin_sums(cell, v.ravel(), ok.ravel(), m * nb)
        means = bin_means(s.reshape(m, nb), cnt.reshape(m, nb), rows, usual)
        for j, n in enumerate(chunk):
            out[n] = means[j]
    return Resampled((k0 + np.arange(nb)) * step_s, out, step_s)


# ----------------------------------------------------------------------------
@dataclass
class KindData:
    """The rows of one zone kind: features, targets (change at each horizon), bookkeeping."""

    kind: str
    feature_names: tuple[str, ...]
    horizons_min: tuple[int, ...]
    X: np.ndarray  # (n, f)
    y: np.ndarray  # (n, len(horizons)): T[i+h] - T[i]; NaN where unknown
    times: np.ndarray  # (n,) time of the row's step (seconds)
    zones: np.ndarray  # (n,) zone name per row
    rated_kw: np.ndarray  # (n,) nameplate of the row's zone
    alarm_c: np.ndarray  # (n,) alarm limit of the row's zone

    def __len__(self) -> int:
        return len(self.times)

    def col(self, name: str) -> int:
        return self.feature_names.index(name)

    def feature(self, name: str) -> np.ndarray:
        return self.X[:, self.col(name)]

    @property
    def temp(self) -> np.ndarray:
        return self.feature("temp")

    def take(self, mask: np.ndarray) -> KindData:
        """The rows selected by a boolean mask or index array."""
        return replace(
            self,
            X=self.X[mask],
            y=self.y[mask],
            times=self.times[mask],
            zones=self.zones[mask],
            rated_kw=self.rated_kw[mask],
            alarm_c=self.alarm_c[mask],
        )

    def with_power(self, extra_kw: np.ndarray | float) -> np.ndarray:
        """A copy of ``X`` with ``extra_kw`` added to every row's heat load now."""
        X = self.X.copy()
        extra = np.broadcast_to(np.asarray(extra_kw, dtype=np.float64), (len(self),))
        X[:, self.col("power_kw")] += extra
        X[:, self.col("load_frac")] += extra / self.rated_kw
        return X


@dataclass
class Dataset:
    """Rows of every zone kind present on the site (``kinds``: kind -> :class:`KindData`)."""

    horizons_min: tuple[int, ...]
    step_s: float
    kinds: dict[str, KindData]

    def __getitem__(self, kind: str) -> KindData:
        return self.kinds[kind]

    def __iter__(self) -> Iterator[KindData]:
        return iter(self.kinds.values())

    def __len__(self) -> int:
        return sum(len(k) for k in self.kinds.values())

    def zones(self) -> list[str]:
        return [z for k in self.kinds.values() for z in dict.fromkeys(k.zones.tolist())]

    def split(self, t_split: float) -> tuple[Dataset, Dataset]:
        """Rows before ``t_split`` (targets included: ``times + max(h)`` < t_split) and after.

        The first part never sees a temperature at or after ``t_split``.
        """
        hmax = max(self.horizons_min) * 60.0
        a = {k: d.take(d.times + hmax < t_split) for k, d in self.kinds.items()}
        b = {k: d.take(d.times >= t_split) for k, d in self.kinds.items()}
        return replace(self, kinds=a), replace(self, kinds=b)

    def between(self, t0: float, t1: float) -> Dataset:
        return replace(
            self, kinds={k: d.take((d.times >= t0) & (d.times < t1)) for k, d in self.kinds.items()}
        )


def _rolling_all(ok: np.ndarray, back: int, ahead: int) -> np.ndarray:
    """``out[i]`` = ``ok[i - back : i + ahead + 1]`` all true (False where it leaves the array)."""
    n = len(ok)
    bad = np.concatenate([[0], np.cumsum(~ok)])
    i = np.arange(n)
    lo = i - back
    hi = i + ahead + 1
    inside = (lo >= 0) & (hi <= n)
    cnt = bad[np.clip(hi, 0, n)] - bad[np.clip(lo, 0, n)]
    return inside & (cnt == 0)


def _rolling_mean(x: np.ndarray, k: int) -> np.ndarray:
    """Mean of ``x[i - k + 1 : i + 1]`` (NaN for the first k - 1 and wherever x is)."""
    out = np.full(len(x), np.nan)
    if len(x) >= k:
        # NaN set to 0 in the running sums and counted apart: a NaN must spoil only
        # the windows that hold it, not every later one (as a plain cumsum would)
        bad = ~np.isfinite(x)
        c = np.concatenate([[0.0], np.cumsum(np.where(bad, 0.0, x))])
        nb = np.concatenate([[0], np.cumsum(bad)])
        out[k - 1 :] = np.where(nb[k:] - nb[:-k] > 0, np.nan, (c[k:] - c[:-k]) / k)
    return out


def _lag_delta(x: np.ndarray, k: int) -> np.ndarray:
    d = np.full(len(x), np.nan)
    d[k:] = x[k:] - x[:-k]
    return d


def _zone_series(
    spec: ZoneSpec, rs: Resampled
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Zone temperature, power and the mean of every extra point group (NaN = invalid)."""
    v = rs.values
    temps = np.vstack([v[n] for n in spec.temp])
    usable = np.isfinite(temps)
    cnt = usable.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        temp = np.where(cnt > 0, np.where(usable, temps, 0.0).sum(axis=0) / cnt, np.nan)
    if spec.power:
        power = np.sum(np.vstack([v[n] for n in spec.power]), axis=0)  # NaN if any invalid
    else:
        power = np.zeros(len(rs.t))
    extra = {}
    for k, pts in spec.extra.items():
        reduce = np.max if k.endswith("_max") else np.mean
        extra[k] = reduce(np.vstack([v[n] for n in pts]), axis=0)  # NaN if any invalid
    for h in PLAN_HORIZONS_MIN:
        pts = spec.plan_points(h)
        if pts and all(n in v for n in pts):
            planned = np.sum(np.vstack([v[n] for n in pts]), axis=0)
        else:  # no plan recorded: the plan is the load now (no change foreseen)
            planned = power
        extra[f"plan_d{h}"] = (planned - power) / spec.rated_kw
    # working setpoints (trim & respond moves the loops'): where regulation is heading.
    # Not recorded (an older history): the temperature is taken as at its setpoint.
    own, supply = spec.setpoint_points
    sp = v.get(own, temp)
    extra["sp_gap"] = sp - temp
    extra["sp_d5"] = _lag_delta(sp, 5) if own in v else np.zeros(len(temp))
    if "supply_temp" in extra:
        extra["supply_sp_gap"] = v.get(supply, extra["supply_temp"]) - extra["supply_temp"]
    return temp, power, extra


def _kind_rows(
    kind: str,
    specs: Sequence[ZoneSpec],
    rs: Resampled,
    horizons: tuple[int, ...],
    require_targets: bool,
) -> KindData:
    names = FEATURES[kind]
    hmax = max(horizons)
    n = len(rs.t)
    tod = 2 * np.pi * (rs.t % DAY_S) / DAY_S
    Xs, ys, ts, zs, rated, alarm = [], [], [], [], [], []
    for spec in specs:
        temp, power, extra = _zone_series(spec, rs)
        cols = {
            "temp": temp,
            "power_kw": power,
            "load_frac": power / spec.rated_kw,
            "tod_sin": np.sin(tod),
            "tod_cos": np.cos(tod),
            "d_temp_5": _lag_delta(temp, 5),
            "d_temp_15": _lag_delta(temp, 15),
            "d_power_5": _lag_delta(power, 5),
            "d_power_15": _lag_delta(power, 15),
            "temp_minus_mean_15": temp - _rolling_mean(temp, WINDOW + 1),
            **extra,
        }
        if "supply_temp" in extra:
            cols["temp_minus_supply"] = temp - extra["supply_temp"]
        if "ambient" in extra:
            cols["temp_minus_ambient"] = temp - extra["ambient"]
        X = np.column_stack([cols[f] for f in names]) if n else np.zeros((0, len(names)))
        # every input valid over the whole window [i - WINDOW, i]
        inputs_ok = np.isfinite(temp) & np.isfinite(power)
        for e in extra.values():
            inputs_ok &= np.isfinite(e)
        keep = _rolling_all(inputs_ok, WINDOW, 0) & np.isfinite(X).all(axis=1)
        y = np.full((n, len(horizons)), np.nan)
        for j, h in enumerate(horizons):
            y[: n - h, j] = temp[h:] - temp[: n - h] if h < n else np.nan
        target_ok = _rolling_all(np.isfinite(temp), 0, hmax)
        if require_targets:
            keep &= target_ok
        else:
            y[~target_ok] = np.nan
        idx = np.flatnonzero(keep)
        Xs.append(X[idx])
        ys.append(y[idx])
        ts.append(rs.t[idx])
        zs.append(np.full(len(idx), spec.name, dtype=object))
        rated.append(np.full(len(idx), spec.rated_kw))
        alarm.append(np.full(len(idx), spec.alarm_c))
    if not Xs:
        return KindData(
            kind, names, horizons, np.zeros((0, len(names))), np.zeros((0, len(horizons))),
            np.zeros(0), np.zeros(0, dtype=object), np.zeros(0), np.zeros(0),
        )  # fmt: skip
    return KindData(
        kind,
        names,
        horizons,
        np.concatenate(Xs),
        np.concatenate(ys),
        np.concatenate(ts),
        np.concatenate(zs),
        np.concatenate(rated),
        np.concatenate(alarm),
    )


def input_columns(specs: Sequence[ZoneSpec], have: Collection[str]) -> list[str]:
    """The recorded series the zones' rows are built from: every point they name,
    then the planned load (all of it, or none: see ``_zone_series``) and the
    working setpoints, as far as ``have`` (the recorded columns) holds them."""
    names = sorted(
        {p for s in specs for p in (*s.temp, *s.power, *(q for g in s.extra.values() for q in g))}
    )
    plan = sorted({p for s in specs for h in PLAN_HORIZONS_MIN for p in s.plan_points(h)})
    if all(p in have for p in plan):
        names += plan
    return names + sorted({p for s in specs for p in s.setpoint_points if p in have})


def build_dataset(
    arrays: Mapping[str, Any],
    site: Site,
    *,
    horizons_min: Sequence[int] = (5, 15, 30),
    step_s: float = 60.0,
    t0: float | None = None,
    t1: float | None = None,
    require_targets: bool = True,
    kinds: Sequence[str] = ("tank", "loop", "cdu"),
) -> Dataset:
    """Rows of features and future temperature changes for every zone of ``site``.

    ``arrays`` is ``{"t": times, point: values, ..., "quality": {point: codes}}``
    (the quality mapping optional: then only NaN is invalid), e.g. the raw scans
    of the points :func:`input_columns` names. Only scans in ``[t0, t1]`` are
    used. Horizons are in minutes of data time and must be whole multiples of
    ``step_s``.
    """
    horizons_s = [float(h) * 60.0 for h in horizons_min]
    if any(h <= 0 or abs(h / step_s - round(h / step_s)) > 1e-9 for h in horizons_s):
        raise ValueError("horizons must be positive multiples of step_s")
    steps = tuple(round(h / step_s) for h in horizons_s)
    specs = [s for s in zone_specs(site) if s.kind in kinds]
    names = input_columns(specs, set(arrays))
    missing = [n for n in names if n not in arrays]
    if missing:
        raise KeyError(f"arrays lack points {missing[:5]}{'...' if len(missing) > 5 else ''}")
    t = np.asarray(arrays["t"], dtype=np.float64)
    qual_in = arrays.get("quality")
    if t0 is None and t1 is None:  # every scan: no copy of what may be days of them
        vals = {n: np.asarray(arrays[n], dtype=np.float64) for n in names}
        qual = {n: np.asarray(qual_in[n]) for n in names if n in qual_in} if qual_in else None
    else:
        sel = np.ones(len(t), bool)
        if t0 is not None:
            sel &= t >= t0
        if t1 is not None:
            sel &= t <= t1
        vals = {n: np.asarray(arrays[n], dtype=np.float64)[sel] for n in names}
        qual = {n: np.asarray(qual_in[n])[sel] for n in names if n in qual_in} if qual_in else None
        t = t[sel]
    rs = resample(t, vals, qual, step_s=step_s)
    out = {}
    for kind in kinds:
        ks = [s for s in specs if s.kind == kind]
        if ks:
            kd = _kind_rows(kind, ks, rs, steps, require_targets)
            # horizons reported in minutes as asked, whatever the step
            out[kind] = replace(kd, horizons_min=tuple(int(h) for h in horizons_min))
    return Dataset(tuple(int(h) for h in horizons_min), float(step_s), out)
