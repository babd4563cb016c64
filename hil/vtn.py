"""``thermogate vtn``: a grid operator's (or aggregator's) OpenADR 2.0b VTN for tests.

A site with an ``[openadr]`` VEN needs a VTN to talk to; this one is
openleadr's own server, so the VEN meets the protocol as a real aggregator
speaks it. It registers any VEN that asks, sends each ``--event`` to it as a
``LOAD_DISPATCH``/``setpoint`` import limit in kW, and prints every answer
(optIn/optOut) and every telemetry report it receives, one line each.

    thermogate vtn --port 8080 --event 2024-07-10T16:00:00-05:00,2h,1500

An event is ``START,DURATION,LIMIT_KW``: START in ISO 8601 with its UTC
offset, DURATION as ``90m``, ``2h``, ``1h30m`` or seconds (``thermogate
command``'s grammar).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from thermogate.plc.durations import parse_duration
from thermogate.plc.errors import ThermogateError

__all__ = ["VtnEvent", "make_vtn", "parse_event", "serve_vtn_cli"]


@dataclass(frozen=True)
class VtnEvent:
    start: datetime
    duration: timedelta
    limit_kw: float


def _duration(text: str) -> timedelta:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise ThermogateError(f"duration {exc}") from None
    if not 1.0 <= seconds <= 7 * 86_400:
        raise ThermogateError(f"duration {text!r}: must be at least 1 s and at most 7 days")
    return timedelta(seconds=seconds)


def parse_event(text: str) -> VtnEvent:
    """``START,DURATION,LIMIT_KW`` (module docstring); a bad one says which part."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3:
        raise ThermogateError(f"--event {text!r}: expected START,DURATION,LIMIT_KW")
    try:
        start = datetime.fromisoformat(parts[0].replace("Z", "+00:00"))
    except ValueError:
        raise ThermogateError(f"--event {text!r}: START is not an ISO 8601 time") from None
    if start.utcoffset() is None:
        raise ThermogateError(f"--event {text!r}: START needs its UTC offset (e.g. -05:00 or Z)")
    try:
        limit = float(parts[2])
    except ValueError:
        raise ThermogateError(f"--event {text!r}: LIMIT_KW is not a number") from None
    if not 0.0 <= limit < 1e7:
        raise ThermogateError(f"--event {text!r}: LIMIT_KW must be 0 or more")
    return VtnEvent(start, _duration(parts[1]), limit)


def make_vtn(
    host: str,
    port: int,
    events: Sequence[VtnEvent] = (),
    *,
    vtn_id: str = "VTN",
    poll_s: float = 10.0,
    say: Callable[[str], None] = print,
) -> Any:
    """The VTN (openleadr's ``OpenADRServer``, not yet running): registers any
    VEN, sends it ``events`` once, tells ``say`` each registration, answer and
    report. A VEN it does not know (this VTN restarted) is asked to register
    again, as a real VTN does: without that the VEN polled on, unregistered,
    and the events of the new VTN never reached it."""
    from openleadr import OpenADRServer

    olog = logging.getLogger("openleadr")
    sent: set[str] = set()
    known: dict[str, dict[str, Any]] = {}

    def on_opt(ven_id: str, event_id: str, opt_type: str) -> None:
        say(f"vtn: {ven_id} answered event {event_id}: {opt_type}")

    def on_register_report(report: dict) -> list[tuple]:
        def printer(rid: str) -> Callable[[list], None]:
            def got(values: list) -> None:
                for t, v in values:
                    say(f"vtn: report {rid} at {t.isoformat()}: {v:g}")

            return got

        return [
            (rd["r_id"], printer(rd["r_id"]), rd["sampling_rate"]["min_period"])
            for rd in report["report_descriptions"]
        ]

    # its warning that no ven_lookup was given would be wrong: one is, below
    quiet = olog.level
    olog.setLevel(logging.ERROR)
    try:
        vtn = OpenADRServer(
            vtn_id=vtn_id,
            http_host=host,
            http_port=port,
            requested_poll_freq=timedelta(seconds=poll_s),
            show_fingerprint=False,
        )
    finally:
        olog.setLevel(quiet)

    def on_register(payload: dict) -> tuple[str, str]:
        ven_name = str(payload.get("ven_name", "ven"))
        ven_id, reg_id = f"ven-{ven_name}", f"reg-{ven_name}"
        known[ven_id] = {"ven_id": ven_id, "ven_name": ven_name, "registration_id": reg_id}
        say(f"vtn: registered {ven_name} as {ven_id}")
        if ven_id not in sent:
            sent.add(ven_id)
            for ev in events:
                eid = vtn.add_event(
                    ven_id,
                    "LOAD_DISPATCH",
                    "setpoint",
                    [{"dtstart": ev.start, "duration": ev.duration, "signal_payload": ev.limit_kw}],
                    callback=on_opt,
                )
                say(
                    f"vtn: event {eid} for {ven_id}: import <= {ev.limit_kw:g} kW from "
                    f"{ev.start.isoformat()} for {ev.duration}"
                )
        return ven_id, reg_id

    def ven_lookup(ven_id: str) -> dict[str, Any] | None:
        return known.get(ven_id)

    vtn.add_handler("on_create_party_registration", on_register)
    vtn.add_handler("on_register_report", on_register_report)
    # on each service, not through the constructor: openleadr sets that on the
    # service class, for every VTN of the process after it
    for service in vtn.services.values():
        service.ven_lookup = ven_lookup
    return vtn


async def _serve(args: argparse.Namespace, events: list[VtnEvent]) -> int:
    import openleadr  # noqa: F401  (it sets its logger to INFO on import: first)

    # openleadr logs every request at INFO; the answers below are what matter
    logging.getLogger("openleadr").setLevel(logging.WARNING)
    vtn = make_vtn(
        args.host,
        args.port,
        events,
        vtn_id=args.vtn_id,
        poll_s=args.poll_s,
        say=lambda line: print(line, flush=True),
    )
    await vtn.run()
    print(
        f"vtn: listening on http://{args.host}:{args.port}/OpenADR2/Simple/2.0b "
        f"({len(events)} event(s) for each VEN that registers); Ctrl-C to stop",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        if args.duration:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.duration)
        else:
            await stop.wait()
    finally:
        await vtn.stop()
    return 0


def serve_vtn_cli(args: argparse.Namespace) -> int:
    events = [parse_event(e) for e in args.event or []]
    return asyncio.run(_serve(args, events))
