"""What happens to the plant during a scenario: grid signals and injected faults.

Both are records that check themselves (``FieldError`` names the field) and
know when they are active (``at_s <= t < end_s``). Fault targets are parsed to
``(category, name)`` here and checked against the site by the plant, so a
scenario file can be written before the site exists.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, NamedTuple

from .fields import FieldError, require
from .series import PRICE_ABS_MAX

__all__ = [
    "FAULT_CATEGORIES",
    "FAULT_KINDS",
    "FREQUENCY_RANGE_HZ",
    "GRID_EVENT_KINDS",
    "GRID_EVENT_PARAMS",
    "MODBUS_EXCEPTION_CODES",
    "NAME_RE",
    "FaultCategory",
    "FaultSpec",
    "FaultTarget",
    "GridEvent",
    "GridEventKind",
]

GridEventKind = Literal["curtail", "frequency", "price", "peak"]
#: What demand-response programs actually send: an import limit (curtail), a
#: grid-frequency excursion the site may respond to, and a price signal; and
#: a window the site itself expects a coincident system peak in (peak: cut the
#: import by ``reduce_kw``, 4CP-style).
#: No "outage": losing the grid is a power-system failure the controller cannot
#: act on (UPS/generator territory), not a signal it gets to respond to.
GRID_EVENT_KINDS: tuple[str, ...] = ("curtail", "frequency", "price", "peak")
FREQUENCY_RANGE_HZ = (45.0, 65.0)

GRID_EVENT_PARAMS: dict[str, tuple[str, ...]] = {
    "curtail": ("limit_kw", "limit_fraction"),
    "frequency": ("frequency_hz",),
    "price": ("price_per_mwh",),
    "peak": ("reduce_kw",),
}


@dataclass(frozen=True)
class GridEvent:
    """A grid signal active for ``at_s <= t < at_s + duration_s``.

    ``curtail``: import must stay at or below ``limit_kw``, or
    ``limit_fraction`` x the site's import limit (exactly one is set; the
    fraction keeps a scenario independent of the site).
    ``frequency``: grid frequency is ``frequency_hz`` (e.g. 49.8) meanwhile.
    ``price``: the energy price is ``price_per_mwh`` meanwhile (a critical-peak
    or real-time price signal overriding the market series).
    """

    at_s: float
    kind: GridEventKind
    duration_s: float
    limit_kw: float | None = None
    limit_fraction: float | None = None
    frequency_hz: float | None = None
    price_per_mwh: float | None = None
    reduce_kw: float | None = None

    def __post_init__(self) -> None:
        require(math.isfinite(self.at_s) and self.at_s >= 0, "at_s", "must be >= 0 s")
        require(
            self.kind in GRID_EVENT_KINDS,
            "kind",
            f"{self.kind!r} is not one of {', '.join(GRID_EVENT_KINDS)}",
        )
        require(
            math.isfinite(self.duration_s) and self.duration_s > 0,
            "duration_s",
            f"{self.duration_s:g} must be a positive number of seconds",
        )
        allowed = GRID_EVENT_PARAMS[self.kind]
        for name in ("limit_kw", "limit_fraction", "frequency_hz", "price_per_mwh", "reduce_kw"):
            v = getattr(self, name)
            if v is None:
                continue
            require(name in allowed, name, f"not a parameter of a {self.kind} event")
            require(math.isfinite(v), name, "must be finite")
        if self.kind == "curtail":
            require(
                (self.limit_kw is None) != (self.limit_fraction is None),
                "limit_kw",
                "a curtail event needs exactly one of limit_kw or limit_fraction",
            )
            if self.limit_kw is not None:
                require(self.limit_kw >= 0, "limit_kw", f"{self.limit_kw:g} kW must be >= 0")
            if self.limit_fraction is not None:
                require(
                    0.0 <= self.limit_fraction <= 1.0,
                    "limit_fraction",
                    f"{self.limit_fraction:g} must be 0..1 (of the site's import limit)",
                )
        elif self.kind == "frequency":
            lo, hi = FREQUENCY_RANGE_HZ
            require(self.frequency_hz is not None, "frequency_hz", "required for this kind")
            assert self.frequency_hz is not None
            require(
                lo <= self.frequency_hz <= hi,
                "frequency_hz",
                f"{self.frequency_hz:g} Hz is outside {lo:g}..{hi:g} Hz",
            )
        elif self.kind == "peak":
            require(self.reduce_kw is not None, "reduce_kw", "required for this kind")
            assert self.reduce_kw is not None
            require(self.reduce_kw > 0, "reduce_kw", f"{self.reduce_kw:g} kW must be above 0")
        else:
            require(self.price_per_mwh is not None, "price_per_mwh", "required for this kind")
            assert self.price_per_mwh is not None
            require(
                abs(self.price_per_mwh) <= PRICE_ABS_MAX,
                "price_per_mwh",
                f"beyond ±{PRICE_ABS_MAX:g}",
            )

    @property
    def end_s(self) -> float:
        return self.at_s + self.duration_s

    def active(self, t_seconds: float) -> bool:
        return self.at_s <= t_seconds < self.end_s

    def import_limit_kw(self, site_import_limit_kw: float) -> float:
        """The kW limit of a curtail event for a site with this import limit."""
        if self.kind != "curtail":
            raise ValueError(f"a {self.kind} event has no import limit")
        if self.limit_kw is not None:
            return self.limit_kw
        assert self.limit_fraction is not None
        return self.limit_fraction * site_import_limit_kw


FaultCategory = Literal["pump", "fan", "sensor", "device", "leak"]


class _Param(NamedTuple):
    required: bool
    integer: bool = False
    choices: tuple[int, ...] = ()
    positive: bool = False
    nonzero: bool = False
    hi: float = math.inf


#: Modbus exception codes a real device can return (spec V1.1b3 §7).
MODBUS_EXCEPTION_CODES = (1, 2, 3, 4, 5, 6, 8, 10, 11)

# category -> kind -> parameter -> spec. Only parameters the plant acts on
# (hil/sensors.py, hil/plant.py, hil/modbus_server.py) are accepted, so none
# is silently ignored. While the fault is active:
#   pump/fan trip: the VFD (a pump, or a dry cooler's fans) trips and stops.
#   sensor stuck: the reading freezes at its value when the fault starts;
#     drift: it walks from truth at rate_per_h (sensor units per hour);
#     spike: random single-sample spikes of magnitude, probability p per sample;
#     dropout: the reading is intermittently lost (NaN), probability p;
#     nan: the reading is NaN.
#   device timeout: the Modbus unit does not answer; exception: it answers
#     every request with Modbus exception `code`.
#   leak: coolant leaks at the named tank, loop or CDU.
_FAULT_PARAMS: dict[str, dict[str, dict[str, _Param]]] = {
    "pump": {"trip": {}},
    "fan": {"trip": {}},
    "sensor": {
        "stuck": {},
        "drift": {"rate_per_h": _Param(True, nonzero=True)},
        "spike": {"magnitude": _Param(True, nonzero=True), "p": _Param(False, positive=True, hi=1)},
        "dropout": {"p": _Param(False, positive=True, hi=1)},
        "nan": {},
    },
    "device": {
        "timeout": {},
        "exception": {"code": _Param(True, integer=True, choices=MODBUS_EXCEPTION_CODES)},
    },
    "leak": {"leak": {}},
}
FAULT_CATEGORIES: tuple[str, ...] = tuple(_FAULT_PARAMS)
#: The fault kinds valid for each target category.
FAULT_KINDS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {cat: tuple(kinds) for cat, kinds in _FAULT_PARAMS.items()}
)
#: A fault target's or an initial value's name: letters, digits, _ . -
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


class FaultTarget(NamedTuple):
    """A fault target ``category:name``, e.g. ``("pump", "loop1.pump_a")``."""

    category: str
    name: str

    @classmethod
    def parse(cls, text: str) -> FaultTarget:
        """Parse ``"pump:loop1.pump_a"``; raises ValueError explaining the form."""
        cat, sep, name = text.partition(":")
        cat, name = cat.strip(), name.strip()
        if not sep or not cat or not name:
            raise ValueError(
                f"{text!r} is not 'category:name' (e.g. 'pump:loop1.pump_a'); "
                f"categories: {', '.join(FAULT_CATEGORIES)}"
            )
        if cat not in _FAULT_PARAMS:
            raise ValueError(
                f"unknown category {cat!r} in {text!r}; categories: {', '.join(FAULT_CATEGORIES)}"
            )
        if not NAME_RE.match(name):
            raise ValueError(f"{name!r} is not a valid name (letters, digits, _ . -)")
        return cls(cat, name)

    def __str__(self) -> str:
        return f"{self.category}:{self.name}"


@dataclass(frozen=True)
class FaultSpec:
    """A fault injected at ``at_s`` for ``duration_s`` (``None`` = permanent).

    ``target`` accepts a ``"category:name"`` string and is stored parsed.
    ``params`` holds the kind's parameters (see ``_FAULT_PARAMS``: drift
    ``rate_per_h``; spike ``magnitude`` and ``p``; dropout ``p``; exception
    ``code``; the others none); parameters left out take the plant's
    defaults. Whether
    the target exists is the plant's check against its site.
    """

    at_s: float
    target: FaultTarget
    kind: str
    duration_s: float | None = None
    params: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        tgt = self.target
        if isinstance(tgt, str):
            try:
                tgt = FaultTarget.parse(tgt)
            except ValueError as exc:
                raise FieldError("target", str(exc)) from None
        elif not isinstance(tgt, FaultTarget):
            tgt = FaultTarget.parse(f"{tgt[0]}:{tgt[1]}")
        object.__setattr__(self, "target", tgt)
        require(math.isfinite(self.at_s) and self.at_s >= 0, "at_s", "must be >= 0 s")
        kinds = _FAULT_PARAMS[tgt.category]
        require(
            self.kind in kinds,
            "kind",
            f"{self.kind!r} is not a {tgt.category} fault; {tgt.category} faults: "
            f"{', '.join(kinds)}",
        )
        if self.duration_s is not None:
            require(
                math.isfinite(self.duration_s) and self.duration_s > 0,
                "duration_s",
                f"{self.duration_s:g} must be a positive number of seconds (omit it: permanent)",
            )
        spec = kinds[self.kind]
        params = dict(self.params)
        for name, v in params.items():
            key = f"params.{name}"
            require(
                name in spec,
                key,
                f"not a parameter of a {tgt.category} {self.kind} fault; "
                f"parameters: {', '.join(spec) or 'none'}",
            )
            p = spec[name]
            require(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v),
                key,
                f"expected a finite number, got {v!r}",
            )
            if p.integer:
                require(float(v).is_integer(), key, f"{v!r} must be an integer")
                params[name] = v = int(v)
            if p.choices:
                require(v in p.choices, key, f"{v} is not one of {p.choices}")
            if p.positive:
                require(v > 0, key, f"{v:g} must be > 0")
            require(v <= p.hi, key, f"{v:g} must be <= {p.hi:g}")
            if p.nonzero:
                require(v != 0, key, "must not be 0")
        for name, p in spec.items():
            require(not p.required or name in params, f"params.{name}", "required for this kind")
        object.__setattr__(self, "params", MappingProxyType(params))

    @property
    def category(self) -> str:
        return self.target.category

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def permanent(self) -> bool:
        return self.duration_s is None

    @property
    def end_s(self) -> float:
        return math.inf if self.duration_s is None else self.at_s + self.duration_s

    def active(self, t_seconds: float) -> bool:
        return self.at_s <= t_seconds < self.end_s
