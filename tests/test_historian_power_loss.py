"""What the historian promises on power loss (issue 15, section 4), tested where it can be.

The promise (README, "Power loss"): WAL mode; telemetry commits with
``synchronous=NORMAL`` (not fsynced: a power loss may take the last ones
back), events, audit and state with ``FULL`` (fsynced before they count as
committed). Whatever the power loss leaves of the bytes not yet fsynced, the
file opens intact and holds a prefix of the commits: complete scans (every
shard of a scan, or none), no holes, nothing half-written.

A real historian is written by another process (2 shards of points, scans
every few ms, an event every 10 scans). The test takes images of its files:

* **frozen images**: the writer stopped with SIGSTOP, database and WAL copied,
  SIGCONT: the files exactly as the OS holds them at that instant (what a
  crash of the process or a file-system snapshot leaves);
* **power-loss images** made from each: the WAL's unsynced tail lost at a
  random byte (truncated), or pages of it lost out of order (overwritten with
  garbage from a random byte on, the length kept).

For the second kind to be an image a power loss can leave, the database file
must not change under the copies: a read transaction held open by the test
from before the first scan keeps every later frame in the WAL (a checkpoint
cannot move frames past an open reader's snapshot into the database file, nor
restart the WAL). With checkpoints running, SQLite fsyncs the WAL before it
copies any frame into the database, so what a power loss can take is still
only a tail of the WAL: the case tested. Whether the disk keeps what was
fsynced (the FULL commits) is the disk's promise, not testable here: a drive
with a volatile write cache that acknowledges flushes early breaks it.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from thermogate.controller.bench import reap
from thermogate.controller.historian import MAX_POINTS_PER_SHARD, HistoryReader

N_POINTS = MAX_POINTS_PER_SHARD + 200  # two shards: a scan spans two tables
T0 = 1_000_000.0
WRITER = f"""
import sys, time
import numpy as np
from thermogate.controller.historian import Historian

names = [f"p{{i:04d}}" for i in range({N_POINTS})]
h = Historian(sys.argv[1], names, batch_s=0.02, site_name="power-loss")
h.flush()
print("ready", flush=True)
sys.stdin.readline()  # the test holds its reader open now
base = np.arange({N_POINTS}, dtype=np.float64)
good = np.zeros({N_POINTS}, np.uint8)
k = 0
while True:
    k += 1
    h.record_scan({T0} + k, base + k, good)  # scan k: point i holds i + k
    if k % 10 == 0:
        h.record_event({T0} + k, "info", "test", f"event {{k // 10}}")
    time.sleep(0.002)
"""


def _check(db: Path) -> tuple[int, int]:
    """Open an image (SQLite recovers its WAL) and check it; (scans, events) it holds."""
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        shards = [
            r[0]
            for r in con.execute(
                "SELECT name FROM sqlite_master WHERE name LIKE 'telemetry\\_%' ESCAPE '\\' "
                "AND type = 'table' ORDER BY name"
            )
        ]
        assert shards == ["telemetry_0", "telemetry_1"], shards
        ts = [[t for (t,) in con.execute(f'SELECT t FROM "{s}" ORDER BY t')] for s in shards]
        events = [m for (m,) in con.execute("SELECT message FROM events ORDER BY id")]
    finally:
        con.close()
    # complete scans: every shard holds the same scans, with no hole between them
    assert ts[0] == ts[1]
    assert ts[0] == [T0 + k for k in range(1, len(ts[0]) + 1)]
    assert events == [f"event {j}" for j in range(1, len(events) + 1)]
    if ts[0]:  # every value of every scan as it was recorded
        reader = HistoryReader(db)
        try:
            names = [f"p{i:04d}" for i in range(0, N_POINTS, 97)]
            tel = reader.telemetry(names, T0, T0 + len(ts[0]), resolution="raw")
        finally:
            reader.close()
        k = tel["t"] - T0
        for name in names:
            assert np.array_equal(tel[name], int(name[1:]) + k), name
    return len(ts[0]), len(events)


def _power_loss(image: Path, out: Path, from_byte: int, rng: random.Random, garble: bool) -> Path:
    """A copy of ``image`` whose WAL lost what follows ``from_byte`` (truncated, or garbage)."""
    out.mkdir()
    db = out / image.name
    shutil.copyfile(image, db)
    wal = Path(f"{image}-wal").read_bytes()
    cut = rng.randrange(from_byte, len(wal) + 1)
    if garble:  # pages written back out of order: a lost stretch, later bytes kept
        n = rng.randrange(1, 4 * 4096)
        wal = wal[:cut] + rng.randbytes(min(n, len(wal) - cut)) + wal[cut + n :]
    else:
        wal = wal[:cut]
    Path(f"{db}-wal").write_bytes(wal)
    return db


@pytest.mark.timeout(120)
def test_every_image_a_crash_or_power_loss_can_leave_opens_intact_with_a_prefix_of_commits(
    tmp_path,
):
    db = tmp_path / "h.db"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    rng = random.Random(15)
    hold = None
    try:
        assert writer.stdout.readline().strip() == "ready"
        # the reader that keeps the database file as it is now (module docstring)
        hold = sqlite3.connect(db)
        hold.execute("BEGIN")
        hold.execute("SELECT count(*) FROM meta").fetchone()
        synced = os.path.getsize(f"{db}-wal")  # the frames before: in the file already
        writer.stdin.write("go\n")
        writer.stdin.flush()
        images = []
        for i in range(5):
            time.sleep(rng.uniform(0.1, 0.3))  # an arbitrary instant mid-write
            os.kill(writer.pid, signal.SIGSTOP)
            try:
                image = tmp_path / f"frozen{i}" / "h.db"
                image.parent.mkdir()
                shutil.copyfile(db, image)
                shutil.copyfile(f"{db}-wal", f"{image}-wal")
            finally:
                os.kill(writer.pid, signal.SIGCONT)
            images.append(image)
        assert writer.poll() is None  # it wrote all along
    finally:
        if hold is not None:
            hold.close()
        writer.kill()
        reap(writer, 10)

    held = []
    for i, image in enumerate(images):
        # the power-loss images first: opening an image checkpoints its WAL away
        lost = [
            _power_loss(image, tmp_path / f"loss{i}-{j}", synced, rng, garble=j % 2 == 1)
            for j in range(4)
        ]
        scans, events = _check(image)
        held.append(scans)
        for db_lost in lost:
            s, e = _check(db_lost)  # intact, complete scans, no holes ...
            assert s <= scans and e <= events  # ... and a prefix of what was there
    assert held == sorted(held) and held[-1] > held[0] > 0  # the images saw it writing
