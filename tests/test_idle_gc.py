"""Garbage collection out of the hot path: the controller's start-up heap frozen,
the OPC UA server's collections between snapshots instead of inside them.

The collector is driven with a real event loop and a recording ``collect``;
times are the loop's own timers (no wall-clock bound is asserted)."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref

import numpy as np
import pytest
from opcua_rig import Rig

from thermogate.controller import heap
from thermogate.controller.heap import BetweenScans, freeze_startup, release_freed_heap
from thermogate.controller.opcua import idlegc
from thermogate.controller.opcua.idlegc import IdleCollector
from thermogate.plc.points import GOOD


class Recorder:
    def __init__(self) -> None:
        self.gens: list[int] = []

    def __call__(self, gen: int) -> int:
        self.gens.append(gen)
        return 0


def _drive(applies: int, *, busy: bool = False, full_every: int = 3, gap_s: float = 0.3):
    """``applies`` applies ``gap_s`` apart (0: at once), each followed by its idle
    window; the collector's clock is the applies' own, so load cannot shift it."""
    rec = Recorder()
    now = [0.0]

    async def go() -> IdleCollector:
        col = IdleCollector(
            asyncio.get_running_loop(),
            lambda: busy,
            full_every=full_every,
            clock=lambda: now[0],
            collect=rec,
        )
        for _ in range(applies):
            col.applied()
            now[0] += gap_s
            if gap_s:  # the window (0.4 of the gap, at most IDLE_MAX_S) ends before
                await asyncio.sleep(gap_s)
        await asyncio.sleep(idlegc.IDLE_MAX_S + 0.1)  # the last window passes
        return col

    return asyncio.run(go()), rec.gens


def test_each_apply_is_followed_by_one_young_collection_and_every_nth_by_a_full_one():
    col, gens = _drive(7, full_every=3)
    assert gens == [1, 1, 2, 1, 1, 2, 1]
    assert [g for g, _ in col.runs] == gens and col.skipped == 0


def test_a_waiting_snapshot_comes_first_the_collection_is_skipped():
    col, gens = _drive(4, busy=True)
    assert gens == [] and col.skipped == 4


def test_applies_in_a_burst_collect_once_after_the_last():
    col, gens = _drive(5, gap_s=0.0)  # each apply moves the window on
    assert gens == [1] and col.skipped == 0


def test_install_raises_the_young_threshold_and_uninstall_restores_it():
    before = gc.get_threshold()

    async def go() -> tuple[int, ...]:
        col = IdleCollector(asyncio.get_running_loop(), lambda: False, collect=Recorder())
        col.install()
        during = gc.get_threshold()
        col.uninstall()
        return during

    try:
        during = asyncio.run(go())
        assert during == (idlegc.BACKSTOP_THRESHOLD, *before[1:])
        assert gc.get_threshold() == before
    finally:
        gc.set_threshold(*before)


def test_between_scans_collects_the_young_generations_after_each_scan_and_all_every_nth():
    rec = Recorder()
    col = BetweenScans(full_every=3, collect=rec)
    assert [col.collect(0.8, 1.0) for _ in range(7)] == [1, 1, 2, 1, 1, 2, 1]
    assert rec.gens == [1, 1, 2, 1, 1, 2, 1] and [g for g, _ in col.runs] == rec.gens


def test_between_scans_leaves_a_short_slack_to_the_backstop():
    rec = Recorder()
    col = BetweenScans(collect=rec)
    short = heap.MIN_SLACK_SHARE * 1.0 * 0.9  # an overrunning loop: no slack to spend
    assert col.collect(short, 1.0) is None and col.collect(-0.1, 1.0) is None
    assert rec.gens == [] and col.skipped == 2
    assert col.collect(0.5, 1.0) == 1 and rec.gens == [1]


def test_the_run_loop_collects_between_scans_with_the_backstop_raised_then_restores_it(
    tmp_path,
):
    """``thermogate run``'s loop over real Modbus: every scan is followed by a
    collection (or a skip), the young threshold is the backstop while it runs and
    the interpreter's own once it stops."""
    from served import served

    from thermogate.controller.modbus_io import Endpoint
    from thermogate.controller.run import RealTimeController
    from thermogate.controller.runconfig import RunConfig
    from thermogate.plc.site import demo_site

    before = gc.get_threshold()
    seen: list[tuple[int, int, int]] = []

    async def main() -> RealTimeController:
        async with served(speed=1.0) as (_sp, port):
            cfg = RunConfig(
                demo_site(),
                tmp_path / "h.db",
                Endpoint("tcp", "127.0.0.1", port),
                0.2,
                0.25,
                built_in_plant=False,
                forecast=False,
            )
            rt = RealTimeController(cfg)
            stop = asyncio.Event()
            loop = asyncio.create_task(rt.run(stop))
            while rt.scans < 6:
                await asyncio.sleep(0.05)
                seen.append(gc.get_threshold())
            stop.set()
            await loop
            await rt.close()
            return rt

    try:
        rt = asyncio.run(main())
        assert (heap.BACKSTOP_THRESHOLD, *before[1:]) in seen
        assert gc.get_threshold() == before
        assert len(rt.gc.runs) + rt.gc.skipped == rt.scans >= 6
        assert [g for g, _ in rt.gc.runs][:5] == [1] * min(5, len(rt.gc.runs))
    finally:
        gc.set_threshold(*before)


_HANDOVERS = """
import gc, pickle, sys, threading
import numpy as np
from thermogate.controller.heap import release_freed_heap, single_malloc_arena

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

assert single_malloc_arena()
rng = np.random.default_rng(0)
blobs = [pickle.dumps([rng.random(1000) for _ in range(750)]) for _ in range(2)]  # 6 MB each
live, kept, out = None, [], []
for k in range(8):
    box = {}
    def fetch():  # as the retrainer's thread: the answer received, then unpickled
        box["m"] = pickle.loads(bytes(bytearray(blobs[k % 2])))
    t = threading.Thread(target=fetch)
    t.start()
    t.join()
    kept.append([object() for _ in range(500)])  # the scan's long-lived objects meanwhile
    live = box.pop("m")  # the hand-over: the model before is dropped
    gc.collect()
    release_freed_heap()
    out.append(rss())
print(" ".join(f"{x:.2f}" for x in out))
"""


@pytest.mark.timeout(120)
def test_models_handed_over_from_new_threads_give_their_pages_back_from_one_arena():
    """Eight 6 MB models, each unpickled on a new thread and handed to the main one
    (as the retrainer does): with one malloc arena the resident set stays where
    the first left it; with glibc's arena per thread it kept another ~11 MB at
    some hand-overs (measured beside this test)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _HANDOVERS], capture_output=True, text=True, timeout=100
    )
    assert done.returncode == 0, done.stderr
    rss = [float(x) for x in done.stdout.split()]
    assert len(rss) == 8
    assert max(rss) - rss[0] < 3.0, rss  # a model is 6 MB: no second one stays


def test_freeze_startup_takes_the_surviving_objects_out_of_the_generations():
    kept = [[i] for i in range(1000)]  # containers the collector tracks
    try:
        frozen = freeze_startup()
        assert frozen >= len(kept) and gc.get_freeze_count() == frozen
        mine = {id(x) for x in kept}
        assert not any(id(o) in mine for g in range(3) for o in gc.get_objects(g))
    finally:
        gc.unfreeze()


class Node:
    pass


def test_a_frozen_cycle_that_dies_is_collected_at_the_next_freeze():
    a, b = Node(), Node()
    a.other, b.other = b, a  # a reference cycle: only the collector frees it
    gone = weakref.ref(a)
    try:
        freeze_startup()
        del a, b
        gc.collect()
        assert gone() is not None  # frozen: the collector does not see it
        freeze_startup()
        assert gone() is None
    finally:
        gc.unfreeze()


def _rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * 4096 / 1e6


def test_released_heap_pages_leave_the_resident_set_though_live_objects_pin_the_heap():
    objs = [bytes(1000) + bytes([i % 256]) for i in range(60_000)]  # ~60 MB of heap
    kept = objs[::64]  # one in 64 stays: free() alone gives no page of that back
    del objs
    before = _rss_mb()
    assert release_freed_heap()  # glibc: this suite runs on Debian/Ubuntu
    assert _rss_mb() < before - 20.0  # most of the ~59 MB freed goes back
    assert len(kept) == 938


@pytest.fixture
def rig(site, demo_pmap, tmp_path):
    r = Rig(site, demo_pmap, tmp_path / "site.db")
    r.values[:] = np.where([p.is_bit for p in r.pmap.points], 0.0, 20.0)
    r.quality[:] = GOOD
    yield r
    r.close()
    gc.unfreeze()


def test_the_served_face_collects_between_snapshots(rig):
    for k in range(4):
        rig.values[rig.values != 0.0] += 1.0  # every analogue point changes
        rig.publish()
        end = time.monotonic() + 10.0
        while len(rig.face.gc_runs) <= k:
            assert time.monotonic() < end, f"no collection after apply {k + 1}"
            time.sleep(0.01)
    assert [g for g, _ in rig.face.gc_runs] == [1, 1, 1, 1]
    assert all(ms >= 0.0 for _, ms in rig.face.gc_runs)
