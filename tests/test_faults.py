"""The fault campaign (``thermogate bench faults``), each class in a quick version.

Real sockets, real subprocesses and real SQLite as in the full campaign; only
the counts and durations are small. Every assertion is about behaviour:
counts, orders and the controller's own records, never the wall clock.
"""

from __future__ import annotations

import asyncio
import struct

import pytest

from thermogate.controller.faults.fuzz import run_fuzz
from thermogate.hil.runner import ScenarioPlant
from thermogate.hil.serve import ServedPlant
from thermogate.plc.site import demo_site


@pytest.mark.timeout(60)
def test_server_fuzz_crashes_nothing_and_every_correct_read_after_it_is_answered_exactly():
    res = run_fuzz(seed=3, frames=600)
    out = res.as_json()
    assert out["failures"] == [] and res.crashes == 0, out
    assert out["frames"] >= 600 and out["abandoned_connections"] > 0
    assert out["correct_answers_between"] > 0  # streams stayed in step through the garbage
    assert out["closed_on_bad_header"] > 0  # and the hopeless ones were closed
    assert out["answers_after"] == "correct" and res.ok


@pytest.mark.timeout(30)
def test_a_burst_past_the_receive_buffer_closes_that_stream_and_no_other():
    """pymodbus wiped a buffer above 8 KiB silently and went on out of step."""

    async def scenario() -> None:
        sp = ServedPlant(ScenarioPlant(demo_site(), "normal-day"), speed=1.0)
        _, port = await sp.server.start_tcp("127.0.0.1", 0)
        try:
            b_reader, bystander = await asyncio.open_connection("127.0.0.1", port)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            noise = bytes([0x12, 0x34, 0x80]) + bytes(range(256)) * 40  # ~10 KiB, one write
            writer.write(noise)
            await writer.drain()
            async with asyncio.timeout(10):
                assert await reader.read() == b""  # closed, nothing answered
            bystander.write(struct.pack(">HHHBBHH", 7, 0, 6, 1, 4, 0, 2))  # opened before
            async with asyncio.timeout(10):
                head = await b_reader.readexactly(9)
            assert head[:2] == b"\x00\x07" and head[7:9] == b"\x04\x04"
            bystander.close()
            writer.close()  # the server closed its end; this one is ours to close
        finally:
            await sp.server.stop()

    asyncio.run(scenario())


@pytest.mark.timeout(30)
def test_the_proxy_turns_each_fault_kind_into_a_failed_request_and_passes_clean_answers():
    from thermogate.controller.faults.proxy import KINDS, FaultProxy
    from thermogate.plc.errors import ModbusDeviceError
    from thermogate.plc.transport import ModbusLink

    async def scenario() -> dict[str, str]:
        sp = ServedPlant(ScenarioPlant(demo_site(), "normal-day"), speed=1.0)
        upstream = await sp.server.start_tcp("127.0.0.1", 0)
        # an answer gets 1.5 s (a full collection in a loaded test worker has taken
        # 0.8 s); the delayed one comes well after that
        proxy = FaultProxy(upstream, delay_s=3.0)
        port = await proxy.start()
        seen: dict[str, str] = {}
        try:
            for kind in (None, *KINDS, None):
                proxy.faults[1] = kind  # type: ignore[assignment]
                link = ModbusLink.tcp("127.0.0.1", port, 1, timeout=1.5, retries=0)
                try:
                    got = await link.read("holding", 1, 1)  # plc.heartbeat_timeout_s
                    seen[str(kind)] = f"answered {got}"
                except ModbusDeviceError as exc:
                    seen[str(kind)] = "failed" if exc.exception_code is None else "exception"
                finally:
                    link.close()
            return seen
        finally:
            await proxy.stop()
            await sp.server.stop()

    seen = asyncio.run(scenario())
    assert seen.pop("None") == "answered [10]"  # before and after: the plain answer
    assert seen.pop("exception") == "exception"  # an answer: only that request is lost
    assert seen == dict.fromkeys(
        ("wrong_tid", "wrong_unit", "short_count", "delay", "reset"), "failed"
    )


@pytest.mark.timeout(60)
def test_a_lying_or_slow_device_makes_only_its_zone_fail_safe_and_the_controller_goes_on():
    from thermogate.controller.faults.client import run_client_faults

    # one kind here (every kind's effect on a link is pinned above); the campaign runs all
    res = run_client_faults(seed=5, reps=1, kinds=("delay",), hold_s=(1.0, 1.5), delay_s=0.6)
    out = res.as_json()
    assert out["failures"] == [] and res.crashes == 0, out
    assert res.injected == res.survived == 1
    assert set(out["answers_corrupted"]) == {"delay"}
    assert res.worst_detection_s is not None and res.worst_recovery_s is not None


@pytest.mark.timeout(60)
def test_the_rig_collects_garbage_between_scans_as_the_run_loop_does_and_restores_the_host(
    tmp_path,
):
    """A full collection of a test worker's heap inside a scan starved every unit's read
    once (a flake of the test above); the rig now keeps the run loop's garbage policy."""
    import gc

    from thermogate.controller.faults.rig import EpisodeLog, Rig
    from thermogate.controller.heap import BACKSTOP_THRESHOLD

    before = gc.get_threshold()

    async def scenario() -> tuple[int, int, int, int]:
        async with Rig(demo_site(), tmp_path / "rig.db", scan_s=0.25, proxy=False, seed=1) as rig:
            assert rig.rt is not None
            during, frozen = gc.get_threshold()[0], gc.get_freeze_count()
            log = EpisodeLog()
            for _ in range(6):
                await rig.scan(log)
            return during, frozen, len(rig.rt.gc.runs) + rig.rt.gc.skipped, log.scans

    during, frozen, handled, scans = asyncio.run(scenario())
    assert during == BACKSTOP_THRESHOLD and frozen > 0  # start-up frozen, backstop raised
    assert scans == handled == 6  # each scan's garbage collected (or skipped) after it
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


@pytest.mark.timeout(60)
def test_a_silent_device_alarms_its_zone_alone_and_the_alarm_clears_when_it_returns():
    from thermogate.controller.faults.device_loss import loss_durations, run_device_loss

    res = run_device_loss(seed=2, durations=[1.0])
    out = res.as_json()
    assert out["failures"] == [] and res.crashes == 0, out
    assert res.injected == res.survived == 1
    assert res.worst_detection_s is not None and res.worst_recovery_s is not None
    full = loss_durations(0, 4)  # the campaign's silences span the range
    assert min(full) == 1.0 and max(full) == 120.0 and len(full) == 4


@pytest.mark.timeout(90)
def test_kill_9_of_the_controller_loses_no_committed_row_and_the_plc_takes_over_each_time():
    from thermogate.controller.faults.kill9 import run_kill9

    res = run_kill9(seed=4, runs=5)
    out = res.as_json()
    assert out["failures"] == [] and res.lost_rows == 0, out
    assert res.injected == res.survived == 5
    assert out["integrity_errors"] == 0 and out["committed_scans_checked"] > 0
    assert out["killed_in_charge"] >= 1  # the PLC was seen taking its safe state by itself
    assert out["lives_resumed"] + out["killed_while_starting"] == 5


@pytest.mark.timeout(60)
def test_a_nan_or_implausible_fluid_sensor_is_flagged_and_drives_no_tank_actuator_to_a_limit():
    from thermogate.controller.faults.sensor_faults import run_sensor_faults

    res = run_sensor_faults(seed=6, kinds=("nan", "out_of_range"), speed=20.0, hold_after_s=10.0,
                            max_hold_s=120.0)  # fmt: skip
    out = res.as_json()
    assert out["failures"] == [] and res.crashes == 0, out
    assert res.injected == res.survived == 2
    assert set(out["worst_detection_s_by_kind"]) == {"nan", "out_of_range"}


def test_the_clock_watch_tells_a_step_from_a_clock_that_runs_fast():
    from thermogate.controller.clockwatch import ClockWatch

    fast, stepped = ClockWatch(), ClockWatch()
    seen_fast, seen_step = [], []
    for k in range(40):  # a HIL plant's clock at 20x, scanned every 0.2 s of monotonic time
        mono = 0.2 * k
        seen_fast.append(fast.observe(1e6 + 20.0 * mono, mono))
        jump = 3600.0 if k >= 20 else 0.0
        jump -= 3600.0 if k >= 30 else 0.0
        seen_step.append(stepped.observe(1e6 + mono + jump, mono))
    assert [s for s in seen_fast if s is not None] == []
    steps = [(k, round(s)) for k, s in enumerate(seen_step) if s is not None]
    assert steps == [(20, 3600), (30, -3600)]


@pytest.mark.timeout(60)
def test_an_hour_step_of_the_wall_clock_is_recorded_and_neither_storms_nor_stalls_the_scans():
    from thermogate.controller.faults.clock_step import run_clock_steps

    res = run_clock_steps(seed=7, steps=2, window_s=1.0)
    out = res.as_json()
    assert out["failures"] == [] and res.crashes == 0, out
    assert res.injected == res.survived == 2
    assert out["clock_events"] == 2 and out["timestamps_going_back"] <= 1
    assert out["plc_safe_state_seen"] is False


@pytest.mark.timeout(60)
def test_a_disk_that_refuses_writes_is_an_alarm_control_goes_on_and_no_scan_is_lost():
    from thermogate.controller.faults.disk import run_disk_outages

    res = run_disk_outages(seed=8, outages=1, seconds=(1.5, 2.0))
    out = res.as_json()
    assert out["failures"] == [] and res.crashes == 0 and res.lost_rows == 0, out
    assert res.injected == res.survived == 1
    assert out["integrity"] == "ok" and out["plc_safe_state_seen"] is False
    assert out["telemetry_rows"] >= out["scans_recorded"] > 0
