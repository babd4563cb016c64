"""A scan's changes into the subscriptions in bulk, published as soon as they are in.

Two changes to how asyncua (pinned in pyproject) serves subscriptions, each
measured by ``thermogate bench opcua``:

1. **Bulk notification** (``Notifier``). asyncua tells a monitored item of a new
   value through ``MonitoredItemService.datachange_callback``: three coroutine
   calls and a change test per item, about 25 us of Python, ~0.1 s for the
   4,000 changes a 10,000-point scan brings. ``Notifier.enqueue`` does what
   that callback does, in plain calls: the item's last values, asyncua's own
   change test (``_is_data_changed``, trigger StatusValue, the default), and
   the notification into the subscription's queue with the item's queue size.
   An item with a ``DataChangeFilter`` (a deadband, another trigger) or a
   callback that is not a monitored item's goes through asyncua's callback
   unchanged: the fast path never decides anything asyncua would decide
   differently.
2. **Publishing locked to the scan** (``lock_publishing_to_scans``). asyncua
   runs each subscription's publishing cycle on its own timer, so a scan's
   changes wait up to a whole publishing interval for the next cycle. A
   subscription fed by ``Notifier.flush`` is woken at once instead, and its
   cycle restarts from there: a scan's changes leave in the first cycle after
   they are in, never two NotificationMessages within one publishing interval
   (Part 4, 5.13.1: the interval is the cycle's rate; keep-alives and the
   lifetime count still run on the timer, per cycle, as asyncua counts them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, cast

from asyncua import ua
from asyncua.server.address_space import AttributeValue
from asyncua.server.internal_subscription import InternalSubscription
from asyncua.server.monitored_item_service import MonitoredItemService

from .wire import notification

log = logging.getLogger(__name__)

_DISABLED = ua.MonitoringMode.Disabled
_STATUS_VALUE = ua.DataChangeTrigger.StatusValue
_changed = MonitoredItemService._is_data_changed
_KICK = "_thermogate_kick"  # the wake-up a subscription's cycle waits on


class Notifier:
    """Gathers one apply's notifications; ``flush`` wakes the subscriptions fed."""

    def __init__(self) -> None:
        self._fed: set[InternalSubscription] = set()
        #: (callback, handle, value) left to asyncua's own callback (filters)
        self._slow: list[tuple[Any, int, ua.DataValue]] = []

    def enqueue(self, av: AttributeValue, dv: ua.DataValue) -> None:
        """``dv`` is ``av``'s new value (never mutated afterwards: its items keep it)."""
        for handle, cb in av.datachange_callbacks.items():
            svc = getattr(cb, "__self__", None)
            if type(svc) is not MonitoredItemService:
                self._slow.append((cb, handle, dv))
                continue
            mid = svc._monitored_datachange.get(handle)
            if mid is None:
                continue
            md = svc._monitored_items.get(mid)
            if md is None or md.mode == _DISABLED:
                continue
            if md.filter:  # asyncua tests truthiness too
                self._slow.append((cb, handle, dv))
                continue
            mv = md.mvalue
            old = mv.current_dvalue
            mv.old_dvalue, mv.current_dvalue = old, dv
            if old is not None and not _differ(old, dv) and not _changed(mv, _STATUS_VALUE):
                continue
            isub = svc.isub
            queue = isub._triggered_datachanges
            # cast: asyncua sets the client handle as it makes the item, before it
            # registers the item's datachange callback (None only before that)
            note = notification(cast(int, md.client_handle), dv)  # slots filled directly
            items = queue.get(mid)
            if items is None:
                queue[mid] = [note]
                self._fed.add(isub)
                continue
            if md.queue_size and len(items) >= md.queue_size:
                del items[0]  # the item's queue is full: the oldest goes (DiscardOldest)
            items.append(note)

    async def flush(self) -> int:
        """asyncua's callback for what it decides itself, then wake every subscription
        fed; returns how many were woken."""
        slow, self._slow = self._slow, []
        for cb, handle, dv in slow:
            try:
                await cb(handle, dv)
            except Exception:  # one broken subscription must not stop the others
                log.exception("datachange callback %s failed", handle)
        fed, self._fed = self._fed, set()
        for isub in fed:
            kick = isub.__dict__.get(_KICK)
            if kick is not None:
                kick.set()
            else:  # no cycle of ours runs it (a 0 ms interval: asyncua publishes at once)
                await isub._trigger_publish()
        return len(fed)


def _differ(old: ua.DataValue, new: ua.DataValue) -> bool:
    """A cheap sufficient test that ``new`` is a change (``_is_data_changed`` has the
    last word when this says no): a new status code, or another number."""
    a, b = old.Value, new.Value
    # cast: asyncua allows a DataValue without a status code, but gives each one Good
    # by default (when made and when decoded); this package's values all have theirs
    sa, sb = cast(ua.StatusCode, old.StatusCode), cast(ua.StatusCode, new.StatusCode)
    if sa.value != sb.value:
        return True
    if a is None or b is None or a.VariantType is not b.VariantType:
        return False
    x, y = a.Value, b.Value
    return type(x) is float and type(y) is float and x != y and x == x and y == y


async def _cycle(self: InternalSubscription) -> None:
    """``InternalSubscription._subscription_loop``, woken early by new data."""
    period = self.data.RevisedPublishingInterval / 1000.0
    kick = asyncio.Event()
    setattr(self, _KICK, kick)
    try:
        await self.publish_results()
        last = sent = time.monotonic()
        while not self._closing:
            wait = last + period - time.monotonic()
            if wait > 0.0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(kick.wait(), wait)
                if kick.is_set() and not (self._triggered_datachanges or self._triggered_events):
                    kick.clear()  # a cycle on the timer took them meanwhile: not a cycle
                    continue
            hold = sent + period - time.monotonic()
            if hold > 0.0:  # never two messages within one publishing interval
                await asyncio.sleep(hold)
            kick.clear()
            last = time.monotonic()
            if await self.publish_results():
                sent = last
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("the publishing cycle of %s failed", self)
        raise


def lock_publishing_to_scans() -> None:
    """Every subscription started from now on runs ``_cycle`` (see the module
    docstring). Process-wide: the OPC UA server owns its process."""
    InternalSubscription._subscription_loop = _cycle  # type: ignore[method-assign]
