"""The control core (pure: no I/O, no clock): see ``controller.py`` for one scan."""

from .alarms import AlarmRecord, Alarms
from .commands import (
    Acknowledge,
    ClearCurtailment,
    Command,
    CommandResult,
    OverrideActuator,
    Principal,
    RequestCurtailment,
    ResetInterlock,
    ReturnToAuto,
    SetMode,
    SetSetpoint,
    SetTuning,
)
from .controller import Controller, ScanResult
from .planning import (
    FORECAST_FRESH_S,
    BusyShares,
    DefaultPlanner,
    Explains,
    LoadForecast,
    LoadInfo,
    PlanAhead,
    Planner,
    SiteNow,
)
from .state import ControllerState, Curtailment, Override

__all__ = [
    "FORECAST_FRESH_S",
    "Acknowledge",
    "AlarmRecord",
    "Alarms",
    "BusyShares",
    "ClearCurtailment",
    "Command",
    "CommandResult",
    "Controller",
    "ControllerState",
    "Curtailment",
    "DefaultPlanner",
    "Explains",
    "LoadForecast",
    "LoadInfo",
    "Override",
    "OverrideActuator",
    "PlanAhead",
    "Planner",
    "Principal",
    "RequestCurtailment",
    "ResetInterlock",
    "ReturnToAuto",
    "ScanResult",
    "SetMode",
    "SetSetpoint",
    "SetTuning",
    "SiteNow",
]
