"""Resize the GPU side of a site: more (or fewer) of the same GPU equipment.

A study of a job trace needs a hall with about as many GPUs as the trace
offers work for. ``with_gpus`` gives the site ``gpus`` GPUs by changing how
many nodes each GPU tank and rack row holds, and scales everything that
carries their heat and current by the same factor, as if the equipment were
built ``k`` times in parallel: a tank's volume, plate HX and flows; a CDU's
volume, HX and flows; the loop's volume, pumps and dry coolers (by the
change of the loop's rated heat); the breakers of PDUs and feeders (by the
change of the load behind them). Per-unit quantities (a node's power, its
chips' thermal resistance, setpoints and limits) do not change, so the
thermal behaviour of each zone stays what the site file describes.

The import limit is left as it is: how oversubscribed the result should be
is the caller's choice (``Site.oversubscription`` says what it is).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import replace

from .equipment import Breaker, Cdu, Loop, RackRow, Site, Tank
from .errors import ConfigError


def with_gpus(site: Site, gpus: int) -> Site:
    """The site with about ``gpus`` GPUs (whole nodes; see the module docstring)."""
    if site.gpus <= 0:
        raise ConfigError(site.source, "gpus", f"no GPU equipment to size to {gpus} GPUs")
    if gpus < 1:
        raise ConfigError(site.source, "gpus", f"{gpus} must be at least 1")
    k = gpus / site.gpus
    tanks = tuple(_tank(t, k) for t in site.tanks)
    rows = tuple(_row(r, k) for r in site.rack_rows)

    # how much each zone's rated heat changed, then each CDU, loop, PDU, feeder
    cdu_old: dict[str, float] = defaultdict(float)
    cdu_new: dict[str, float] = defaultdict(float)
    for r, new in zip(site.rack_rows, rows, strict=True):
        cdu_old[r.cdu] += r.rated_kw
        cdu_new[r.cdu] += new.rated_kw
    cdus = tuple(_cdu(c, _ratio(cdu_new[c.name], cdu_old[c.name])) for c in site.cdus)

    loop_of_cdu = {c.name: c.loop for c in site.cdus}
    loop_old: dict[str, float] = defaultdict(float)
    loop_new: dict[str, float] = defaultdict(float)
    pdu_old: dict[str, float] = defaultdict(float)
    pdu_new: dict[str, float] = defaultdict(float)
    for t, new_t in zip(site.tanks, tanks, strict=True):
        loop_old[t.loop] += t.rated_kw
        loop_new[t.loop] += new_t.rated_kw
        pdu_old[t.pdu] += t.rated_kw
        pdu_new[t.pdu] += new_t.rated_kw
    for r, new_r in zip(site.rack_rows, rows, strict=True):
        lp = loop_of_cdu[r.cdu]
        loop_old[lp] += r.rated_kw
        loop_new[lp] += new_r.rated_kw
        pdu_old[r.pdu] += r.rated_kw
        pdu_new[r.pdu] += new_r.rated_kw
    loop_f = {lp.name: _ratio(loop_new[lp.name], loop_old[lp.name]) for lp in site.loops}
    loops = tuple(_loop(lp, loop_f[lp.name]) for lp in site.loops)
    pdus = tuple(
        replace(d, breaker=_breaker(d.breaker, _ratio(pdu_new[d.name], pdu_old[d.name])))
        for d in site.pdus
    )

    # a feeder carries its PDUs' loads and its loops' pumps and fans
    feed_old: dict[str, float] = defaultdict(float)
    feed_new: dict[str, float] = defaultdict(float)
    for old_d, new_d in zip(site.pdus, pdus, strict=True):
        feed_old[old_d.feeder] += old_d.rating_kw
        feed_new[old_d.feeder] += new_d.rating_kw
    for old_l, new_l in zip(site.loops, loops, strict=True):
        feed_old[old_l.feeder] += _mech_kw(old_l)
        feed_new[old_l.feeder] += _mech_kw(new_l)
    feeders = tuple(
        replace(f, breaker=_breaker(f.breaker, _ratio(feed_new[f.name], feed_old[f.name])))
        for f in site.feeders
    )
    return replace(
        site, tanks=tanks, rack_rows=rows, cdus=cdus, loops=loops, pdus=pdus, feeders=feeders
    )


def _ratio(new: float, old: float) -> float:
    return new / old if old > 0 else 1.0


def _nodes(n: int, k: float) -> int:
    return max(1, round(n * k)) if n else 0


def _tank(t: Tank, k: float) -> Tank:
    if t.workload != "gpu":
        return t
    units = _nodes(t.units, k)
    f = units / t.units
    return replace(
        t,
        units=units,
        volume_l=t.volume_l * f,
        hx_ua_kw_k=t.hx_ua_kw_k * f,
        dielectric_flow_l_s=t.dielectric_flow_l_s * f,
        design_water_flow_m3h=t.design_water_flow_m3h * f,
    )


def _row(r: RackRow, k: float) -> RackRow:
    return replace(r, nodes=_nodes(r.nodes, k))


def _cdu(c: Cdu, f: float) -> Cdu:
    if math.isclose(f, 1.0):
        return c
    return replace(
        c,
        tcs_volume_l=c.tcs_volume_l * f,
        hx_ua_kw_k=c.hx_ua_kw_k * f,
        tcs_flow_l_s=c.tcs_flow_l_s * f,
        design_water_flow_m3h=c.design_water_flow_m3h * f,
    )


def _loop(lp: Loop, f: float) -> Loop:
    if math.isclose(f, 1.0):
        return lp
    pumps = tuple(
        replace(p, rated_flow_m3h=p.rated_flow_m3h * f, rated_power_kw=p.rated_power_kw * f)
        for p in lp.pumps
    )
    coolers = tuple(
        replace(d, capacity_kw=d.capacity_kw * f, fan_power_kw=d.fan_power_kw * f)
        for d in lp.dry_coolers
    )
    return replace(
        lp,
        volume_l=lp.volume_l * f,
        min_flow_m3h=lp.min_flow_m3h * f,
        pumps=pumps,
        dry_coolers=coolers,
    )


def _mech_kw(lp: Loop) -> float:
    return sum(p.rated_power_kw for p in lp.pumps) + sum(
        d.fans * d.fan_power_kw for d in lp.dry_coolers
    )


def _breaker(b: Breaker, f: float) -> Breaker:
    return b if math.isclose(f, 1.0) else replace(b, rating_a=b.rating_a * f)
