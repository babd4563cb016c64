"""What ``thermogate run`` prints every 10 s: the scan, the loops, Modbus, the
model, gating, the grid and the books, one line each.

A value that is not known (a lost meter, no forecast yet) is printed as
``n/a``, never as ``nan``.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from typing import TYPE_CHECKING

from .gating.economics import EconomicsIntervals
from .gating.planner import GatingPlanner

if TYPE_CHECKING:
    from .run import RealTimeController


def shown(x: object, fmt: str = ".0f", unit: str = "") -> str:
    """A value for a person: formatted with its unit, or ``n/a`` when it is not a
    finite number (a lost meter is not known, and NaN is not a reading)."""
    if isinstance(x, int | float) and math.isfinite(x):
        return f"{x:{fmt}}{unit}"
    return "n/a"


def _mean(xs: list[float]) -> float:
    """The mean of the finite values, NaN when there are none (no numpy warning)."""
    ok = [x for x in xs if math.isfinite(x)]
    return sum(ok) / len(ok) if ok else math.nan


def _listed(x: object) -> list[str]:
    """A list the status holds (alarm names, zones), or none when it holds none."""
    return [str(a) for a in x] if isinstance(x, list | tuple) else []


def status_line(rt: RealTimeController) -> None:
    """The run's status, printed: the scan and its timing, each loop, lost Modbus
    endpoints, the model, gating, the grid, the books and the active alarms."""
    st = rt.last
    ms = sorted(itertools.islice(rt.scan_ms, max(0, len(rt.scan_ms) - 600), None))
    p50 = ms[len(ms) // 2] if ms else float("nan")
    p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))] if ms else float("nan")
    v = rt.ctrl.values  # the last validated values
    ix = rt.pmap.index
    temps = [float(v[tp.fluid_temp]) for tp in ix.tanks]
    hottest = max((x for x in temps if x == x), default=float("nan"))
    site_kw = float(v[ix.site.power_kw])
    alarms = _listed(st.get("alarms"))
    print(
        f"scan {rt.scans}: site {shown(site_kw, '.0f', ' kW')}, "
        f"hottest tank {shown(hottest, '.1f', ' degC')}, "
        f"{len(alarms)} alarms, fail-safe zones {len(_listed(st.get('failsafe_zones')))}, "
        f"scan p50 {shown(p50, '.1f', ' ms')} p99 {shown(p99, '.1f', ' ms')}, "
        f"overruns {rt.overruns}",
        flush=True,
    )
    sp = st.get("setpoints")
    sp = sp if isinstance(sp, dict) else {}
    for lp in rt.cfg.site.loops:
        sup = float(v[ix.loop[lp.name].supply_temp])
        fans = [float(v[ix.dry_cooler[d.name].fan_speed]) for d in lp.dry_coolers]
        pumps = [float(v[ix.pump[p.name].speed]) for p in lp.pumps]
        known = any(math.isfinite(x) for x in pumps)
        print(
            f"  {lp.name}: supply {shown(sup, '.1f', ' degC')} "
            f"(setpoint {shown(sp.get(lp.name), '.1f')}), fans {shown(_mean(fans), '.0f', ' %')}, "
            f"pumps {'/'.join(shown(x) for x in pumps) + ' %' if known else 'n/a'}",
            flush=True,
        )
    lost = rt.io.lost()
    if lost:
        print(
            "  Modbus: not answering: "
            + "; ".join(f"{where} ({units})" for where, units in lost.items()),
            flush=True,
        )
    if rt.model is not None:
        fc, upd = rt.model.forecaster, rt.model.last
        loops = {lp.name for lp in rt.cfg.site.loops}
        hr = ", ".join(
            f"{z} {shown(h.extra_kw, '+.0f', ' kW')}"
            for z, h in (upd.zones if upd else {}).items()
            if z in loops
        )
        if fc.model is None:
            what = f"physics prior forecasting; loop headroom {hr}" if hr else "no forecast yet"
            print(f"  model: none promoted yet (retrains on schedule); {what}", flush=True)
        elif upd is not None and upd.zones:
            trust = "trusted" if upd.trusted else f"NOT TRUSTED ({upd.source})"
            print(f"  model {fc.version}: {trust}; loop headroom {hr}", flush=True)
    if "plc.safe_state" in alarms:  # what the plan below wants is not what runs
        print(
            "  PLC: in its watchdog SAFE STATE (cooling full, mining off, GPUs capped) until"
            " its heartbeat is back",
            flush=True,
        )
    if rt.gating is not None:
        print("  " + gating_line(rt.gating), flush=True)
    print("  " + grid_line(rt), flush=True)
    print("  " + economics_line(rt.books), flush=True)
    if alarms:
        print(
            "  active alarms: " + ", ".join(alarms[:8]) + (" ..." if len(alarms) > 8 else ""),
            flush=True,
        )


def grid_line(rt: RealTimeController) -> str:
    """The grid's side: the import limit in force and why, the relay, settlement."""
    st = rt.last
    limit = st.get("import_limit_kw")
    parts = [f"grid: import limit {shown(limit, '.0f', ' kW')}" if limit is not None else "grid:"]
    curt = st.get("curtailments") or []
    if isinstance(curt, list) and curt:
        parts.append(
            ", ".join(
                f"curtailment #{c['id']} <= {shown(c['limit_kw'], '.0f', ' kW')}" for c in curt
            )
        )
    peak = st.get("peak_limit_kw")
    if isinstance(peak, float):
        parts.append(f"peak window <= {shown(peak, '.0f', ' kW')}")
    uf = st.get("under_frequency")
    uf = uf if isinstance(uf, dict) else {}
    armed = uf.get("armed")  # as the PLC's coil reads, not as the site file says
    if uf.get("tripped"):
        ready = "release ready" if uf.get("release_ready") else "waiting for recovery"
        parts.append(f"UNDER-FREQUENCY TRIP ({ready})")
    elif armed:
        parts.append("under-frequency relay armed")
    elif armed is False and rt.cfg.site.grid.under_frequency_armed:
        parts.append("under-frequency relay DISARMED (the site description arms it)")
    s = rt.settlement.summary()
    if s["intervals"]:
        parts.append(f"settled {s['compliant']}/{s['intervals']} intervals compliant")
    return "; ".join(parts)


def gating_line(g: GatingPlanner) -> str:
    """What the gating planner holds back and why, in one line.

    Its breakeven is the miners' at their best efficiency (underclocked), the
    price above which no mining pays; the books' is what mining earned per MWh
    as metered, at the clocks it ran: two prices, each named for what it is."""
    why = Counter(g.why().values())
    held = ", ".join(f"{n} x{k}" for n, k in sorted(why.items())) or "nothing held back"
    mining = (
        "on"
        if all(g.mining_on.values())
        else "off"
        if not any(g.mining_on.values())
        else "partly on"
    )
    return (
        f"gating: IT room {shown(g.room_kw, '.0f', ' kW')}, mining {mining} (breakeven "
        f"{shown(min(g.breakeven.values(), default=math.nan), '.0f', ' $/MWh')} "
        "at best efficiency), "
        f"GPUs allowed {g.gpu_capacity}; budgets bound by: {held}"
    )


def economics_line(books: EconomicsIntervals) -> str:
    """The books in one line: margin so far, $/h now by part, price against breakeven."""
    tot, now = books.total, books.rates
    if now is None:
        return f"economics: margin ${shown(tot.net_margin, '+,.2f')} so far (no meters read yet)"
    be = now.mining_breakeven(books.rated_breakeven)
    basis = "as metered" if now.mining_mwh > 1e-12 else "rated"  # as mining_breakeven chose
    price = books.price_now
    verdict = (
        "mining pays"
        if price < be
        else "mining loses money"
        if price >= be
        else "not known"  # a NaN on either side
    )
    return (
        f"economics: margin ${shown(tot.net_margin, '+,.2f')} so far, "
        f"${shown(now.net_margin, '+,.0f')}/h now "
        f"(mining {shown(now.mining_revenue, ',.0f')}, AI {shown(now.ai_revenue, ',.0f')}, "
        f"energy -{shown(now.energy_cost, ',.0f')} $/h); energy {shown(price, '.0f')} $/MWh "
        f"vs mining breakeven {shown(be, '.0f')} $/MWh {basis}: {verdict}"
    )
