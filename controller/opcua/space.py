"""The address space, generated from the site description and its point map.

Nothing here declares a point: every variable is a point of the map (its
NodeId is the point's name, ``ns=<site>;s=tank01.fluid_temp``, stable across
restarts and across equipment added to the site), placed under the equipment
the site description puts it on::

    Objects/<site name>/
        PLC, SiteMeter                       the PLC's own block, the import meter
        Loops/<loop>/<pump>|<dry cooler>|<CDU>
        Tanks/<tank>      Racks/<rack row>   Feeders/<feeder>/<PDU>
        Workloads/mining|training|inference  totals, organising their tanks and rows
        Controller                           mode, counters, limits in force, methods
        Alarms                               filled by ``alarms.py``

Analog points are ``AnalogItemType`` with ``EngineeringUnits`` (UN/CEFACT codes)
and ``EURange`` from the point's range (``BaseAnalogType`` where the map gives
only one bound); bits are Booleans. Every device has a DI-style
``Identification`` and a ``DeviceHealth`` with the NAMUR NE107 states. A value's
status code follows the controller's quality (``status_codes``): a stale point
is never Good. ``apply`` writes only what changed, straight into the server's
address space, so subscriptions carry exactly the changes of each scan.
"""

from __future__ import annotations

import gc
import logging
import math
import re
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from asyncua import Server, ua
from asyncua.common.structures104 import new_enum
from asyncua.server.address_space import AttributeValue

from thermogate.plc.equipment import ControlLoop, Site
from thermogate.plc.pointmap import PointMap
from thermogate.plc.points import BAD, GOOD, UNCERTAIN

from ..core.topology import CLASS_ORDER, Topology
from ..signals import (
    FLAG_DISAGREE,
    FLAG_DRIFT,
    FLAG_NAN,
    FLAG_NEVER_READ,
    FLAG_RANGE,
    FLAG_RATE,
    FLAG_STALE,
    FLAG_STUCK,
    FLAG_ZERO,
    flag_names,
)
from . import nodes
from .nodes import OID, Builder, Device, V
from .publishing import Notifier
from .snapshot import Snapshot
from .typed import node_id, status_code
from .wire import datavalue
from .wire import double as _double

log = logging.getLogger(__name__)
S = ua.StatusCodes
#: NAMUR NE107 states, numbered as the OPC UA DI ``DeviceHealthEnumeration``
NE107 = ("NORMAL", "FAILURE", "CHECK_FUNCTION", "OFF_SPEC", "MAINTENANCE_REQUIRED")
NORMAL, FAILURE, CHECK_FUNCTION, OFF_SPEC, MAINTENANCE_REQUIRED = range(5)
#: a sensor that drifts or sticks wants calibration or replacement, not an operator
MAINTENANCE_FLAGS = FLAG_STUCK | FLAG_DRIFT
NOT_MAINTENANCE = 0xFFFF & ~MAINTENANCE_FLAGS
BAD_BIT = 0x80000000


def changed_points(
    last_codes: np.ndarray, last_values: np.ndarray, codes: np.ndarray, values: np.ndarray
) -> np.ndarray:
    """Indices of the points a client must be told of: a new status, or a new value
    under a status that is not Bad (a Bad value is null whatever the number)."""
    same = (values == last_values) | (np.isnan(values) & np.isnan(last_values))
    return np.flatnonzero((codes != last_codes) | ((codes < BAD_BIT) & ~same))


def status_codes(quality: np.ndarray, flags: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Each point's OPC UA status code from its quality and why (uint32, vectorised).

    GOOD is Good. UNCERTAIN is UncertainLastUsableValue while a rate check holds
    the last accepted value, UncertainSensorNotAccurate for a stuck, drifting or
    disagreeing sensor, else Uncertain. BAD is BadCommunicationError when stale,
    BadSensorFailure for NaN or a failure sentinel, BadOutOfRange outside the
    plausible range, BadWaitingForInitialData before a first good reading, else
    BadSensorFailure. A value that is not a number is never shown usable."""
    q, f = np.asarray(quality), np.asarray(flags, dtype=np.uint32)
    codes = np.zeros(len(q), np.uint32)
    unc = q == UNCERTAIN
    codes[unc] = S.Uncertain
    codes[unc & (f & (FLAG_STUCK | FLAG_DRIFT | FLAG_DISAGREE) != 0)] = S.UncertainSensorNotAccurate
    codes[unc & (f & FLAG_RATE != 0)] = S.UncertainLastUsableValue
    bad = (q >= BAD) | ~np.isfinite(values)
    # least telling cause first: a more telling one overwrites it
    for flag, code in (
        (0, S.BadSensorFailure),
        (FLAG_NEVER_READ, S.BadWaitingForInitialData),
        (FLAG_RANGE, S.BadOutOfRange),
        (FLAG_ZERO, S.BadConfigurationError),
        (FLAG_NAN, S.BadSensorFailure),
        (FLAG_STALE, S.BadCommunicationError),
    ):
        codes[bad & ((f & flag != 0) if flag else True)] = code
    return codes


def namespace_uri(site: Site) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", site.name.lower()).strip("-") or "site"
    return f"urn:thermogate:site:{slug}"


#: applies whose timings are kept (an hour of 1 s scans)
TIMINGS_KEPT = 3600


@dataclass
class _Small:
    """A derived variable (health, setpoints, workloads, controller): written on change."""

    av: AttributeValue
    last: Any = None
    code: int = -1


def health_reason(dev: Device, pmap: PointMap, snap: Snapshot, state: int, failsafe: bool) -> str:
    """Why a device's health is what it is, naming its points and their flags."""
    if state == NORMAL:
        return ""
    parts = [
        f"{pmap.points[i].name} {'bad' if snap.quality[i] == BAD else 'uncertain'}"
        f" ({', '.join(flag_names(int(snap.flags[i]))) or 'no flag'})"
        for i in dev.points
        if snap.quality[i] != GOOD
    ]
    parts += [pmap.points[i].name for i in dev.faults if snap.values[i] >= 0.5]
    if failsafe:
        parts.append("zone in fail-safe")
    if snap.mode == "maintenance":
        parts.append("maintenance mode")
    parts += [
        f"{n} overridden"
        for n in snap.status.get("overrides", {})
        if pmap.position(n) in dev.points
    ]
    return f"{NE107[state]}: {'; '.join(parts)}"


#: the Controller object's variables: name -> (type, unit, description); their values
#: come from ``controller_values``
CONTROLLER_VARS: dict[str, tuple[ua.VariantType, str, str]] = {
    "Mode": (V.String, "", "auto | manual | maintenance"),
    "Scans": (V.UInt64, "", "scans since the controller started"),
    "Overruns": (V.UInt64, "", "scans that overran their interval"),
    "ScanDuration": (V.Double, "ms", "how long the last scan took"),
    "ImportLimit": (V.Double, "kW", "the grid import limit in force"),
    "InstructionLimit": (V.Double, "kW", "the lowest import limit asked now (NaN: none)"),
    "PeakLimit": (V.Double, "kW", "a peak window's import limit (NaN: none)"),
    "ActiveAlarms": (V.UInt32, "", "alarms active now"),
    "UnacknowledgedAlarms": (V.UInt32, "", "alarms not yet acknowledged"),
    "FailSafeZones": (V.String, "", "zones in fail-safe (their inputs are bad)"),
    "Overrides": (V.String, "", "actuators in manual override"),
    "Curtailments": (V.String, "", "curtailments asked: id, limit, from, to"),
    "LatchedTrips": (V.String, "", "PLC trips latched until an engineer resets them"),
    "UnderFrequencyTripped": (V.Boolean, "", "the under-frequency relay has shed load"),
    "UnderFrequencyReleaseReady": (V.Boolean, "", "ReleaseUnderFrequency would be accepted"),
    "GoodPoints": (V.UInt32, "", "points of good quality"),
    "BadPoints": (V.UInt32, "", "points of bad quality"),
}
ARRAYS = frozenset({"FailSafeZones", "Overrides", "Curtailments", "LatchedTrips"})


def controller_values(s: Snapshot) -> dict[str, Any]:
    st, uf = s.status, s.status.get("under_frequency", {})
    return {
        "Mode": s.mode,
        "Scans": s.scans,
        "Overruns": s.overruns,
        "ScanDuration": s.scan_ms,
        "ImportLimit": _num(st.get("import_limit_kw")),
        "InstructionLimit": _num(s.instruction_kw),
        "PeakLimit": _num(st.get("peak_limit_kw")),
        "ActiveAlarms": sum(r.active for r in s.alarms),
        "UnacknowledgedAlarms": sum(not r.acked for r in s.alarms),
        "FailSafeZones": list(st.get("failsafe_zones", [])),
        "Overrides": [
            f"{n} = {o['value']:g} by {o['by']}" for n, o in st.get("overrides", {}).items()
        ],
        "Curtailments": [
            f"#{c['id']}: <= {c['limit_kw']:g} kW from {_iso(c['start'])} to {_iso(c['end'])}"
            for c in st.get("curtailments", [])
        ],
        "LatchedTrips": list(st.get("latched", [])),
        "UnderFrequencyTripped": bool(uf.get("tripped")),
        "UnderFrequencyReleaseReady": bool(uf.get("release_ready")),
        "GoodPoints": int(np.count_nonzero(s.quality == GOOD)),
        "BadPoints": int(np.count_nonzero(s.quality >= BAD)),
    }


def _num(x: float | None) -> float:
    return math.nan if x is None else float(x)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


class Space:
    """See the module docstring. ``build`` once before the server starts; ``apply``
    each snapshot on the server's loop."""

    def __init__(self, server: Server, site: Site, pmap: PointMap, topo: Topology) -> None:
        self.server, self.site, self.pmap, self.topo = server, site, pmap, topo
        self.idx = 0
        self.devices: list[Device] = []
        #: NodeId of each point's variable, by position in the point map
        self.point_nodes: list[ua.NodeId] = []
        #: writable setpoint variables -> their control loop
        self.setpoints: dict[ua.NodeId, ControlLoop] = {}
        #: historized variables -> historian point name (every point is recorded each scan)
        self.historized: dict[ua.NodeId, str] = {}
        self.root = self.controller = self.alarms = ua.NodeId()
        self.applied = 0  # snapshots applied
        #: (scan time, apply started, changes flushed) of the latest applies, wall clock:
        #: where a change's latency goes (``bench opcua``)
        self.timings: deque[tuple[float, float, float]] = deque(maxlen=TIMINGS_KEPT)
        #: each apply's changes into the subscriptions, in bulk
        self.notifier = Notifier()
        self._small: dict[str, _Small] = {}
        self._sc: dict[int, ua.StatusCode] = {}
        #: setpoints written and accepted: (value, when given), shown until a scan
        #: after that arrives (a snapshot of the scan before must not put it back)
        self._written: dict[str, tuple[float, float]] = {}

    async def build(self) -> None:
        """Create every node (``nodes.Builder``: straight into the address space).

        The cyclic garbage collector is paused meanwhile: the hundreds of thousands of
        objects made here all live as long as the server, and each full collection
        would walk all of them again (it made a 10,000-point build five times slower)."""
        paused = gc.isenabled()
        gc.disable()
        try:
            await self._build()
        finally:
            if paused:
                gc.enable()

    async def _build(self) -> None:
        site, pmap = self.site, self.pmap
        uri = namespace_uri(site)
        self.idx = idx = await self.server.register_namespace(uri)
        health = await new_enum(self.server, idx, "DeviceHealthEnumeration", list(NE107))
        b = Builder(self.server, idx, site.scan_interval_s)
        names = [ua.LocalizedText(x) for x in NE107]
        b.prop(health.nodeid, "EnumStrings", names, V.LocalizedText, OID.LocalizedText)
        objects = node_id(OID.ObjectsFolder)
        self.root = b.obj(objects, "Site", site.name, f"the site '{site.name}'", folder=False)
        self.devices = nodes.devices(site, pmap.index, b, self.root, health.nodeid, uri)
        owner = {i: d for d in self.devices for i in d.points}
        self.point_nodes = [nodes.point(b, owner[i].node, p) for i, p in enumerate(pmap.points)]
        self.historized = {n: p.name for n, p in zip(self.point_nodes, pmap.points, strict=True)}
        self.setpoints = nodes.setpoint_vars(b, site, pmap, owner)
        nodes.workload_vars(b, self.topo, self.devices)
        desc = "the site controller: its state, and commands as methods"
        self.controller = b.obj(self.root, "Site/Controller", "Controller", desc, folder=False)
        for name, (vt, unit, desc) in CONTROLLER_VARS.items():
            zero = {V.String: "", V.Boolean: False, V.Double: math.nan}.get(vt, 0)
            value = ua.Variant([] if name in ARRAYS else zero, vt, is_array=name in ARRAYS)
            b.derived(self.controller, f"ctl.{name}", name, desc, value, node_id(vt.value), unit)
        desc = "alarms as events and as variables"
        self.alarms = b.obj(self.root, "Site/Alarms", "Alarms", desc, notifier=True)
        self._index(b)

    def _index(self, b: Builder) -> None:
        """Attribute records to write into, and which device each point belongs to."""
        aspace, value, pmap = self.server.iserver.aspace, ua.AttributeIds.Value, self.pmap
        self._pav = [aspace[n].attributes[value] for n in self.point_nodes]
        self.bits = [p.is_bit for p in pmap.points]  #: per point: a Boolean variable
        self._small = {k: _Small(aspace[n].attributes[value]) for k, n in b.derived_nodes.items()}
        wait = self._status(S.BadWaitingForInitialData)
        for av in [*self._pav, *(s.av for s in self._small.values())]:
            av.value = ua.DataValue(ua.Variant(), wait)  # nothing is Good before a scan says so
        self._last_v = np.full(len(pmap), np.nan)
        self._last_c = np.full(len(pmap), S.BadWaitingForInitialData, np.uint32)
        pairs = [(d, i) for d, dev in enumerate(self.devices) for i in dev.points]
        self._h_dev, self._h_pts = (np.array(x, np.intp) for x in zip(*pairs, strict=True))
        faults = [(d, i) for d, dev in enumerate(self.devices) for i in dev.faults]
        self._f_dev, self._f_pts = (np.array(x, np.intp) for x in zip(*faults, strict=True))
        self._dev_by_name = {dev.name: d for d, dev in enumerate(self.devices)}
        self._dev_of_point = {pmap.points[i].name: d for d, i in pairs}
        self._health = np.full(len(self.devices), -1)

    # -- applying a snapshot ------------------------------------------------------------
    def _status(self, code: int) -> ua.StatusCode:
        sc = self._sc.get(code)
        if sc is None:
            sc = self._sc[code] = status_code(code)
        return sc

    async def apply(self, snap: Snapshot) -> int:
        """Write what changed since the last snapshot; returns how many points changed."""
        # SourceTimestamp: the scan that produced the value; ServerTimestamp: now
        t_start = time.time()
        now = datetime.now(UTC)
        ts = datetime.fromtimestamp(snap.t, UTC) if math.isfinite(snap.t) else now
        v = snap.values
        codes = status_codes(snap.quality, snap.flags, v)
        changed = changed_points(self._last_c, self._last_v, codes, v)
        self._last_v, self._last_c = v, codes
        pav, bit, status, null = self._pav, self.bits, self._status, ua.Variant()
        enqueue = self.notifier.enqueue
        # the hot loop: one new DataValue per changed point, no per-point coroutine
        for i, x, c in zip(
            changed.tolist(), v[changed].tolist(), codes[changed].tolist(), strict=True
        ):
            if c >= BAD_BIT:  # Part 4 7.7.1: the value of a Bad result is null
                var = null
            else:
                var = (_TRUE if x >= 0.5 else _FALSE) if bit[i] else _double(x)
            av = pav[i]
            av.value = dv = _datavalue(var, status(c), ts, now)
            if av.datachange_callbacks:
                enqueue(av, dv)
        self._apply_health(snap, ts)
        written = self._written
        for c, x, w in zip(
            self.site.control_loops, snap.setpoints.tolist(), snap.working.tolist(), strict=True
        ):
            if written and c.name in written:
                held, given_t = written[c.name]
                if snap.t <= given_t:
                    x = held
                else:
                    del written[c.name]
            self.put(f"{c.name}.setpoint", x, V.Double, ts)
            self.put(f"{c.name}.working", w, V.Double, ts)
        self._apply_workloads(snap, ts)
        for name, x in controller_values(snap).items():
            self.put(f"ctl.{name}", x, CONTROLLER_VARS[name][0], ts, array=name in ARRAYS)
        await self.notifier.flush()  # the scan's changes leave in one go
        self.applied += 1
        self.timings.append((snap.t, t_start, time.time()))
        return len(changed)

    async def show_written(self, loop: str, value: float, given_t: float) -> None:
        """A setpoint write the command path accepted, shown at once: a client's
        read right after its Good write saw the old value until the next scan."""
        self._written[loop] = (value, given_t)
        now = datetime.now(UTC)
        self.put(f"{loop}.setpoint", value, V.Double, now)
        await self.notifier.flush()

    def put(
        self,
        key: str,
        x: Any,
        vt: ua.VariantType,
        ts: datetime,
        code: int = 0,
        *,
        array: bool = False,
    ) -> None:
        """A derived variable's value (``x`` of type ``vt``), written only when it or its
        status changed."""
        s = self._small[key]
        same = s.last == x or (_isnan(s.last) and _isnan(x))
        if s.code == code and same:
            return
        s.last, s.code = x, code
        var = ua.Variant(x, vt, is_array=array)
        s.av.value = dv = _datavalue(var, self._status(code), ts, datetime.now(UTC))
        if s.av.datachange_callbacks:
            self.notifier.enqueue(s.av, dv)

    def _apply_workloads(self, snap: Snapshot, ts: datetime) -> None:
        v, q, loads = snap.values, snap.quality, snap.status.get("loads", {})
        for ld in self.topo.loads:
            caps = loads.get(ld.name, {})
            for key in ("thermal_cap_kw", "power_cap_kw"):
                self.put(f"{ld.name}.{key}", _num(caps.get(key)), V.Double, ts)
        for cls in CLASS_ORDER:
            mine = [ld for ld in self.topo.loads if ld.wclass == cls]
            if not mine:
                continue
            pw = np.array([ld.power for ld in mine])
            ok = q[pw] < BAD
            code = 0 if (q[pw] == GOOD).all() else S.Uncertain if ok.any() else S.BadSensorFailure
            total = float(np.sum(v[pw][ok])) if ok.any() else math.nan
            self.put(f"wl.{cls}.power", total, V.Double, ts, code)
            en = np.array([ld.enable for ld in mine])
            on = int(np.count_nonzero((v[en] >= 0.5) & (q[en] < BAD)))
            self.put(f"wl.{cls}.enabled", on, V.UInt32, ts)

    def _apply_health(self, snap: Snapshot, ts: datetime) -> None:
        """NE107 per device, vectorised over devices; written where it changed."""
        q, f, v, nd = snap.quality, snap.flags, snap.values, len(self.devices)
        maxq = np.zeros(nd, np.uint8)
        np.maximum.at(maxq, self._h_dev, q[self._h_pts])
        why = np.zeros(nd, np.uint32)
        np.bitwise_or.at(why, self._h_dev, np.where(q[self._h_pts] != GOOD, f[self._h_pts], 0))
        fault = np.zeros(nd, bool)
        np.logical_or.at(fault, self._f_dev, (v[self._f_pts] >= 0.5) & (q[self._f_pts] < BAD))
        failsafe = np.zeros(nd, bool)
        for z in snap.status.get("failsafe_zones", ()):
            if z in self._dev_by_name:
                failsafe[self._dev_by_name[z]] = True
        check = np.full(nd, snap.mode == "maintenance")
        for name in snap.status.get("overrides", {}):
            if name in self._dev_of_point:
                check[self._dev_of_point[name]] = True
        unc = maxq == UNCERTAIN
        state = np.select(
            [(maxq >= BAD) | fault | failsafe, check, unc & (why & NOT_MAINTENANCE != 0), unc],
            [FAILURE, CHECK_FUNCTION, OFF_SPEC, MAINTENANCE_REQUIRED],
            NORMAL,
        )
        # a device not NORMAL may change its reason without changing its state
        for d in np.flatnonzero((state != self._health) | (state != NORMAL)).tolist():
            dev, st = self.devices[d], int(state[d])
            why_text = health_reason(dev, self.pmap, snap, st, bool(failsafe[d]))
            self.put(f"{dev.path}/DeviceHealth", st, V.Int32, ts)
            self.put(f"{dev.path}/DeviceHealthReason", why_text, V.String, ts)
        self._health = state


def _isnan(x: object) -> bool:
    return isinstance(x, float) and math.isnan(x)


class Published(ua.DataValue):
    """A value as published: never changed once made (each scan makes new ones).

    asyncua deep-copies the DataValue for every monitored item of a variable on every
    change, in case the writer mutates it later; with 10,000 monitored items that copy
    was nine tenths of an apply (about a second). Nothing mutates a published value,
    so its copy is itself."""

    __slots__ = ()

    def __copy__(self) -> Published:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Published:
        return self


_TRUE, _FALSE = ua.Variant(True, V.Boolean), ua.Variant(False, V.Boolean)


def _datavalue(var: ua.Variant, sc: ua.StatusCode, source: datetime, server: datetime) -> Any:
    return datavalue(Published, var, sc, source, server)
