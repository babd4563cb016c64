"""The run's configuration: the site, the database, the Modbus endpoints and the
faces, from ``thermogate run --config FILE`` or the built-in demo's defaults.

Everything is checked at load time with the file's name, the key and the reason
(``plc.config``): a ``scan_s`` the PLC heartbeat cannot survive, a unit id the
site does not use, a serial line asked for more than one request in flight.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from thermogate.plc.config import Section, load_toml
from thermogate.plc.pointmap import build_point_map
from thermogate.plc.site import Site, load_site
from thermogate.plc.transport import MAX_IN_FLIGHT

from .console import ConsoleConfig, parse_console
from .grid.openadr import VenConfig, parse_openadr
from .grid.peaks import PeakWindow, load_peaks_csv
from .modbus_io import TCP_IN_FLIGHT, Endpoint
from .opcua.security import OpcUaSecurity, demo_security, parse_opcua

DEMO_HOST = "127.0.0.1"
DEMO_PORT = 5020


@dataclass
class RunConfig:
    site: Site
    db: Path
    endpoints: dict[int, Endpoint] | Endpoint
    scan_s: float
    timeout_s: float
    built_in_plant: bool
    plant_host: str = DEMO_HOST
    plant_port: int = DEMO_PORT
    scenario: str = "normal-day"
    planner: str = "gating"  # "gating" (the gating planner) or "limits" (rated within limits)
    raw_days: float = 7.0  # raw telemetry kept this long, then only 1-minute aggregates
    agg_days: float = 400.0
    #: the controller's own regulation writes stay in the audit log this long
    #: (None: raw_days); everything people and systems did is kept for good
    audit_days: float | None = None
    forecast: bool = True  # run the promoted thermal model and retrain it on schedule
    retrain_every_h: float = 24.0
    train_days: float = 7.0
    openadr: VenConfig | None = None  # the OpenADR VEN, when configured
    peaks: tuple[PeakWindow, ...] = ()  # peak windows ([grid] peaks = "file.csv")
    opcua: OpcUaSecurity | None = None  # the OPC UA server for SCADA ([opcua]); None: none
    console: ConsoleConfig | None = None  # the technician's serial console ([console]); None: none
    #: start although points moved since the last run on this database (``mapcheck``)
    accept_new_map: bool = False


def load_run_config(path: str | None, db: str | None) -> RunConfig:
    """No path: the built-in demo against the built-in plant."""
    if path is None:
        site = load_site(None)
        return RunConfig(
            site,
            Path(db or "thermogate.db"),
            Endpoint("tcp", DEMO_HOST, DEMO_PORT),
            site.scan_interval_s,
            0.25,
            built_in_plant=True,
            opcua=demo_security(Path(db or "thermogate.db").parent),
            console=ConsoleConfig(),  # a pseudo-terminal, its path printed
        )
    root = load_toml(path)
    base = Path(path).parent
    c = root.get_section("controller")
    site = load_site(_named_file(c, "site", base))
    scan_s = c.get_float("scan_s", site.scan_interval_s, minval=0.1, maxval=60.0)
    problem = site.plc.scan_problem(scan_s)
    if problem is not None:  # the PLC would take its safe state between two scans
        raise c.error("scan_s", problem)
    db_key = c.get_str("db", "thermogate.db")  # read even when --db wins: it is not a typo
    db_file = db or str(base / db_key)
    raw_days = c.get_float("raw_days", 7.0, above=0.0, maxval=3650.0)
    agg_days = c.get_float("agg_days", 400.0, minval=raw_days, maxval=36500.0)
    audit_days = c.get_float("audit_days", raw_days, above=0.0, maxval=36500.0)
    planner = c.get_str("planner", "gating", ("gating", "limits"))
    c.check_unused()
    md = root.get_section("model", {})  # optional: the defaults run the model
    forecast = md.get_bool("enabled", True)
    retrain_every_h = md.get_float("retrain_every_h", 24.0, minval=0.5, maxval=24.0 * 90)
    train_days = md.get_float("train_days", 7.0, minval=0.125, maxval=365.0)
    md.check_unused()
    m = root.get_section("modbus")
    default = _endpoint(m)
    timeout = m.get_float("timeout_s", 0.25, minval=0.01, maxval=10.0)
    per_unit: dict[int, Endpoint] = {}
    units = {p.unit_id for p in build_point_map(site).points}
    for sec in m.get_sections("units", []):
        ids = sec.get_int_list("unit_ids", minval=1, maxval=247)
        ep = _endpoint(sec)
        for u in ids:
            if u not in units:
                raise sec.error("unit_ids", f"unit id {u} is not used by site '{site.name}'")
            per_unit[u] = ep
        sec.check_unused()
    m.check_unused()
    openadr = parse_openadr(root.get_section("openadr"), base) if root.has("openadr") else None
    peaks: tuple[PeakWindow, ...] = ()
    if root.has("grid"):
        g = root.get_section("grid")
        peaks = tuple(load_peaks_csv(_named_file(g, "peaks", base)))
        g.check_unused()
    opcua = parse_opcua(root.get_section("opcua"), base) if root.has("opcua") else None
    console = parse_console(root.get_section("console")) if root.has("console") else None
    root.check_unused()
    endpoints: dict[int, Endpoint] | Endpoint = default
    if per_unit:
        endpoints = {u: per_unit.get(u, default) for u in units}
    return RunConfig(
        site,
        Path(db_file),
        endpoints,
        scan_s,
        timeout,
        built_in_plant=False,
        raw_days=raw_days,
        agg_days=agg_days,
        audit_days=audit_days,
        forecast=forecast,
        retrain_every_h=retrain_every_h,
        train_days=train_days,
        planner=planner,
        openadr=openadr,
        peaks=peaks,
        opcua=opcua,
        console=console,
    )


def _named_file(sec: Section, key: str, base: Path) -> Path:
    """A file the configuration names (relative to it): a missing one is the key's
    mistake, said so (the file's own errors name the file)."""
    path = base / sec.get_str(key)
    if not path.is_file():
        raise sec.error(key, f"file not found: {path}")
    return path


def _endpoint(sec: Section) -> Endpoint:
    if not sec.has("device") and not sec.has("host"):
        # either is meant: a typo of 'device' was once reported as a missing 'host'.
        # The getter of the key a typo is near says it, with the typo named.
        for key in ("device", "host"):
            if sec.near(key) is not None:
                sec.get_str(key)
        raise sec.error("host", "required: 'host' (Modbus TCP) or 'device' (a serial line, RTU)")
    if sec.has("device"):
        if sec.has("in_flight") and sec.get_int("in_flight", 1, 1, MAX_IN_FLIGHT) != 1:
            raise sec.error("in_flight", "a serial line carries one request at a time")
        return Endpoint(
            "rtu",
            device=_not_blank(sec, "device", "the serial port, e.g. /dev/ttyUSB0"),
            baudrate=sec.get_int("baudrate", 19200, 1200, 921600),
            parity=sec.get_str("parity", "E", ("N", "E", "O")),
        )
    return Endpoint(
        "tcp",
        host=_not_blank(sec, "host", "the gateway's or PLC's address"),
        port=sec.get_int("port", 502, 1, 65535),
        in_flight=sec.get_int("in_flight", TCP_IN_FLIGHT, 1, MAX_IN_FLIGHT),
    )


def _not_blank(sec: Section, key: str, what: str) -> str:
    """A string key that must say something (an empty device crashed the run)."""
    val = sec.get_str(key)
    if not val.strip():
        raise sec.error(key, f"is empty: give {what}")
    return val
