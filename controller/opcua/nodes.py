"""How ``space.py`` makes its nodes: the equipment objects with identification and
health, the points with units and ranges, setpoints, workloads.

A site of 10,000 points has some 45,000 nodes; the ``Builder`` puts them into the
server's address space directly (asyncua's AddNodes service would take a minute
on a small machine). Units follow OPC UA Part 8: ``EUInformation`` with the
UN/CEFACT Recommendation 20 common code as ``UnitId``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from asyncua import Server, ua
from asyncua.server.address_space import AttributeValue, NodeData

from thermogate.plc.controlloops import held_quantities
from thermogate.plc.equipment import ControlLoop, Site
from thermogate.plc.pointmap import PointMap
from thermogate.plc.points import Point
from thermogate.plc.pointtable import GroupPoints, PointIndex

from ..core.topology import CLASS_ORDER, Topology
from .typed import node_id

V, OID = ua.VariantType, ua.ObjectIds
UNECE_URI = "http://www.opcfoundation.org/UA/units/un/cefact"
#: the point map's units -> UN/CEFACT Rec. 20 common code, symbol, name
UNITS = {
    "degC": ("CEL", "°C", "degree Celsius"),
    "%": ("P1", "%", "percent"),
    "kW": ("KWT", "kW", "kilowatt"),
    "W": ("WTT", "W", "watt"),
    "kWh": ("KWH", "kW·h", "kilowatt hour"),
    "A": ("AMP", "A", "ampere"),
    "V": ("VLT", "V", "volt"),
    "Hz": ("HTZ", "Hz", "hertz"),
    "kPa": ("KPA", "kPa", "kilopascal"),
    "m3/h": ("MQH", "m³/h", "cubic metre per hour"),
    "l/s": ("G51", "l/s", "litre per second"),
    "s": ("SEC", "s", "second [unit of time]"),
    "ms": ("C26", "ms", "millisecond"),
}
#: properties with a standard browse name (namespace 0)
NS0_PROPS = frozenset({"EURange", "EngineeringUnits", "EnumStrings"})
#: bits whose 1 means the device has failed or tripped
FAULT_ATTRS = ("fault", "breaker_tripped", "interlock", "leak", "low_flow", "safe_state")
READ = ua.AccessLevel.CurrentRead.mask
READ_HISTORY = READ | ua.AccessLevel.HistoryRead.mask
READ_WRITE = READ | ua.AccessLevel.CurrentWrite.mask


def unit_id(code: str) -> int:
    """OPC UA Part 8 5.6.3: the common code's characters, 8 bits each, as an Int32."""
    n = 0
    for c in code:
        n = n << 8 | ord(c)
    return n


def eu_information(unit: str) -> ua.EUInformation:
    """A unit with its UN/CEFACT code; one without (TH/s) has UnitId -1, as Part 8 asks."""
    if unit in UNITS:
        code, symbol, name = UNITS[unit]
        return ua.EUInformation(
            UNECE_URI, unit_id(code), ua.LocalizedText(symbol), ua.LocalizedText(name)
        )
    text = ua.LocalizedText(unit)
    return ua.EUInformation("urn:thermogate:units", -1, text, text)


@dataclass
class Device:
    """A piece of equipment as an object: its points, its fault bits, its node."""

    name: str  # the site description's name (a fail-safe zone has the same)
    path: str  # NodeId string of its object
    node: ua.NodeId
    points: list[int] = field(default_factory=list)
    faults: list[int] = field(default_factory=list)


class Builder:
    """Adds nodes straight into the server's address space.

    asyncua's AddNodes service takes about half a millisecond a node (it builds a
    timestamped DataValue for each of two dozen attributes and resolves every
    reference by reading attributes back); a 10,000-point site has ~45,000
    nodes. This makes the same ``NodeData`` (the attributes an AddNodes of the
    same Object/VariableAttributes would set, the references to and from the
    parent and to the type definition) sharing the immutable attribute values,
    some ten times faster. Only for nodes made here, before the server starts."""

    def __init__(self, server: Server, idx: int, scan_s: float) -> None:
        self.aspace = server.iserver.aspace
        self.idx, self.scan_ms = idx, scan_s * 1000.0
        #: derived variables (not points) by key, for ``Space.put``
        self.derived_nodes: dict[str, ua.NodeId] = {}
        self._shared: dict[tuple[Any, ...], ua.DataValue] = {}
        self._about: dict[ua.NodeId, tuple[Any, ...]] = {}  # browse, display, class, type

    def _dv(self, value: Any, vtype: ua.VariantType, *, array: bool = False) -> ua.DataValue:
        """An immutable attribute value, shared by every node that has it."""
        key = (value, vtype, array)
        dv = self._shared.get(key)
        if dv is None:
            dv = self._shared[key] = ua.DataValue(ua.Variant(value, vtype, is_array=array))
        return dv

    def _info(self, nid: ua.NodeId) -> tuple[Any, ...]:
        """(browse name, display name, node class, type definition) of an existing node."""
        about = self._about.get(nid)
        if about is None:
            nd, a = self.aspace[nid], ua.AttributeIds
            refs = nd.references
            tdef = next(
                (r.NodeId for r in refs if r.IsForward and r.ReferenceTypeId == _HAS_TYPE),
                ua.NodeId(),
            )
            qn, name, cls = (
                _value(nd.attributes[x].value) for x in (a.BrowseName, a.DisplayName, a.NodeClass)
            )
            about = self._about[nid] = (qn, name, cls, tdef)
        return about

    def _node(
        self,
        parent: ua.NodeId,
        nid: ua.NodeId,
        qn: ua.QualifiedName,
        cls: ua.NodeClass,
        ref: int,
        typedef: int,
        attrs: dict[ua.AttributeIds, ua.DataValue],
    ) -> ua.NodeId:
        if nid in self.aspace:
            raise RuntimeError(f"node {nid} exists already")
        a = ua.AttributeIds
        nd = NodeData(nid)
        attrs[a.NodeId] = ua.DataValue(ua.Variant(nid, V.NodeId))
        attrs[a.BrowseName] = ua.DataValue(ua.Variant(qn, V.QualifiedName))
        attrs[a.NodeClass] = self._dv(cls, V.Int32)
        nd.attributes = {k: AttributeValue(dv) for k, dv in attrs.items()}
        self.aspace[nid] = nd
        name, rtype, tdef = _value(attrs[a.DisplayName]), node_id(ref), node_id(typedef)
        self.aspace[parent].references.append(
            ua.ReferenceDescription(rtype, True, nid, qn, name, cls, tdef)
        )
        pqn, pname, pcls, ptdef = self._info(parent)
        tqn, tname, tcls, _ = self._info(tdef)
        nd.references += [
            ua.ReferenceDescription(rtype, False, parent, pqn, pname, pcls, ptdef),
            ua.ReferenceDescription(_HAS_TYPE, True, tdef, tqn, tname, tcls),
        ]
        self._about[nid] = (qn, name, cls, tdef)
        return nid

    def obj(
        self,
        parent: ua.NodeId,
        path: str,
        name: str,
        desc: str,
        *,
        folder: bool = True,
        notifier: bool = False,
    ) -> ua.NodeId:
        """A folder (organized by its parent) or an object (a component of it)."""
        a = ua.AttributeIds
        attrs = {
            a.DisplayName: ua.DataValue(ua.Variant(ua.LocalizedText(name), V.LocalizedText)),
            a.Description: ua.DataValue(ua.Variant(ua.LocalizedText(desc), V.LocalizedText)),
            a.WriteMask: self._dv(0, V.UInt32),
            a.UserWriteMask: self._dv(0, V.UInt32),
            # SubscribeToEvents where alarms are fired from
            a.EventNotifier: self._dv(int(notifier), V.Byte),
        }
        ref, tdef = (
            (OID.Organizes, OID.FolderType) if folder else (OID.HasComponent, OID.BaseObjectType)
        )
        qn = ua.QualifiedName(name, self.idx)
        return self._node(
            parent, node_id(path, self.idx), qn, ua.NodeClass.Object, ref, tdef, attrs
        )

    def var(
        self,
        parent: ua.NodeId,
        nid: str,
        name: str,
        desc: str,
        value: ua.Variant,
        dtype: int | ua.NodeId,
        *,
        typedef: int = OID.BaseDataVariableType,
        access: int = READ,
        history: bool = False,
        prop: bool = False,
    ) -> ua.NodeId:
        """A variable (a component of its parent) or a property."""
        a = ua.AttributeIds
        dt = dtype if isinstance(dtype, ua.NodeId) else node_id(dtype)
        attrs = {
            a.DisplayName: ua.DataValue(ua.Variant(ua.LocalizedText(name), V.LocalizedText)),
            a.Description: ua.DataValue(ua.Variant(ua.LocalizedText(desc), V.LocalizedText)),
            a.WriteMask: self._dv(0, V.UInt32),
            a.UserWriteMask: self._dv(0, V.UInt32),
            a.Value: ua.DataValue(value),
            a.DataType: self._dv(dt, V.NodeId),
            a.ValueRank: self._dv(1 if value.is_array else -1, V.Int32),
            a.ArrayDimensions: self._dv(None, V.UInt32, array=True),
            a.AccessLevel: self._dv(access, V.Byte),
            a.UserAccessLevel: self._dv(access, V.Byte),
            # values change once per scan: a client sampling faster gains nothing
            a.MinimumSamplingInterval: self._dv(0.0 if prop else self.scan_ms, V.Double),
            a.Historizing: self._dv(history, V.Boolean),
        }
        qn = ua.QualifiedName(name, 0 if prop and name in NS0_PROPS else self.idx)
        ref, tdef = (OID.HasProperty, OID.PropertyType) if prop else (OID.HasComponent, typedef)
        return self._node(
            parent, node_id(nid, self.idx), qn, ua.NodeClass.Variable, ref, tdef, attrs
        )

    def prop(
        self, parent: ua.NodeId, name: str, value: Any, vtype: ua.VariantType, dtype: int
    ) -> ua.NodeId:
        nid = f"{parent.Identifier!s}/{name}"
        return self.var(parent, nid, name, name, ua.Variant(value, vtype), dtype, prop=True)

    def analog(
        self,
        parent: ua.NodeId,
        nid: str,
        name: str,
        desc: str,
        unit: str,
        lo: float | None = None,
        hi: float | None = None,
        **kw: Any,
    ) -> ua.NodeId:
        """An ``AnalogItemType`` (both bounds known) or ``BaseAnalogType`` Double with
        its ``EURange`` and ``EngineeringUnits``."""
        ranged = lo is not None and hi is not None
        tdef = OID.AnalogItemType if ranged else OID.BaseAnalogType
        nan = ua.Variant(math.nan, V.Double)
        node = self.var(parent, nid, name, desc, nan, OID.Double, typedef=tdef, **kw)
        if ranged:
            self.prop(node, "EURange", ua.Range(lo, hi), V.ExtensionObject, OID.Range)
        if unit:
            eu = eu_information(unit)
            self.prop(node, "EngineeringUnits", eu, V.ExtensionObject, OID.EUInformation)
        return node

    def derived(
        self,
        parent: ua.NodeId,
        key: str,
        name: str,
        desc: str,
        value: ua.Variant,
        dtype: int | ua.NodeId,
        unit: str = "",
    ) -> ua.NodeId:
        """A variable the controller's state gives (not a point), updated by key."""
        nid = f"{parent.Identifier!s}/{name}"
        if unit:
            node = self.analog(parent, nid, name, desc, unit)
        else:
            node = self.var(parent, nid, name, desc, value, dtype)
        self.derived_nodes[key] = node
        return node

    def organizes(self, source: ua.NodeId, target: ua.NodeId) -> None:
        """A further, non-hierarchical-parent reference: source organizes target."""
        qn, name, cls, tdef = self._info(target)
        rtype = node_id(OID.Organizes)
        self.aspace[source].references.append(
            ua.ReferenceDescription(rtype, True, target, qn, name, cls, tdef)
        )
        qn, name, cls, tdef = self._info(source)
        self.aspace[target].references.append(
            ua.ReferenceDescription(rtype, False, source, qn, name, cls, tdef)
        )


_HAS_TYPE = node_id(OID.HasTypeDefinition)


def _value(dv: ua.DataValue | None) -> Any:
    """The value of an attribute every node has. The casts: asyncua allows None for
    both, yet a node made by the Builder or by asyncua holds a DataValue in each such
    attribute, and a DataValue's Value is always a Variant (``__post_init__`` wraps it)."""
    return cast(ua.Variant, cast(ua.DataValue, dv).Value).Value


# -- the equipment ---------------------------------------------------------------------
FOLDERS = {
    "Loops": "water/glycol loops with their pumps, dry coolers and CDUs",
    "Tanks": "immersion tanks (ASIC miners, GPU nodes)",
    "Racks": "direct-to-chip GPU rack rows",
    "Feeders": "feeders with their PDUs",
    "Workloads": "mining, training and inference: totals, and the tanks and rows running them",
}


def _equipment(site: Site, ix: PointIndex) -> Iterator[tuple[str, str, str, Any, GroupPoints, int]]:
    """(kind, parent, name, record, points, unit id), parents before children; the
    parent is a folder or an earlier piece of equipment's name."""
    g: GroupPoints  # each kind's own points class
    yield "plc", "", "PLC", site.plc, ix.plc, site.plc.unit_id
    yield "site", "", "SiteMeter", site, ix.site, site.meter_unit_id
    for f, g in zip(site.feeders, ix.feeders, strict=True):
        yield "feeder", "Feeders", f.name, f, g, f.unit_id
    for d, g in zip(site.pdus, ix.pdus, strict=True):
        yield "pdu", d.feeder, d.name, d, g, d.unit_id
    for lp, g in zip(site.loops, ix.loops, strict=True):
        yield "loop", "Loops", lp.name, lp, g, lp.unit_id
    for p, g in zip(site.pumps, ix.pumps, strict=True):
        yield "pump", p.loop, p.name, p, g, p.unit_id
    for dc, g in zip(site.dry_coolers, ix.dry_coolers, strict=True):
        yield "dry_cooler", dc.loop, dc.name, dc, g, dc.unit_id
    for c, g in zip(site.cdus, ix.cdus, strict=True):
        yield "cdu", c.loop, c.name, c, g, c.unit_id
    for t, g in zip(site.tanks, ix.tanks, strict=True):
        yield "tank", "Tanks", t.name, t, g, t.unit_id
    for r, g in zip(site.rack_rows, ix.rows, strict=True):
        yield "row", "Racks", r.name, r, g, r.unit_id


def model(kind: str, r: Any, site: Site) -> str:
    """What a device is, in the site description's terms (the DI ``Model``)."""
    if kind == "tank":
        units = "miners" if r.workload == "asic" else "GPU nodes"
        return f"immersion tank, {r.units} {units} x {r.unit_power_kw:g} kW, {r.volume_l:g} l"
    if kind == "row":
        return f"GPU rack row, {r.nodes} nodes x {r.node_power_kw:g} kW behind CDU {r.cdu}"
    if kind == "pump":
        return f"VFD pump, {r.rated_flow_m3h:g} m3/h at {r.rated_head_kpa:g} kPa"
    if kind == "dry_cooler":
        return f"dry cooler, {r.capacity_kw:g} kW, {r.fans} fans"
    if kind == "loop":
        return f"water/glycol loop, {r.volume_l:g} l, {r.glycol_pct:g} % glycol"
    if kind == "cdu":
        return f"coolant distribution unit on loop {r.loop}, {r.tcs_flow_l_s:g} l/s"
    if kind in ("feeder", "pdu"):
        return f"{r.breaker.rating_a:g} A breaker at {r.voltage_v:g} V ({r.rating_kw:.0f} kW)"
    if kind == "plc":
        return f"PLC with heartbeat watchdog ({r.heartbeat_timeout_s:g} s)"
    return f"import meter at {site.meter_voltage_v:g} V, {site.frequency_hz:g} Hz"


def devices(
    site: Site, ix: PointIndex, b: Builder, root: ua.NodeId, health_type: ua.NodeId, uri: str
) -> list[Device]:
    """The folders, and one object per piece of equipment with its identification and
    health (the points themselves are added by ``point``)."""
    folder = {k: b.obj(root, f"Site/{k}", k, d) for k, d in FOLDERS.items()}
    path = {"": "Site"}
    out = []
    for kind, parent, name, rec, group, unit in _equipment(site, ix):
        short = name.rsplit(".", 1)[-1]  # a pump's name is <loop>.<pump>
        pnode = folder[parent] if parent in folder else node_id(path[parent], b.idx)
        p = path[name] = f"{path.get(parent, 'Site/' + parent)}/{short}"
        what = model(kind, rec, site)
        node = b.obj(pnode, p, short, f"{group.label} {name}: {what}", folder=False)
        ident = b.obj(
            node,
            f"{p}/Identification",
            "Identification",
            "DI-style identification, from the site description",
            folder=False,
        )
        lt = (V.LocalizedText, OID.LocalizedText)
        st = (V.String, OID.String)
        for key, val, (vt, dt) in (
            ("Manufacturer", ua.LocalizedText("not given in the site description"), lt),
            ("Model", ua.LocalizedText(what), lt),
            ("SerialNumber", name, st),
            ("AssetId", name, st),
            ("DeviceClass", group.label, st),
            ("ProductInstanceUri", f"{uri}:{name}", st),
            ("ModbusUnitId", unit, (V.UInt16, OID.UInt16)),
        ):
            b.prop(ident, key, val, vt, dt)
        b.derived(
            node,
            f"{p}/DeviceHealth",
            "DeviceHealth",
            "NAMUR NE107: FAILURE (a bad input, a fault or trip, its zone in fail-safe), "
            "CHECK_FUNCTION (overridden, or maintenance mode), OFF_SPEC (an uncertain input), "
            "MAINTENANCE_REQUIRED (a stuck or drifting sensor), else NORMAL",
            ua.Variant(0, V.Int32),
            health_type,
        )
        why = ua.Variant("", V.String)
        b.derived(
            node,
            f"{p}/DeviceHealthReason",
            "DeviceHealthReason",
            "why DeviceHealth is not NORMAL",
            why,
            OID.String,
        )
        pts = [i for _, i in group.items()]
        faults = [i for a, i in group.items() if a in FAULT_ATTRS]
        out.append(Device(name, p, node, pts, faults))
    return out


def point(b: Builder, parent: ua.NodeId, p: Point) -> ua.NodeId:
    """A point's variable: NodeId its name, browse name its attribute, historized."""
    name = p.name.rsplit(".", 1)[1]
    desc = f"{p.description} [Modbus unit {p.unit_id} {p.table} {p.address}, {p.type}]"
    if p.is_bit:
        false = ua.Variant(False, V.Boolean)
        return b.var(
            parent, p.name, name, desc, false, OID.Boolean, access=READ_HISTORY, history=True
        )
    return b.analog(
        parent, p.name, name, desc, p.unit, p.min, p.max, access=READ_HISTORY, history=True
    )


def setpoint_vars(
    b: Builder, site: Site, pmap: PointMap, owner: dict[int, Device]
) -> dict[ua.NodeId, ControlLoop]:
    """Each control loop's setpoint (writable: a write is a SetSetpoint) and working
    setpoint, on the device whose point it holds; its EURange is what the command
    path accepts, so a client can see the limits before it writes."""
    out = {}
    held = held_quantities(site)
    for c in site.control_loops:
        meas = pmap[c.measurement]
        parent = owner[pmap.position(c.measurement)].node
        h = held[c.measurement]
        lo, hi, why = h.lo, h.hi, h.why
        desc = (
            f"setpoint of control loop {c.name} ({c.measurement}); operators may write it "
            f"within {lo:g}..{hi:g} {meas.unit} ({why}): a write is a SetSetpoint command"
        )
        name = f"{c.name}_setpoint"
        node = b.analog(
            parent, f"{c.name}.setpoint", name, desc, meas.unit, lo, hi, access=READ_WRITE
        )
        b.derived_nodes[f"{c.name}.setpoint"] = node
        out[node] = c
        nan = ua.Variant(math.nan, V.Double)
        desc = f"working setpoint of {c.name} (trim & respond applied)"
        b.derived(
            parent, f"{c.name}.working", f"{c.name}_working_setpoint", desc, nan, 0, meas.unit
        )
    return out


def workload_vars(b: Builder, topo: Topology, devices: list[Device]) -> None:
    """Protection's caps on each tank and row; per workload class its measured power,
    rated power, loads enabled, and references to its tanks and rows."""
    folder = node_id("Site/Workloads", b.idx)
    node_of = {d.name: d.node for d in devices}
    nan = ua.Variant(math.nan, V.Double)
    for ld in topo.loads:
        for key, name, what in (
            ("thermal_cap_kw", "ThermalCap", "thermal"),
            ("power_cap_kw", "PowerCap", "breaker and grid"),
        ):
            desc = f"{ld.name}'s cap from {what} protection (NaN: none)"
            b.derived(node_of[ld.name], f"{ld.name}.{key}", name, desc, nan, 0, "kW")
    for cls in CLASS_ORDER:
        loads = [ld for ld in topo.loads if ld.wclass == cls]
        if not loads:
            continue
        names = ", ".join(ld.name for ld in loads)
        node = b.obj(folder, f"Site/Workloads/{cls}", cls, f"{cls}: {names}", folder=False)
        b.prop(node, "RatedPower", sum(ld.rated_kw for ld in loads), V.Double, OID.Double)
        b.derived(node, f"wl.{cls}.power", "Power", f"measured {cls} power", nan, 0, "kW")
        zero = ua.Variant(0, V.UInt32)
        b.derived(node, f"wl.{cls}.enabled", "LoadsEnabled", "loads enabled", zero, OID.UInt32)
        for ld in loads:
            b.organizes(node, node_of[ld.name])
