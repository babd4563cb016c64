"""thermogate as an OpenADR 2.0b VEN: demand-response events become curtailments.

The protocol is ``openleadr``'s (a kept implementation, pinned): registration
with the VTN, polling, event responses and telemetry reports. This module only
decides, and hands what it decides to the one command path.

**Signals accepted** (every other signal name or type, or a malformed event,
is opted out with a reason; nothing here raises on what a VTN sends):

* ``LOAD_DISPATCH`` / ``setpoint``: the import limit itself. The value is kW,
  or, when the signal carries an ``itemBase`` of real power in W, W times its
  SI scale (``k``, ``M``, ...).
* ``LOAD_CONTROL`` / ``x-loadControlCapacity``: a share 0..1 of the site's
  capacity, here its import limit (the OpenADR meaning of this type; a value
  above 1 is refused with a hint that a kW limit goes on ``LOAD_DISPATCH``).
* ``SIMPLE`` / ``level``: 0 is normal operation (nothing to do); 1, 2 and 3
  (moderate, high, special) import at most the configured share
  (``simple_moderate``, ``simple_high``, ``simple_special``) of the site's
  import limit.

Each interval of a signal becomes one ``Instruction`` "import at most
``limit_kw`` from ``start_s`` to ``end_s``" (a limit above the site's import
limit is held at it: it binds nothing); intervals already over are dropped, one
under way starts now. Several accepted signals in one event all apply (the core
enforces the lowest active limit).

**The opt decision** is taken on the telemetry when the event arrives: the site
opts in only if every instruction is achievable and within its commitment, i.e.
the reduction it needs from the import now, ``import_kw - limit_kw``, is at
most the curtailable power measured now (mining, and training down to its
lowest cap) and at most the committed ``max_curtail_kw``; with no telemetry
yet it opts out. An accepted event is given to the command path as one
``RequestCurtailment`` per instruction by ``Principal.grid()``; if the command
path refuses one, those already given are cleared again and the event is opted out. A cancelled or
modified event clears its curtailments (by the ids the command path gave them);
a modified one is then decided afresh.

Every decision is kept in ``Ven.decisions`` and handed to ``on_decision``
(``thermogate run`` journals it in the event log): the command path audits
what it accepts and refuses, but a decision taken before anything was given
(an opt-out on the commitment, a malformed event) exists only there.

**Life cycle**: ``start()`` returns at once; the VEN registers only when
``telemetry()`` knows the site's import (an event synced before the first scan
could only be refused), retries every ``retry_s`` while the VTN does not
answer, then polls at the VTN's requested frequency (or every ``poll_s`` if
that is faster). ``stop()`` lets a poll or report under way finish.

**Telemetry** goes back to the VTN in one ``TELEMETRY_USAGE`` report offered at
``report_s`` and slower (the VTN picks the sampling): ``import_kw`` (the
site's import, real power in kW) and ``curtailable_kw`` (reported as
``upRegulationCapacityAvailable``: what the site can shed now).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from openleadr import OpenADRClient, objects

from thermogate.plc.config import Section

from ..core import Controller, Curtailment
from ..core.commands import (
    ClearCurtailment,
    Command,
    CommandResult,
    Principal,
    RequestCurtailment,
)
from .compliance import Instruction

__all__ = [
    "OPT_IN",
    "OPT_OUT",
    "Decision",
    "EventRejected",
    "Give",
    "Telemetry",
    "Ven",
    "VenConfig",
    "Verdict",
    "decide",
    "event_instructions",
    "parse_openadr",
    "translate_event",
]

log = logging.getLogger(__name__)
# openleadr forces its logger to INFO on import (a line per report sent); let it
# follow the application's logging instead (``thermogate -v`` shows it)
logging.getLogger("openleadr").setLevel(logging.NOTSET)


class _OncePer(logging.Filter):
    """Pass a message once per ``window_s``: openleadr logs two errors for every
    poll the VTN does not answer (one every 2 s, for as long as it is away);
    the alarm ``link.openadr`` says it once, and the log need not say it 1,800
    times an hour."""

    def __init__(self, window_s: float = 600.0) -> None:
        super().__init__()
        self.window_s = window_s
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = record.getMessage()
        last = self._last.get(key)
        if last is not None and record.created - last < self.window_s:
            return False
        if len(self._last) > 1000:  # messages with ids in them: keep it bounded
            self._last.clear()
        self._last[key] = record.created
        return True


logging.getLogger("openleadr").addFilter(_OncePer())

OPT_IN = "optIn"
OPT_OUT = "optOut"
#: the reason every curtailment the VEN gives carries, before the event's id:
#: how a restarted run finds which event a restored curtailment belongs to
WHY_PREFIX = "OpenADR event "
#: the report thermogate offers and its two data points
REPORT_ID = "thermogate-telemetry"
IMPORT_RID = "import_kw"
CURTAILABLE_RID = "curtailable_kw"
#: polls in a row without an answer before the VTN counts as lost (an alarm)
LINK_LOST_POLLS = 3
#: kW of reduction tolerated beyond what is curtailable (meter noise)
TOLERANCE_KW = 1e-6
#: the OpenADR SI scale codes for real power given in W
_SCALE = {"none": 1e-3, "k": 1.0, "M": 1e3, "G": 1e6, "m": 1e-6}
#: SIMPLE levels 1..3 by their OpenADR names
SIMPLE_LEVELS = ("moderate", "high", "special")
#: the longest a stop waits for a poll or report in flight
STOP_WAIT_S = 5.0
#: how often the VEN looks whether telemetry knows the site's import yet
TELEMETRY_WAIT_S = 0.2

#: gives one command through the core's command path as the grid
Give = Callable[[Command, Principal], CommandResult]
#: the site now: ``{"import_kw": ..., "curtailable_kw": ...}`` (NaN: unknown)
Telemetry = Callable[[], Mapping[str, float]]


@dataclass(frozen=True)
class VenConfig:
    """The ``[openadr]`` section: the VTN, this VEN, and the site's commitment."""

    vtn_url: str
    ven_name: str
    #: the most import reduction (kW) the site has committed to offer
    max_curtail_kw: float
    ven_id: str | None = None  # None: the VTN assigns one at registration
    #: poll at least this often (s); None: at the VTN's requested frequency
    poll_s: float | None = None
    report_s: float = 10.0  # the shortest telemetry sampling offered (whole seconds)
    retry_s: float = 30.0  # a failed registration is retried this often
    #: SIMPLE levels 1, 2, 3: import at most this share of the site's import limit
    simple_shares: tuple[float, float, float] = (0.9, 0.75, 0.5)
    cert: Path | None = None  # TLS client certificate, also signing messages ...
    key: Path | None = None  # ... and its private key
    ca_file: Path | None = None  # the CA the VTN's certificate is checked against
    vtn_fingerprint: str | None = None  # checks the VTN's message signatures

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_curtail_kw) and self.max_curtail_kw > 0.0):
            raise ValueError(f"max_curtail_kw must be above 0, got {self.max_curtail_kw}")
        if self.poll_s is not None and not self.poll_s > 0.0:
            raise ValueError(f"poll_s must be above 0, got {self.poll_s}")
        if not (self.report_s >= 1.0 and self.retry_s > 0.0):
            raise ValueError("report_s must be at least 1 s and retry_s above 0")
        if len(self.simple_shares) != 3 or not all(0.0 <= x <= 1.0 for x in self.simple_shares):
            raise ValueError(f"simple_shares must be three shares 0..1, got {self.simple_shares}")
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key come together")
        if self.cert is not None and self.ca_file is None:
            raise ValueError("a cert needs the ca_file the VTN's certificate is checked against")


def parse_openadr(sec: Section, base: Path) -> VenConfig:
    """The ``[openadr]`` section of a run configuration (paths relative to ``base``)."""
    url = sec.get_str("vtn_url")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise sec.error("vtn_url", f"'{url}' is not an http:// or https:// URL with a host")
    name = sec.get_str("ven_name")
    if not name.strip():
        raise sec.error("ven_name", "must not be empty")
    ven_id = sec.get_str("ven_id", None)
    max_kw = sec.get_float("max_curtail_kw", above=0.0, maxval=10_000_000.0)
    poll_s = sec.get_float("poll_s", None, minval=1.0, maxval=86_400.0)
    report_s = sec.get_float("report_s", 10.0, minval=1.0, maxval=3600.0)
    if report_s != int(report_s):
        raise sec.error("report_s", f"{report_s:g} must be whole seconds")
    retry_s = sec.get_float("retry_s", 30.0, minval=1.0, maxval=86_400.0)
    shares: list[float] = []
    for i, level in enumerate(SIMPLE_LEVELS):
        key = f"simple_{level}"
        x = sec.get_float(key, VenConfig.simple_shares[i], minval=0.0, maxval=1.0)
        if shares and x > shares[-1]:
            prev = f"simple_{SIMPLE_LEVELS[i - 1]}"
            raise sec.error(
                key, f"{x:g} is above {prev} ({shares[-1]:g}): a higher level sheds more"
            )
        shares.append(x)
    files: dict[str, Path | None] = {}
    for key in ("cert", "key", "ca_file"):
        given = sec.get_str(key, None)
        files[key] = None
        if given is not None:
            path = base / given
            if not path.is_file():
                raise sec.error(key, f"file not found: {path}")
            files[key] = path
    if (files["cert"] is None) != (files["key"] is None):
        missing = "key" if files["key"] is None else "cert"
        raise sec.error(missing, "cert and key come together (TLS and message signing)")
    if files["cert"] is not None and files["ca_file"] is None:
        raise sec.error(
            "ca_file", "required with cert: the VTN's certificate is checked against it"
        )
    fingerprint = sec.get_str("vtn_fingerprint", None)
    sec.check_unused()
    return VenConfig(
        vtn_url=url,
        ven_name=name,
        max_curtail_kw=max_kw,
        ven_id=ven_id,
        poll_s=poll_s,
        report_s=report_s,
        retry_s=retry_s,
        simple_shares=(shares[0], shares[1], shares[2]),
        cert=files["cert"],
        key=files["key"],
        ca_file=files["ca_file"],
        vtn_fingerprint=fingerprint,
    )


# -- the pure translation ------------------------------------------------------
class EventRejected(ValueError):
    """An event thermogate does not take: its message is the opt-out reason."""


@dataclass(frozen=True)
class Verdict:
    """Opt in or out of one event, why, and what it instructs."""

    opt_in: bool
    reason: str
    instructions: tuple[Instruction, ...] = ()

    @property
    def opt(self) -> str:
        return OPT_IN if self.opt_in else OPT_OUT


def event_instructions(
    event: Mapping[str, Any], cfg: VenConfig, import_limit_kw: float, now: float
) -> tuple[Instruction, ...]:
    """The instructions of an openleadr event dict, in time order; raises
    ``EventRejected`` naming what is not understood."""
    if not isinstance(event, Mapping):
        raise EventRejected("malformed event: not a table")
    signals = event.get("event_signals")
    if isinstance(signals, Mapping):  # openleadr nests them once in some messages
        signals = signals.get("event_signals")
    if not isinstance(signals, Sequence) or isinstance(signals, str) or not signals:
        raise EventRejected("malformed event: no event signals")
    active = event.get("active_period")
    start0 = _timestamp(active.get("dtstart")) if isinstance(active, Mapping) else None
    out: list[Instruction] = []
    for sig in signals:
        if not isinstance(sig, Mapping):
            raise EventRejected("malformed event: a signal is not a table")
        name, kind = sig.get("signal_name"), sig.get("signal_type")
        to_kw = _limit_rule(name, kind, sig.get("measurement"), cfg, import_limit_kw)
        intervals = sig.get("intervals")
        if not isinstance(intervals, Sequence) or isinstance(intervals, str) or not intervals:
            raise EventRejected(f"malformed signal {name}/{kind}: no intervals")
        t = start0
        for k, iv in enumerate(intervals):
            if not isinstance(iv, Mapping):
                raise EventRejected(f"malformed signal {name}/{kind}: interval {k} is not a table")
            dtstart = iv.get("dtstart")
            begin = _timestamp(dtstart) if dtstart is not None else t
            dur = iv.get("duration")
            if begin is None or not isinstance(dur, timedelta):
                raise EventRejected(
                    f"malformed signal {name}/{kind}: interval {k} has no start or duration"
                )
            if dur.total_seconds() <= 0.0:
                raise EventRejected(
                    f"signal {name}/{kind}: interval {k} is open-ended (duration "
                    f"{dur.total_seconds():g} s); thermogate commits to a bounded window only"
                )
            end = begin + dur.total_seconds()
            t = end
            value = iv.get("signal_payload")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise EventRejected(
                    f"malformed signal {name}/{kind}: interval {k} has no numeric payload"
                )
            limit = to_kw(float(value))
            if limit is None or end <= now:  # normal operation, or already over
                continue
            out.append(Instruction(max(begin, now), end, min(limit, import_limit_kw)))
    return tuple(sorted(out, key=lambda i: (i.start_s, i.end_s)))


def _limit_rule(
    name: object, kind: object, measurement: object, cfg: VenConfig, import_limit_kw: float
) -> Callable[[float], float | None]:
    """How a payload of this signal becomes an import limit in kW (None: none)."""

    def finite(x: float, what: str) -> float:
        if not math.isfinite(x):
            raise EventRejected(f"signal {name}/{kind}: {what} {x} is not a finite number")
        return x

    if name == "LOAD_DISPATCH" and kind == "setpoint":
        factor = _kw_factor(measurement)

        def setpoint(x: float) -> float:
            kw = finite(x, "setpoint") * factor
            if kw < 0.0:
                raise EventRejected(f"signal LOAD_DISPATCH/setpoint: import limit {kw:g} kW < 0")
            return kw

        return setpoint
    if name == "LOAD_CONTROL" and kind == "x-loadControlCapacity":

        def capacity(x: float) -> float:
            if not 0.0 <= finite(x, "capacity share") <= 1.0:
                raise EventRejected(
                    f"signal LOAD_CONTROL/x-loadControlCapacity: {x:g} is not a share 0..1 of "
                    "capacity (an import limit in kW goes on LOAD_DISPATCH/setpoint)"
                )
            return x * import_limit_kw

        return capacity
    if name in ("SIMPLE", "simple") and kind == "level":

        def level(x: float) -> float | None:
            if x not in (0.0, 1.0, 2.0, 3.0):
                raise EventRejected(f"signal SIMPLE/level: level {x:g} is not 0, 1, 2 or 3")
            return None if x == 0.0 else cfg.simple_shares[int(x) - 1] * import_limit_kw

        return level
    raise EventRejected(
        f"signal {name}/{kind} is not accepted (thermogate takes LOAD_DISPATCH/setpoint, "
        "LOAD_CONTROL/x-loadControlCapacity and SIMPLE/level)"
    )


def _kw_factor(measurement: object) -> float:
    """kW per unit of a LOAD_DISPATCH setpoint: kW without an itemBase."""
    if measurement is None:
        return 1.0
    if not isinstance(measurement, Mapping):
        raise EventRejected("signal LOAD_DISPATCH/setpoint: malformed itemBase")
    unit, scale = measurement.get("unit"), measurement.get("scale") or "none"
    if measurement.get("name") != "powerReal" or unit != "W" or scale not in _SCALE:
        raise EventRejected(
            f"signal LOAD_DISPATCH/setpoint: itemBase {measurement.get('name')} in "
            f"{scale} {unit} is not real power (powerReal in W, kW or MW)"
        )
    return _SCALE[str(scale)]


def _timestamp(dt: object) -> float | None:
    if not isinstance(dt, datetime):
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def decide(
    instructions: Sequence[Instruction], telemetry: Mapping[str, float], cfg: VenConfig
) -> Verdict:
    """Opt in only if every instruction is achievable from today's import with
    the power curtailable now, and within the commitment."""
    import_kw = _finite(telemetry.get("import_kw"))
    spare_kw = _finite(telemetry.get("curtailable_kw"))
    if not instructions:
        return Verdict(True, "nothing to curtail (normal operation or already over)")
    if import_kw is None or spare_kw is None:
        return Verdict(False, "no telemetry yet (site import or curtailable power unknown)")
    for ins in instructions:
        need = import_kw - ins.limit_kw
        if need > cfg.max_curtail_kw + TOLERANCE_KW:
            return Verdict(
                False,
                f"import <= {ins.limit_kw:g} kW needs {need:g} kW of reduction from "
                f"{import_kw:g} kW, beyond the commitment of {cfg.max_curtail_kw:g} kW",
            )
        if need > spare_kw + TOLERANCE_KW:
            return Verdict(
                False,
                f"import <= {ins.limit_kw:g} kW needs {need:g} kW of reduction from "
                f"{import_kw:g} kW; only {spare_kw:g} kW is curtailable "
                "(mining, training above its floor)",
            )
    worst = min(i.limit_kw for i in instructions)
    return Verdict(
        True,
        f"achievable: import <= {worst:g} kW from {import_kw:g} kW now, {spare_kw:g} kW "
        f"curtailable, commitment {cfg.max_curtail_kw:g} kW",
        tuple(instructions),
    )


def translate_event(
    event: Mapping[str, Any],
    telemetry: Mapping[str, float],
    cfg: VenConfig,
    *,
    import_limit_kw: float,
    now: float,
) -> Verdict:
    """An openleadr event dict -> opt in or out, why, and its instructions. Never raises."""
    try:
        instructions = event_instructions(event, cfg, import_limit_kw, now)
    except EventRejected as exc:
        return Verdict(False, str(exc))
    except Exception as exc:  # a VTN's message must never stop the site
        return Verdict(False, f"malformed event ({type(exc).__name__}: {exc})")
    return decide(instructions, telemetry, cfg)


def _finite(x: object) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        return None
    return float(x)


# -- the VEN --------------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    """One event decided: what the VEN answered the VTN and did on the command path."""

    t: float
    event_id: str
    modification: int
    status: str  # the event's status as received (far, near, active, cancelled, ...)
    opt: str  # optIn | optOut
    reason: str
    instructions: tuple[Instruction, ...] = ()
    curtailments: tuple[int, ...] = ()  # ids given (or, on a cancel, cleared)

    @property
    def text(self) -> str:
        ids = ", ".join(f"#{i}" for i in self.curtailments)
        what = f" (curtailments {ids})" if ids else ""
        return f"OpenADR event {self.event_id} [{self.status}]: {self.opt}{what}: {self.reason}"


class _Client(OpenADRClient):
    """openleadr's client, polling at least every ``poll_s`` (the VTN's requested
    frequency when that is faster)."""

    poll_frequency: timedelta | None  # openleadr's: set at registration

    def __init__(
        self,
        *args: Any,
        poll_s: float | None,
        on_poll: Callable[[str | None], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._poll_cap = None if poll_s is None else timedelta(seconds=poll_s)
        self._on_poll = on_poll

    async def poll(self) -> tuple[str | None, dict[str, Any]]:
        """openleadr's poll, its outcome told to ``on_poll``: None when the VTN
        answered, else why not (openleadr only logs it, and polls on)."""
        try:
            rtype, payload = await super().poll()
        except Exception as exc:  # an empty body unpacks as None in openleadr
            self._on_poll(f"unreadable answer ({type(exc).__name__}: {exc})")
            return None, {}
        response = payload.get("response") if isinstance(payload, dict) else None
        code = response.get("response_code") if isinstance(response, dict) else 200
        if rtype is None:
            self._on_poll("no answer (connection refused, timed out or not OpenADR)")
        elif code != 200:
            desc = response.get("response_description", "") if isinstance(response, dict) else ""
            self._on_poll(f"answered {code} {desc}".rstrip())
        else:
            self._on_poll(None)
        return rtype, payload

    async def create_party_registration(self, *args: Any, **kwargs: Any) -> Any:
        out = await super().create_party_registration(*args, **kwargs)
        if self._poll_cap is not None and isinstance(self.poll_frequency, timedelta):
            self.poll_frequency = min(self.poll_frequency, self._poll_cap)
        return out


@dataclass
class _Given:
    modification: int
    ids: list[int] = field(default_factory=list)
    end: float = math.inf


def site_telemetry(ctrl: Controller) -> dict[str, float]:
    """What the VEN reports and decides on, from the controller's last validated
    values: the site's import and what it can shed now (a bad meter counts
    nothing; NaN: nothing known yet).

    Mining sheds whole; training only down to what its loads draw at their
    lowest (``Load.floor_kw``: a rack row busy at its lowest per-GPU cap, a GPU
    tank at idle). Counted whole, training's 620 kW was offered
    where 310 could go, and the VEN opted in to limits it then missed."""
    v = ctrl.values
    shed = [float(v[ld.power]) - ld.floor_kw for ld in ctrl.topo.loads if ld.wclass != "inference"]
    known = [max(0.0, x) for x in shed if math.isfinite(x)]
    return {
        "import_kw": float(v[ctrl.topo.site_meter]),
        "curtailable_kw": sum(known) if known else math.nan,
    }


class Ven:
    """The VEN: registers with the VTN, decides each event, gives what it accepts
    to the command path with ``give(cmd, Principal.grid())``, and reports
    ``telemetry()`` back. ``import_limit_kw`` is the site's; ``clock`` is the
    command path's time (epoch seconds)."""

    def __init__(
        self,
        cfg: VenConfig,
        give: Give,
        telemetry: Telemetry,
        *,
        import_limit_kw: float,
        clock: Callable[[], float] = time.time,
        on_decision: Callable[[Decision], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.give = give
        self.telemetry = telemetry
        self.import_limit_kw = import_limit_kw
        self.clock = clock
        self.on_decision = on_decision
        self.decisions: list[Decision] = []
        self._given: dict[str, _Given] = {}
        self._client: Any = None
        self._task: asyncio.Task[None] | None = None
        # the link to the VTN: failed registration attempts or polls in a row,
        # since when, and the last reason
        self._failures = 0
        self._failing_since = math.nan
        self._failure = ""

    # -- life cycle ---------------------------------------------------------
    @property
    def registered(self) -> bool:
        return self._client is not None and self._client.registration_id is not None

    @property
    def ven_id(self) -> str | None:
        return None if self._client is None else self._client.ven_id

    @property
    def active(self) -> dict[str, tuple[int, ...]]:
        """Event id -> the curtailment ids it gave, for events not over yet."""
        return {e: tuple(g.ids) for e, g in self._given.items()}

    def adopt(self, curtailments: Sequence[Curtailment], now: float) -> dict[str, tuple[int, ...]]:
        """Take back the curtailments a previous run's VEN gave (restored with the
        controller's state), by the event named in their reason. A VTN sends its
        events again to a VEN that registers anew: the event then replaces them and
        its cancel clears them, where without this it added a second set and its
        cancel left the first in force. Returns event id -> the ids adopted."""
        for c in curtailments:
            if c.who != "grid" or c.where != "grid" or not c.why.startswith(WHY_PREFIX):
                continue
            if c.end <= now:
                continue
            eid = c.why[len(WHY_PREFIX) :]
            given = self._given.setdefault(eid, _Given(-1, end=c.end))
            given.ids.append(c.id)
            given.end = max(given.end, c.end)
        return self.active

    def link_down(self) -> str | None:
        """Why grid events cannot reach the site now, or None: registration
        failed (at least once, still retrying) or the last ``LINK_LOST_POLLS``
        polls got no answer. The run makes it the alarm ``link.openadr``: a VEN
        that lost its VTN only logged it, and an event sent meanwhile was missed."""
        if self._task is None or self._failures == 0:
            return None
        since = datetime.fromtimestamp(self._failing_since, UTC).strftime("%H:%M:%S UTC")
        url = self.cfg.vtn_url
        if not self.registered:
            return (
                f"OpenADR: not registered with VTN {url} since {since} ({self._failures} "
                f"attempts, retrying every {self.cfg.retry_s:g} s): "
                "grid events cannot reach the site"
            )
        if self._failures >= LINK_LOST_POLLS:
            return (
                f"OpenADR: VTN {url} not answering since {since} ({self._failures} polls: "
                f"{self._failure}): grid events cannot reach the site"
            )
        return None

    def _link(self, failure: str | None) -> None:
        """One exchange with the VTN: failed (why) or answered (None)."""
        if failure is None:
            self._failures, self._failing_since, self._failure = 0, math.nan, ""
            return
        if self._failures == 0:
            self._failing_since = self.clock()
        self._failures += 1
        self._failure = failure

    async def start(self) -> None:
        """Start in the background: once ``telemetry()`` knows the site's import
        and curtailable power (an event decided before could only be refused), register with the
        VTN, retrying every ``retry_s`` until it answers; then poll and report."""
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def wait_registered(self, timeout_s: float) -> bool:
        """Whether the VEN is registered within ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self.registered and loop.time() < deadline:
            await asyncio.sleep(0.05)
        return self.registered

    async def stop(self) -> None:
        """Stop polling and reporting (a poll or report in flight may finish)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        client, self._client = self._client, None
        if client is not None:
            await _shut(client)

    async def _run(self) -> None:
        while not self._telemetry_known():
            await asyncio.sleep(TELEMETRY_WAIT_S)
        while not await self._attempt():
            self._link("registration failed")
            log.warning(
                "OpenADR: no registration with %s; retrying in %g s",
                self.cfg.vtn_url,
                self.cfg.retry_s,
            )
            await asyncio.sleep(self.cfg.retry_s)
        self._link(None)
        log.info("OpenADR: registered with %s as %s", self.cfg.vtn_url, self.ven_id)

    def _telemetry_known(self) -> bool:
        """Both the import and the curtailable power: an event decided without
        either could only be refused (the first scans may read the meter before
        every load's is valid)."""
        try:
            now = self.telemetry()
        except Exception:
            return False
        return all(_finite(now.get(k)) is not None for k in ("import_kw", "curtailable_kw"))

    async def _attempt(self) -> bool:
        c = self.cfg
        client = _Client(
            ven_name=c.ven_name,
            vtn_url=c.vtn_url,
            ven_id=c.ven_id,
            cert=None if c.cert is None else str(c.cert),
            key=None if c.key is None else str(c.key),
            ca_file=None if c.ca_file is None else str(c.ca_file),
            vtn_fingerprint=c.vtn_fingerprint,
            disable_signature=c.cert is None,
            show_fingerprint=False,
            allow_jitter=False,
            poll_s=c.poll_s,
            on_poll=self._link,
        )
        client.add_handler("on_event", self._on_event)
        client.add_handler("on_update_event", self._on_event)
        sampling = timedelta(seconds=c.report_s)
        for rid, report_type, reading_type, key in (
            (IMPORT_RID, "usage", "Direct Read", "import_kw"),
            (CURTAILABLE_RID, "upRegulationCapacityAvailable", "Summed", "curtailable_kw"),
        ):
            client.add_report(
                callback=self._reading(key),
                resource_id=c.ven_name,
                measurement="real_power",
                unit="W",
                scale="k",
                report_specifier_id=REPORT_ID,
                r_id=rid,
                report_type=report_type,
                reading_type=reading_type,
                report_duration=sampling,
                sampling_rate=_sampling_rate(sampling),
            )
        self._client = client
        try:
            await client.run()
        except asyncio.CancelledError:
            self._client = None
            await _shut(client)
            raise
        except Exception as exc:  # a VTN that answers nonsense is a failed attempt
            log.warning("OpenADR: registration with %s failed: %s", c.vtn_url, exc)
        if client.registration_id is None:
            self._client = None
            await _shut(client)
            return False
        return True

    # -- reports ------------------------------------------------------------
    def _reading(self, key: str) -> Callable[[], list[tuple[datetime, float]]]:
        def read() -> list[tuple[datetime, float]]:
            try:
                value = _finite(self.telemetry().get(key))
            except Exception:
                log.exception("OpenADR: telemetry failed")
                value = None
            if value is None:  # unknown is not reported as a number
                return []
            return [(datetime.fromtimestamp(self.clock(), UTC), round(value, 3))]

        return read

    # -- events -------------------------------------------------------------
    async def _on_event(self, event: dict[str, Any]) -> str:
        try:
            return self.handle_event(event)
        except Exception as exc:  # never let an event stop the VEN
            log.exception("OpenADR: event handling failed")
            eid = _event_id(event)
            self._record(eid, -1, "?", OPT_OUT, f"internal error ({type(exc).__name__}: {exc})")
            return OPT_OUT

    def handle_event(self, event: Mapping[str, Any]) -> str:
        """Decide one event (new, modified or cancelled), act on the command path,
        record the decision; returns ``optIn`` or ``optOut`` for the VTN."""
        now = self.clock()
        self._forget_ended(now)
        raw = event.get("event_descriptor") if isinstance(event, Mapping) else None
        desc: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        eid = _event_id(event)
        mod = desc.get("modification_number")
        mod = mod if isinstance(mod, int) else -1
        status = str(desc.get("event_status", "?"))
        note = ""
        had = self._given.pop(eid, None)
        if had is not None:  # cancelled or modified: what it gave goes first
            ids = ", ".join(f"#{i}" for i in had.ids)
            cleared = self._clear(eid, had)
            note = f"curtailments {ids} cleared; " if cleared else ""
        else:
            cleared = ()

        def record(
            opt: str, reason: str, ins: tuple[Instruction, ...] = (), ids: Sequence[int] = ()
        ) -> str:
            self._record(eid, mod, status, opt, note + reason, ins, tuple(ids))
            return opt

        if status in ("cancelled", "completed"):  # the answer stands, the curtailments go
            # only an opt-in gives curtailments: one adopted from a previous run was
            return record(
                self._last_opt(eid, OPT_IN if had else OPT_OUT), f"event {status}", ids=cleared
            )
        if desc.get("test_event") not in (None, False, "false", "False"):
            return record(OPT_IN, "a test event: answered, nothing curtailed")
        verdict = translate_event(
            event, self.telemetry(), self.cfg, import_limit_kw=self.import_limit_kw, now=now
        )
        if not verdict.opt_in or not verdict.instructions:
            return record(verdict.opt, verdict.reason, verdict.instructions)
        given = _Given(mod, end=max(i.end_s for i in verdict.instructions))
        for ins in verdict.instructions:
            cmd = RequestCurtailment(
                limit_kw=ins.limit_kw,
                duration_s=ins.end_s - ins.start_s,
                start=ins.start_s,
                why=f"{WHY_PREFIX}{eid}",
            )
            res = self.give(cmd, Principal.grid())
            cid = _curtailment_id(res) if res.accepted else None
            if cid is None:
                self._clear(eid, given)
                why = res.message if not res.accepted else "accepted without a curtailment id"
                return record(OPT_OUT, f"the command path: {why}", verdict.instructions)
            given.ids.append(cid)
        self._given[eid] = given
        return record(OPT_IN, verdict.reason, verdict.instructions, given.ids)

    def _clear(self, eid: str, given: _Given) -> tuple[int, ...]:
        """Clear an event's curtailments; ones already over are gone already."""
        cleared = []
        for cid in given.ids:
            res = self.give(ClearCurtailment(cid, why=f"{WHY_PREFIX}{eid}"), Principal.grid())
            if res.accepted:
                cleared.append(cid)
        given.ids.clear()
        return tuple(cleared)

    def _last_opt(self, eid: str, unknown: str) -> str:
        return next((d.opt for d in reversed(self.decisions) if d.event_id == eid), unknown)

    def _forget_ended(self, now: float) -> None:
        for eid in [e for e, g in self._given.items() if g.end <= now]:
            del self._given[eid]

    def _record(
        self,
        eid: str,
        mod: int,
        status: str,
        opt: str,
        reason: str,
        instructions: tuple[Instruction, ...] = (),
        curtailments: tuple[int, ...] = (),
    ) -> None:
        d = Decision(self.clock(), eid, mod, status, opt, reason, instructions, curtailments)
        self.decisions.append(d)
        log.info("%s", d.text)
        if self.on_decision is not None:
            try:
                self.on_decision(d)
            except Exception:
                log.exception("OpenADR: recording a decision failed")


async def _shut(client: Any) -> None:
    """Stop an openleadr client: no new polls or reports, the ones under way
    finish (up to ``STOP_WAIT_S``), then its scheduler and HTTP session close."""
    sched = client.scheduler
    if sched.running:
        sched.pause()
        # apscheduler keeps the jobs under way privately; without them, none is awaited
        lookup = getattr(sched, "_lookup_executor", None)
        executor = lookup("default") if lookup is not None else None
        pending = [f for f in getattr(executor, "_pending_futures", ()) if not f.done()]
        if pending:
            await asyncio.wait(pending, timeout=STOP_WAIT_S)
        sched.shutdown(wait=False)
    if client.report_queue_task is not None:
        client.report_queue_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await client.report_queue_task
    session = client.client_session
    if session is not None and not session.closed:
        await session.close()


def _sampling_rate(shortest: timedelta) -> Any:
    return objects.SamplingRate(
        min_period=shortest, max_period=max(shortest, timedelta(hours=1)), on_change=False
    )


def _event_id(event: object) -> str:
    desc = event.get("event_descriptor") if isinstance(event, Mapping) else None
    eid = desc.get("event_id") if isinstance(desc, Mapping) else None
    return str(eid) if eid is not None else "?"


def _curtailment_id(res: CommandResult) -> int | None:
    """The id the command path gave a curtailment: its audit target ``curtailment:<id>``."""
    kind, _, ident = res.audit.target.partition(":")
    return int(ident) if kind == "curtailment" and ident.isdigit() else None
