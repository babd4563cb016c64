"""A plant driven by a scenario: weather, grid signals and a fault schedule.

``ScenarioPlant`` binds a ``Scenario`` to a ``Plant``: the environment
(ambient, humidity, grid frequency) comes from the scenario's series, and the
fault schedule is walked with one cursor as simulated time advances. Every
fault target is checked against the site before the first step, so a typo in
a scenario fails at start-up with the scenario file and the fault's index,
not hours into a run.

Device faults (a device that stops answering or answers exceptions) exist
only on the wire: they are handed to ``on_device_fault`` (the Modbus server
installs itself there); ``device_faults`` tells a lockstep consumer which
unit ids are currently unreachable.
"""

from __future__ import annotations

from collections.abc import Callable

from thermogate.plc.errors import ConfigError
from thermogate.plc.pointmap import PointMap, build_point_map
from thermogate.plc.site import Site

from .plant import Environment, Plant
from .scenario import FaultSpec, Scenario, load_scenario

DeviceFaultHook = Callable[[int, str | None, int], None]

#: Scenario ``initial`` keys the plant understands, by equipment kind.
_INITIAL_KEYS = ("fluid_temp_c", "supply_temp_c", "coolant_temp_c")


class ScenarioPlant:
    """Plant + scenario, stepped in lockstep or by a real-time clock."""

    def __init__(
        self,
        site: Site,
        scenario: Scenario | str = "normal-day",
        *,
        seed: int = 0,
        dt: float = 1.0,
        pmap: PointMap | None = None,
        sensors: bool = True,
    ) -> None:
        self.scenario = load_scenario(scenario) if isinstance(scenario, str) else scenario
        sc = self.scenario
        self.site = site
        self.pmap = pmap or build_point_map(site)

        # The plant asks for ambient then humidity at the same t: one lookup.
        last: list = [None, None]

        def ambient(t: float) -> float:
            w = sc.weather_at(t)
            last[0], last[1] = t, w
            return w.ambient_c

        def rh(t: float) -> float:
            w = last[1] if last[0] == t else sc.weather_at(t)
            return 50.0 if w.rh_pct is None else w.rh_pct

        def freq(t: float) -> float:
            return sc.frequency_hz_at(t, site.frequency_hz)

        env = Environment(ambient_c=ambient, rh_pct=rh, grid_frequency_hz=freq)
        self.plant = Plant(site, self.pmap, seed=seed, dt=dt, env=env, sensors=sensors)
        self._apply_initial()
        self.device_units = self._device_units()
        self._check_targets()
        self.on_device_fault: DeviceFaultHook | None = None
        self.device_faults: dict[int, tuple[str, int]] = {}
        self._next = 0  # cursor into the time-sorted fault list
        self._active: list[FaultSpec] = []

    # ------------------------------------------------------------------
    @property
    def t(self) -> float:
        return self.plant.t

    def import_limit_kw(self) -> float:
        """The grid's current import limit (curtail events lower it)."""
        return self.scenario.import_limit_kw_at(self.plant.t, self.site.import_limit_kw)

    def price_per_mwh(self) -> float:
        return self.scenario.price_at(self.plant.t)

    def step(self, n: int = 1) -> None:
        faults = self.scenario.faults
        for _ in range(n):
            t_next = self.plant.t + self.plant.dt
            if (self._next < len(faults) and faults[self._next].at_s <= t_next) or self._active:
                self._update_faults(t_next)
            self.plant._step_once()

    # ------------------------------------------------------------------
    def _update_faults(self, t: float) -> None:
        faults = self.scenario.faults
        while self._next < len(faults) and faults[self._next].at_s <= t:
            f = faults[self._next]
            self._next += 1
            self._set(f, True)
            if not f.permanent:
                self._active.append(f)
        still = []
        for f in self._active:
            if t >= f.end_s:
                self._set(f, False)
            else:
                still.append(f)
        self._active = still

    def _set(self, f: FaultSpec, on: bool) -> None:
        cat, name = f.category, f.name
        pl = self.plant
        if cat in ("pump", "fan", "leak"):
            pl.set_equipment_fault(cat, name, f.kind, on)
        elif cat == "sensor":
            if on:
                pl.sensors.inject(name, f.kind, dict(f.params))
            else:
                pl.sensors.clear(name)
            pl.events.append(
                (pl.t, f"fault {'injected' if on else 'cleared'}: sensor:{name} {f.kind}")
            )
        elif cat == "device":
            code = int(f.params.get("code", 4))
            for unit in self.device_units[name]:
                if on:
                    self.device_faults[unit] = (f.kind, code)
                else:
                    self.device_faults.pop(unit, None)
                if self.on_device_fault is not None:
                    self.on_device_fault(unit, f.kind if on else None, code)
            pl.events.append(
                (pl.t, f"fault {'injected' if on else 'cleared'}: device:{name} {f.kind}")
            )

    def _device_units(self) -> dict[str, set[int]]:
        units: dict[str, set[int]] = {}
        for p in self.pmap.points:
            units.setdefault(p.device, set()).add(p.unit_id)
        return units

    def _check_targets(self) -> None:
        """Every fault target and initial key must exist on this site."""
        sc, site = self.scenario, self.site
        file = sc.source or sc.name
        names = {
            "pump": {p.name for p in site.pumps},
            "fan": {d.name for d in site.dry_coolers},
            "leak": {t.name for t in site.tanks}
            | {lp.name for lp in site.loops}
            | {c.name for c in site.cdus},
            "sensor": set(self.pmap.by_name),
            "device": set(self.device_units),
        }
        for i, f in enumerate(sc.faults):
            valid = names.get(f.category)
            if valid is None or f.name not in valid:
                sample = ", ".join(sorted(valid)[:6]) if valid else ""
                raise ConfigError(
                    file,
                    f"faults[{i}].target",
                    f"'{f.category}:{f.name}' does not exist on site '{site.name}'"
                    + (f" (e.g. {sample})" if sample else ""),
                )
            if f.category == "sensor" and self.pmap.by_name[f.name].access != "ro":
                raise ConfigError(
                    file, f"faults[{i}].target", f"'{f.name}' is a command, not a sensor"
                )

    def _apply_initial(self) -> None:
        sc, pl, site = self.scenario, self.plant, self.site
        file = sc.source or sc.name
        tanks = {t.name: i for i, t in enumerate(site.tanks)}
        loops = {lp.name: i for i, lp in enumerate(site.loops)}
        cdus = {c.name: i for i, c in enumerate(site.cdus)}
        for key, value in sc.initial.items():
            equip, _, what = key.rpartition(".")
            if what == "fluid_temp_c" and equip in tanks:
                pl.T_tank[tanks[equip]] = value
            elif what == "supply_temp_c" and equip in loops:
                pl.T_cold[loops[equip]] = value
                pl.T_hot[loops[equip]] = value + 4.0
            elif what == "coolant_temp_c" and equip in cdus:
                pl.T_tcs[cdus[equip]] = value
            else:
                raise ConfigError(
                    file,
                    f"initial.{key}",
                    f"not a starting value of this site (use <tank>.fluid_temp_c, "
                    f"<loop>.supply_temp_c or <cdu>.coolant_temp_c; known keys end in "
                    f"{', '.join(_INITIAL_KEYS)})",
                )
