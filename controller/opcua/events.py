"""Event delivery as OPC UA Part 4 and Part 9 say, where asyncua 2.1 falls short.

Two fixes of asyncua's server-side event code, installed once per process by
``install`` (idempotent; ``AlarmFace.setup`` calls it, as every face sets it up):

* **OfType includes subtypes.** asyncua's ``WhereClauseEvaluator`` answers an
  ``OfType(T)`` element with ``EventType == T``, so a SCADA package's
  ``OfType(BaseEventType)``, ``OfType(ConditionType)`` or
  ``OfType(AlarmConditionType)`` selected none of thermogate's alarms (each is of
  a subtype). Part 4 §7.7.3: true for an event of the type *or a subtype* of it;
  the evaluator's own address space's HasSubtype references decide.
* **Notifier areas.** asyncua delivers an event only to the monitored items on
  its one emitting node (the Server object). An event may now list the event
  notifiers it is delivered through (``notify_through``): the Server object and,
  for an alarm, the Alarms folder its condition is under (Part 3 and Part 9's
  area). A subscription on any of them gets it, once per monitored item;
  ConditionRefresh resends a retained condition to the items on its notifiers
  only. Events without the list go as asyncua sends them.

Both are class-level changes of asyncua (its evaluators and per-subscription
monitored item services are made inside asyncua), but neither changes what a
server that does not list notifiers sends, apart from OfType's answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from asyncua import ua
from asyncua.server.address_space import AddressSpace
from asyncua.server.monitored_item_service import MonitoredItemService, WhereClauseEvaluator

from .typed import node_id

__all__ = ["install", "is_of_type", "notify_through"]

_HAS_SUBTYPE = node_id(ua.ObjectIds.HasSubtype)
_NOTIFIERS = "notifiers"  # the attribute of an event listing its notifiers


def is_of_type(aspace: AddressSpace, type_id: Any, base: Any) -> bool:
    """Whether the type ``type_id`` is ``base`` or a subtype of it (inverse HasSubtype
    references up from ``type_id``)."""
    if not isinstance(type_id, ua.NodeId) or not isinstance(base, ua.NodeId):
        return False
    seen: set[ua.NodeId] = set()
    t: ua.NodeId | None = type_id
    while t is not None and t not in seen:
        if t == base:
            return True
        seen.add(t)
        node = aspace.get(t)
        if node is None:
            return False
        t = next(
            (
                r.NodeId
                for r in node.references
                if not r.IsForward and r.ReferenceTypeId == _HAS_SUBTYPE
            ),
            None,
        )
    return False


def notify_through(event: Any, *notifiers: ua.NodeId) -> None:
    """Deliver ``event`` through these event notifiers besides the ones it has (at
    first its emitting node, the Server object)."""
    have: tuple[ua.NodeId, ...] = getattr(event, _NOTIFIERS, (event.emitting_node,))
    if _NOTIFIERS not in event.internal_properties:  # not an event field
        event.internal_properties.append(_NOTIFIERS)
    setattr(event, _NOTIFIERS, tuple(dict.fromkeys((*have, *notifiers))))


def _notifiers(event: Any) -> Iterable[ua.NodeId] | None:
    return getattr(event, _NOTIFIERS, None)


def install() -> None:
    """Install both fixes (once; later calls do nothing)."""
    if getattr(WhereClauseEvaluator, "_thermogate", False):
        return
    eval_el = WhereClauseEvaluator._eval_el

    def _eval_el(self: WhereClauseEvaluator, index: int, event: Any) -> Any:
        el = self.elements[index]
        if el.FilterOperator == ua.FilterOperator.OfType:
            base = self._eval_op(el.FilterOperands[0], event)
            return is_of_type(self._aspace, event.EventType, base)
        return eval_el(self, index, event)

    trigger_event = MonitoredItemService.trigger_event

    async def _trigger_event(
        self: MonitoredItemService, event: Any, mid: int | None = None
    ) -> bool:
        notifiers = _notifiers(event)
        if notifiers is None:
            return await trigger_event(self, event, mid)
        mids = [m for n in notifiers for m in self._monitored_events.get(n, ())]
        if mid is not None:  # ConditionRefresh2, or a refresh: that item if it is one of them
            mids = [m for m in mids if m == mid]
        for m in dict.fromkeys(mids):
            await self._trigger_event(event, m)
        return bool(mids)

    WhereClauseEvaluator._eval_el = _eval_el  # type: ignore[method-assign]
    MonitoredItemService.trigger_event = _trigger_event  # type: ignore[method-assign]
    WhereClauseEvaluator._thermogate = True  # type: ignore[attr-defined]
