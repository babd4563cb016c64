"""A long run's memory: what must stay bounded does, and ``bench soak`` reports it.

The month itself is ``thermogate bench soak`` (figures in the README); here the
fixes it led to are pinned by behaviour, each structure measured after N and
after 2N or 3N of its inputs (once it is full), never against an RSS figure or a
wall-clock time.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from thermogate.controller.bench import reap
from thermogate.controller.bench_soak import (
    LEVEL_MB_PER_DAY,
    SoakSite,
    levels_off,
    run_soak,
    slope_mb_per_day,
    soak_scenario,
)
from thermogate.controller.cli import build_parser
from thermogate.controller.grid.compliance import BaselineRule, summarise
from thermogate.controller.grid.settlement import JUDGED_KEEP, Settlement
from thermogate.controller.historian import Historian, aggregate
from thermogate.models import live
from thermogate.models.live import LiveForecaster
from thermogate.models.trust import LOG_KEEP, Trust
from thermogate.plc.mbap import MbapClient
from thermogate.plc.site import load_site

DAY = 86_400.0


# -- Modbus/TCP transaction ids -------------------------------------------------------
def test_transaction_ids_wrap_at_65535_without_keeping_the_ones_handed_out():
    """itertools.cycle kept a copy of every id it handed out: ~2.4 MB per connection
    after 65,535 requests, the ~0.3 MB/min `thermogate run` grew by at 1 s scans."""
    c = MbapClient("127.0.0.1", 1)
    tracemalloc.start()
    try:
        first = [c._next_tid() for _ in range(3)]
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(0xFFFF - 4):
            c._next_tid()
        last = c._next_tid()
        after_one_lap = tracemalloc.get_traced_memory()[0]
        wrapped = [c._next_tid() for _ in range(2)]
        for _ in range(2 * 0xFFFF):
            c._next_tid()
        after_three_laps = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert first == [1, 2, 3] and last == 0xFFFF and wrapped == [1, 2]
    # a lap of ids kept would be ~2.4 MB; nothing is kept, lap after lap
    assert after_one_lap - before < 10_000
    assert after_three_laps - after_one_lap < 10_000


def test_requests_still_match_their_answers_across_the_wrap():
    """The ids go round under real requests (a served register, answered in order)."""

    async def go() -> list[int]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                try:
                    head = await reader.readexactly(7)
                except asyncio.IncompleteReadError:
                    writer.close()  # the client is gone: so is this end
                    return
                tid, _, length, unit = (
                    int.from_bytes(head[:2]),
                    0,
                    int.from_bytes(head[4:6]),
                    head[6],
                )
                pdu = await reader.readexactly(length - 1)
                addr = int.from_bytes(pdu[1:3])
                body = bytes([3, 2]) + addr.to_bytes(2)  # the register holds its address
                writer.write(
                    tid.to_bytes(2) + b"\0\0" + (len(body) + 1).to_bytes(2) + bytes([unit]) + body
                )
                await writer.drain()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        c = MbapClient("127.0.0.1", port)
        await c.connect()
        c._tid = 0xFFFF - 3  # three requests before the wrap, three after
        got = []
        for addr in range(6):
            ans = await c.read_holding_registers(addr, count=1, device_id=1)
            got.append(ans.registers[0])
        tid = c._tid
        c.close()
        await asyncio.sleep(0.05)  # the handler sees the end of the stream
        server.close()
        await server.wait_closed()
        return [*got, tid]

    *values, tid = asyncio.run(go())
    assert values == list(range(6)) and tid == 3


# -- the live forecaster --------------------------------------------------------------
@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[list, list[str]]:
    """25 minutes of a lockstep scan's records (5 s scans), to replay for hours."""
    tmp = tmp_path_factory.mktemp("rec")
    s = SoakSite(load_site(None), soak_scenario(0.1, tmp), tmp / "r.db", forecast=False)
    rows = []
    try:
        while s.sim.plant.t < 25 * 60:
            rows.append(tuple(np.copy(a) for a in s.scan().record))
    finally:
        s.close()
    return rows, s.columns


def _replay(fc: LiveForecaster, rows: list, t0: float, t1: float, scan_s: float) -> float:
    t = t0
    k = int(t0 / scan_s)
    while t < t1:
        v, q = rows[k % len(rows)]
        fc.observe(t, v, q)
        fc.update(t)
        t += scan_s
        k += 1
    return t


def test_the_forecasters_report_records_stay_bounded(recorded, monkeypatch) -> None:
    """archive and measured (minute -> forecast, for reports) kept every minute a
    `run` ever forecast; now the last REPORT_KEEP_S of them."""
    rows, columns = recorded
    monkeypatch.setattr(live, "REPORT_KEEP_S", 300.0)  # full once the prior forecasts
    fc = LiveForecaster(load_site(None), columns)
    t0 = 1.7e9
    t = _replay(fc, rows, t0, t0 + 2700.0, 30.0)  # forecasts from ~21 min, full at ~41
    assert fc.archive and fc.measured  # the prior forecasts and is scored
    sizes = (len(fc.archive), len(fc.measured), len(fc.prior_made))
    _replay(fc, rows, t, t0 + 2 * 2700.0, 30.0)
    assert (len(fc.archive), len(fc.measured), len(fc.prior_made)) == sizes
    assert min(k[0] for k in fc.measured) >= max(fc.bins.t) - 300.0


def test_a_forecaster_that_learned_keeps_only_the_minutes_it_forecasts_from(
    recorded, monkeypatch
) -> None:
    """simulate's in-run learning keeps the whole history until it learned, not after."""
    rows, columns = recorded
    monkeypatch.setattr(live, "KEEP_STEPS", 20)  # under the 30 minutes it learns from
    fc = LiveForecaster(load_site(None), columns, learn_after_s=1800.0)
    t0 = 1.7e9
    t = _replay(fc, rows, t0, t0 + 1750.0, 30.0)
    assert fc.learned_at is None and len(fc.bins.t) >= 28  # learning: everything so far
    _replay(fc, rows, t, t0 + 2400.0, 30.0)
    assert fc.learned_at is not None
    assert len(fc.bins.t) == len(fc.bins.v) == 20


def test_trust_keeps_the_last_day_of_untrusted_verdicts():
    class NoKinds:
        def __init__(self) -> None:
            self.kinds: dict = {}

    trust = Trust(NoKinds())  # type: ignore[arg-type]
    for i in range(LOG_KEEP + 50):  # stale every minute: an untrusted verdict each
        assert not trust.check([], now_t=60.0 * i + 30 * DAY, last_trained_t=0.0).ok
    assert len(trust.log) == LOG_KEEP
    assert trust.log[-1][0] == 60.0 * (LOG_KEEP + 49) + 30 * DAY


# -- settlement -----------------------------------------------------------------------
RULE = BaselineRule(count=2, like="day", interval_s=900.0, max_hold_s=600.0)


def _curtailment_days(s: Settlement, first: int, last: int) -> None:
    """A 2-hour curtailment every afternoon (as ``run``'s command path gives them)."""

    class C:
        def __init__(self, i: int) -> None:
            self.id, self.limit_kw = i, 1500.0
            self.start, self.end = i * DAY + 14 * 3600.0, i * DAY + 16 * 3600.0

    for d in range(first, last):
        for k in range(0, 86_400, 300):
            on = 14 * 3600 <= k < 16 * 3600
            s.follow([C(d)] if on else [], d * DAY + k)
            s.meter(d * DAY + k, 1400.0 if on else 2000.0)


def test_a_runs_settlement_forgets_what_no_baseline_can_reach_and_sums_the_rest():
    long, short = Settlement(RULE), Settlement(RULE, history=False)
    _curtailment_days(long, 0, 12)
    _curtailment_days(short, 0, 12)
    assert short.summary() == long.summary()  # running totals, the same figures
    assert short.summary() == summarise([j.record for j in long.judged], RULE.interval_s)
    assert short.summary()["intervals"] == 12 * 8
    n_instr = len(short.instructions)
    assert n_instr < 12
    _curtailment_days(short, 12, 36)  # three times as many days
    assert len(short.instructions) == n_instr  # only those the baselines can reach
    assert short.summary()["intervals"] == 36 * 8
    assert len(long.instructions) == 12  # a simulation's report keeps them all


def test_judgements_kept_in_memory_are_capped():
    s = Settlement(RULE, history=False)
    assert s.judged.maxlen == JUDGED_KEEP  # type: ignore[union-attr]


# -- the historian's buffer pool --------------------------------------------------------
def test_the_historians_buffer_pool_has_a_memory_cap(tmp_path: Path) -> None:
    """After a long stall the pool kept 2x its backlog's buffers for good."""
    names = [f"p{i}" for i in range(2000)]
    with Historian(tmp_path / "h.db", names) as h:
        row = 9 * 2000 + 64
        assert h._max_pool * row <= 16_000_000 + row


# -- the bench --------------------------------------------------------------------------
def test_levels_off_compares_the_last_thirds_peak_with_the_middles():
    days = [float(d) for d in range(31)]
    assert slope_mb_per_day([0, 1, 2, 3], [10, 12, 14, 16]) == pytest.approx(2.0)
    assert slope_mb_per_day([1], [1]) is None
    # the month measured: start-up, then one step at a model hand-over (day 16), flat
    step = [200.0, 225.0] + [230.0] * 7 + [238.0] * 7 + [251.0] * 15
    assert levels_off(days, step, 30.0)
    # a step at every weekly hand-over is growth: the last third peaks higher
    weekly = [200.0 + 10.0 * (d // 7) for d in range(31)]
    assert not levels_off(days, weekly, 30.0)
    # a slow steady climb just over the bound is growth too
    assert not levels_off(days, [200.0 + 1.5 * LEVEL_MB_PER_DAY * d for d in days], 30.0)
    assert levels_off(days, [200.0 + 0.5 * LEVEL_MB_PER_DAY * d for d in days], 30.0)
    assert not levels_off([0.0, 1.0], [1.0, 1.0], 30.0)  # no sample in the last third


def test_bench_soak_runs_a_short_soak_with_retention(tmp_path: Path, monkeypatch) -> None:
    args = build_parser().parse_args(
        ["bench", "soak", "--json", "--days", "0.05", "--raw-days", "0.01", "--retrain-days", "0"]
    )
    assert (args.days, args.raw_days, args.retrain_days) == (0.05, 0.01, 0.0)
    # retention every 10 data minutes (not hourly), raw scans kept ~4 min
    monkeypatch.setattr(aggregate, "RETENTION_EVERY_S", 600.0)
    out = run_soak(days=0.02, raw_days=0.003, retrain_days=None, directory=tmp_path)
    for key in (
        "rss_mb_per_day", "growth_mb_per_day", "growth_mb_per_day_first_half", "levels_off",
        "criterion", "db_mb", "raw_scans_kept", "raw_scans_deleted", "retention_runs", "scans",
        "speedup", "events", "audit_rows",
    ):  # fmt: skip
        assert key in out, key
    assert out["scans"] == round(0.02 * DAY / 5.0)
    assert len(out["rss_mb_per_day"]) == 11  # a tenth of the run each, and the end
    assert out["retention_runs"] >= 2 and out["raw_scans_deleted"] > 0
    assert out["raw_scans_kept"] + out["raw_scans_deleted"] == out["scans"]
    assert out["events"] > 0 and out["dropped_scans"] == 0


def test_a_soak_stopped_with_sigterm_removes_its_scratch_directory(tmp_path: Path) -> None:
    """A month runs for hours and is stopped with kill: no gigabyte left in /tmp."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "thermogate.controller.cli", "bench", "soak", "--json",
         "--days", "5", "--retrain-days", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # the first sample: the soak is under way
        assert line.startswith("soak: day 0.0"), line
        assert list(tmp_path.glob("thermogate-soak-*"))
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
        reap(proc)
    assert proc.returncode != 0  # stopped, not finished
    assert not list(tmp_path.glob("thermogate-soak-*"))
