"""Event delivery as OPC UA Part 4 says, where asyncua 2.1 falls short.

``install`` (once per process, idempotent; ``AlarmFace.setup`` and the face call
it) makes a WhereClause's **OfType include subtypes.** asyncua's
``WhereClauseEvaluator`` answers an ``OfType(T)`` element with
``EventType == T``, so a SCADA package's ``OfType(BaseEventType)``,
``OfType(ConditionType)`` or ``OfType(AlarmConditionType)`` selected none of
thermogate's alarms (each is of a subtype). Part 4 §7.7.3: true for an event of
the type *or a subtype* of it; the evaluator's own address space's HasSubtype
references decide.

A class-level change of asyncua (its evaluators are made inside asyncua, one per
monitored item), which changes nothing but OfType's answer.
"""

from __future__ import annotations

from typing import Any

from asyncua import ua
from asyncua.server.address_space import AddressSpace
from asyncua.server.monitored_item_service import WhereClauseEvaluator

__all__ = ["install", "is_of_type"]

_HAS_SUBTYPE = ua.NodeId(ua.ObjectIds.HasSubtype)


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


def install() -> None:
    """Install the fix (once; later calls do nothing)."""
    if getattr(WhereClauseEvaluator, "_thermogate", False):
        return
    eval_el = WhereClauseEvaluator._eval_el

    def _eval_el(self: WhereClauseEvaluator, index: int, event: Any) -> Any:
        el = self.elements[index]
        if el.FilterOperator == ua.FilterOperator.OfType:
            base = self._eval_op(el.FilterOperands[0], event)
            return is_of_type(self._aspace, event.EventType, base)
        return eval_el(self, index, event)

    WhereClauseEvaluator._eval_el = _eval_el  # type: ignore[method-assign]
    WhereClauseEvaluator._thermogate = True  # type: ignore[attr-defined]
