"""Every file thermogate reads, fuzzed (issue 15, section 2).

Site description, run configuration, scenario (TOML); weather, prices, job
trace and peak windows (CSV). Whatever the bytes, loading ends in one of two
ways: success, or a ``ThermogateError`` whose message is one line naming the
file, the key or line, and the reason, which the CLI prints with exit status 2
(the last tests run it as a process). Anything else (a traceback) is a bug.

TOML files are fuzzed by mutating a valid document (a value replaced by one of
another type or an extreme one, a key deleted or added, a name swapped for
another name of the same file), so most examples get past the parser into the
checks; CSV files are generated cell by cell from what exports contain (ISO
times with odd offsets, decimal commas, sentinels, quotes, junk), in the
encodings and separators the reader accepts. Each loader also gets raw bytes.

Examples are few and derandomised for CI (the module runs in seconds);
``THERMOGATE_FUZZ_EXAMPLES=5000`` runs a deeper, random campaign.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import tomllib
from datetime import UTC, date, datetime, time, timedelta, timezone
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thermogate.controller.cli import main
from thermogate.controller.grid.peaks import load_peaks_csv
from thermogate.controller.historian import Historian
from thermogate.controller.runconfig import load_run_config
from thermogate.hil.scenario import load_for_run, load_prices_csv, load_scenario, load_weather_csv
from thermogate.hil.scenario.jobs import load_jobs_csv
from thermogate.models.registry import Registry
from thermogate.plc.errors import ThermogateError
from thermogate.plc.pointmap import build_point_map
from thermogate.plc.site import demo_site_text, load_site

_DEEP = int(os.environ.get("THERMOGATE_FUZZ_EXAMPLES", "0"))
if _DEEP:  # a deep campaign runs for many minutes per test
    pytestmark = pytest.mark.timeout(0)


def fuzz(examples: int) -> settings:
    """A modest derandomised campaign for CI; THERMOGATE_FUZZ_EXAMPLES: a deep random one."""
    return settings(
        max_examples=_DEEP or max(10, examples * 3 // 5),  # CI: the suite's time budget
        derandomize=not _DEEP,
        deadline=2000 if _DEEP else None,  # deep: a slow load is a finding too
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


def loads_or_says_why(file: Path, load, doc: dict | None = None) -> None:
    """Run ``load``: success, or one line naming ``file`` (or a file ``doc`` names,
    relative or absolute); anything else propagates."""
    try:
        load()
    except ThermogateError as exc:
        msg = str(exc)
        assert len(msg.splitlines()) == 1, repr(msg)
        named = [str(file), *(s for s in _strings(doc) if s and msg.startswith(s))]
        assert any(n in msg for n in named), (named, msg)
        assert len(msg) > min(len(n) for n in named) + 2, msg  # and a reason


# --------------------------------------------------------------------------
# TOML: a tiny writer (tomllib only reads) and mutations of valid documents
# --------------------------------------------------------------------------
def toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return (
            "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
        )
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, datetime | date | time):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def toml_text(doc: dict) -> str:
    return "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in doc.items())


_offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
_EXTREMES = [0, -1, 1, 247, 248, 65535, 65536, 2**63 - 1, -(2**63), 1e308, -1e308, 5e-324,
             math.nan, math.inf, -math.inf, 0.5, 1e6]  # fmt: skip
scalars = st.one_of(
    st.sampled_from(_EXTREMES),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(["", " ", "18:00", "PT2H", "P", "PT", "25:61", "2024-07-15T18:00:00Z",
                     "csv", "synthetic", "gating", "tcp", "E", "N", "a\nb", "../x", "x.csv"]),
    st.datetimes(timezones=st.none() | st.just(UTC) | _offsets),
    st.dates(),
    st.times(),
)  # fmt: skip
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.text(max_size=6), scalars, max_size=3),
    st.lists(st.dictionaries(st.text(max_size=6), scalars, max_size=2), max_size=2),
)


def _strings(doc: object) -> list[str]:
    if isinstance(doc, str):
        return [doc]
    if isinstance(doc, dict):
        return [s for v in doc.values() for s in _strings(v)]
    if isinstance(doc, list):
        return [s for v in doc for s in _strings(v)]
    return []


def _perturbed(draw, old: object, doc: dict) -> object:
    """A value near ``old``: the kind of mistake a person makes."""
    if isinstance(old, bool):
        return draw(st.sampled_from([not old, int(old), str(old).lower()]))
    if isinstance(old, int | float):
        return draw(
            st.sampled_from([-old, 0, old * 1000, old / 1000, old + 1, float(old), str(old)])
        )
    if isinstance(old, str):
        others = _strings(doc) or [""]
        return draw(st.sampled_from(["", old.upper(), old + "x", old[:-1], *others[:40]]))
    if isinstance(old, list):
        return draw(st.sampled_from([[], old + old, old[:1], old[::-1]]))
    if isinstance(old, dict):
        return draw(st.sampled_from([{}, [old], [old, old]]))
    return draw(values)


@st.composite
def mutated(draw, base: dict) -> dict:
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        node: dict | list = doc
        while True:  # down to a random place
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            if not keys:
                break
            k = draw(st.sampled_from(keys))
            child = node[k]
            if isinstance(child, dict | list) and child and draw(st.booleans()):
                node = child
                continue
            break
        if not keys:
            continue
        op = draw(st.sampled_from(["replace", "perturb", "perturb", "delete", "add"]))
        if op == "delete":
            del node[k]
        elif op == "add" and isinstance(node, dict):
            node[draw(st.sampled_from([f"{k}_", "x", str(k).upper(), ""]))] = draw(values)
        elif op == "add":
            node.append(copy.deepcopy(node[k]))  # a duplicate entry
        elif op == "replace":
            node[k] = draw(values)
        else:
            node[k] = _perturbed(draw, node[k], doc)
    return doc


raw_bytes = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
)


# --------------------------------------------------------------------------
# the site description
# --------------------------------------------------------------------------
SITE = tomllib.loads(demo_site_text())


def load_site_and_map(path: Path) -> None:
    build_point_map(load_site(path))  # what every command does with a site file


@fuzz(80)
@given(doc=mutated(SITE))
def test_a_mutated_site_file_loads_or_is_one_line_naming_file_and_key(tmp_path, doc):
    f = tmp_path / "site.toml"
    f.write_text(toml_text(doc), encoding="utf-8")
    loads_or_says_why(f, lambda: load_site_and_map(f))


@fuzz(25)
@given(data=raw_bytes)
def test_any_bytes_as_a_site_file_load_or_are_one_line(tmp_path, data):
    f = tmp_path / "site.toml"
    f.write_bytes(data)
    loads_or_says_why(f, lambda: load_site_and_map(f))


# --------------------------------------------------------------------------
# the run configuration (controller.toml), every section it may hold
# --------------------------------------------------------------------------
RUN = {
    "controller": {"site": "site.toml", "db": "site.db", "scan_s": 1.0, "raw_days": 7,
                   "agg_days": 400, "audit_days": 30, "planner": "gating"},
    "modbus": {"host": "127.0.0.1", "port": 5020, "timeout_s": 0.25,
               "units": [{"unit_ids": [10, 11], "host": "10.0.0.6", "port": 502},
                         {"unit_ids": [12], "device": "/dev/ttyUSB0", "baudrate": 19200,
                          "parity": "E"}]},
    "model": {"enabled": True, "retrain_every_h": 24, "train_days": 7},
    "openadr": {"vtn_url": "http://127.0.0.1:8080/OpenADR2/Simple/2.0b", "ven_name": "hall",
                "max_curtail_kw": 1500, "poll_s": 10, "simple_moderate": 0.9},
    "grid": {"peaks": "peaks.csv"},
    "opcua": {"endpoint": "opc.tcp://127.0.0.1:4840/thermogate", "anonymous": "read"},
    "console": {"device": "/dev/ttyS0", "baudrate": 9600},
}  # fmt: skip
PEAKS = "start,end,reduce_kw\n2026-08-14T16:00:00-05:00,2026-08-14T16:30:00-05:00,1500\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("run")
    (d / "site.toml").write_text(demo_site_text(), encoding="utf-8")
    (d / "peaks.csv").write_text(PEAKS, encoding="utf-8")
    return d


def test_the_base_run_configuration_is_valid(run_dir):
    f = run_dir / "base.toml"
    f.write_text(toml_text(RUN), encoding="utf-8")
    cfg = load_run_config(str(f), None)
    assert cfg.openadr is not None and cfg.peaks and cfg.console is not None
    assert (cfg.raw_days, cfg.agg_days, cfg.audit_days) == (7.0, 400.0, 30.0)


@fuzz(60)
@given(doc=mutated(RUN))
def test_a_mutated_run_configuration_loads_or_is_one_line(run_dir, doc):
    f = run_dir / "controller.toml"
    f.write_text(toml_text(doc), encoding="utf-8")
    # a mistake may be in the site file or the peaks CSV it names: the message
    # names that file, which lies beside this one
    loads_or_says_why(run_dir, lambda: load_run_config(str(f), None), doc)


@fuzz(20)
@given(data=raw_bytes)
def test_any_bytes_as_a_run_configuration_load_or_are_one_line(run_dir, data):
    f = run_dir / "controller.toml"
    f.write_bytes(data)
    loads_or_says_why(f, lambda: load_run_config(str(f), None))


# --------------------------------------------------------------------------
# scenarios: the built-ins, and one on CSV series
# --------------------------------------------------------------------------
def _builtin(name: str) -> dict:
    text = resources.files("thermogate.hil.data").joinpath(f"scenario_{name}.toml").read_text()
    return tomllib.loads(text)


WEATHER = "time,ambient_c,ghi_wm2\n2024-07-15T00:00:00Z,20,0\n2024-07-16T00:00:00Z,25,300\n"
PRICES = "time,price_per_mwh\n2024-07-15T00:00:00Z,50\n2024-07-15T12:00:00Z,-5\n"
SCENARIOS = [
    _builtin(n) for n in ("sensor-faults", "grid-curtailment", "comms-loss", "dr-week")
] + [
    {
        "name": "csv-day",
        "start": datetime(2024, 7, 15, tzinfo=UTC),
        "duration": "PT20H",
        "weather": {"source": "csv", "path": "w.csv", "wrap": True},
        "prices": {"source": "csv", "path": "p.csv", "wrap": True, "period_s": 86400},
        "grid_events": [
            {"kind": "curtail", "at": "18:00", "duration_s": 3600, "params": {"limit_kw": 900}},
            {"kind": "peak", "at": datetime(2024, 7, 15, 16, tzinfo=UTC), "duration_s": 900,
             "params": {"reduce_kw": 500}},
        ],
        "initial": {"tank01": {"fluid_temp_c": 40.0}},
    }
]  # fmt: skip


@pytest.fixture(scope="module")
def scenario_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("scenario")
    (d / "w.csv").write_text(WEATHER, encoding="utf-8")
    (d / "p.csv").write_text(PRICES, encoding="utf-8")
    return d


def test_the_base_scenarios_are_valid(scenario_dir):
    for i, doc in enumerate(SCENARIOS):
        f = scenario_dir / f"base{i}.toml"
        f.write_text(toml_text(doc), encoding="utf-8")
        load_scenario(f)


@fuzz(100)
@given(doc=st.sampled_from(SCENARIOS).flatmap(mutated))
def test_a_mutated_scenario_loads_or_is_one_line(scenario_dir, doc):
    f = scenario_dir / "scenario.toml"
    f.write_text(toml_text(doc), encoding="utf-8")
    loads_or_says_why(scenario_dir, lambda: load_scenario(f), doc)


@fuzz(20)
@given(data=raw_bytes)
def test_any_bytes_as_a_scenario_load_or_are_one_line(scenario_dir, data):
    f = scenario_dir / "scenario.toml"
    f.write_bytes(data)
    loads_or_says_why(f, lambda: load_scenario(f))


# --------------------------------------------------------------------------
# CSV files: generated as exports write them
# --------------------------------------------------------------------------
def _iso(dt: datetime, sep: str, seconds: bool) -> str:
    text = dt.isoformat(sep=sep, timespec="seconds" if seconds else "minutes")
    return text.replace("+00:00", "Z") if sep == "T" and dt.tzinfo is UTC else text


times = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**20), 10**20).map(str),
    st.builds(
        _iso,
        st.datetimes(
            min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
            timezones=st.none() | st.just(UTC) | _offsets,
        ),
        st.sampled_from(["T", " "]),
        st.booleans(),
    ),
    st.sampled_from(["2024-07-15 24:00", "2024-07-15T24:00:00Z", "0001-01-01T00:00:00+23:59",
                     "9999-12-31T23:59:59-23:59", "2024-02-30", "2024-07-15", "24:00", "T",
                     "2024-07-15T00:00:00+24:00"]),
)  # fmt: skip
odd_numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**6), 10**6).map(str),
    st.sampled_from(["", "nan", "NA", "n/a", "null", "1e400", "-0", "0x10", "1_000", "∞"]),
)


def plausible(lo: float, hi: float, digits: int = 1) -> st.SearchStrategy[str]:
    return st.floats(lo, hi).map(lambda x: f"{x:.{digits}f}")


junk = st.text(max_size=8)
KINDS = st.sampled_from(["training", "inference", "Training", "INFERENCE"])


def _rare(draw, p_in_10: int = 1) -> bool:
    return draw(st.integers(0, 9)) < p_in_10


@st.composite
def _increasing_times(draw, n: int, kinds: tuple[str, ...]) -> list[str]:
    """Times as a valid file has them (one convention, increasing), now and then not."""
    kind = draw(st.sampled_from(kinds))
    start = draw(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 1)))
    tz = draw(st.just(UTC) | _offsets) if kind == "aware" else None
    t = draw(st.floats(-1e9, 1e9, allow_nan=False)) if kind == "seconds" else 0.0
    out = []
    for _ in range(n):
        bad = draw(st.integers(0, 19)) == 0
        steps = [0.0, -1.0, 1e-3, 1e9] if bad else [1.0, 60.0, 900.0, 3600.0, 86400.0]
        t += draw(st.sampled_from(steps))
        if kind == "seconds":
            out.append(repr(t))
        else:
            try:
                out.append(_iso((start + timedelta(seconds=t)).replace(tzinfo=tz), "T", True))
            except OverflowError:
                out.append("9999-12-31T23:59:59")
    return out


@st.composite
def csv_bytes(
    draw, columns: list[str], cells: dict, time_cols: tuple = ("time",), kinds: tuple = ()
) -> bytes:
    """A CSV as exports write it: mostly well-formed, so the checks past the header
    are reached; now and then a column missing, doubled or junk where a value belongs."""
    cols = list(draw(st.permutations(columns)))
    if _rare(draw):
        cols = cols[:-1]  # one column missing
    if _rare(draw, 2):
        cols = [*cols, draw(st.sampled_from(["note", "", cols[0], "time"]))]
    header = [c.upper() if _rare(draw, 3) else c for c in cols]
    sep = draw(st.sampled_from([",", ",", ";", "\t"]))
    n = draw(st.integers(0, 12) if _rare(draw) else st.integers(2, 12))
    kinds = kinds or ("seconds", "naive", "aware")
    # time columns increase down the file (start and end of a window interleaved)
    seq = draw(_increasing_times(n * len(time_cols), kinds))
    k = len(time_cols)
    times = {c: seq[j::k] for j, c in enumerate(time_cols) if not _rare(draw, 2)}

    def cell(c: str, i: int) -> str:
        c = c.lower()
        if draw(st.integers(0, 49)) == 0:
            return draw(junk)
        if c in times and not _rare(draw):
            return times[c][i]
        text = draw(odd_numbers if _rare(draw) else cells.get(c, junk))
        return text.replace(".", ",") if sep == ";" and _rare(draw, 5) else text

    rows = [[cell(c, i) for c in cols] for i in range(n)]
    if sep == "," and _rare(draw, 3):
        rows = [[f'"{x}"' if x else x for x in r] for r in rows]
    lines = [sep.join(header), *(sep.join(r) for r in rows)]
    if _rare(draw, 3):
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(["# note", "", ",,,"])))
    text = draw(st.sampled_from(["\n", "\r\n", "\r"])).join(lines)
    enc = draw(st.sampled_from(["utf-8", "utf-8", "utf-8-sig", "utf-16", "cp1252"]))
    return text.encode(enc, errors="replace")


WEATHER_CSV = csv_bytes(
    ["time", "ambient_c", "ghi_wm2", "rh_pct"],
    {
        "time": times,
        "ambient_c": plausible(-30, 50),
        "ghi_wm2": plausible(-5, 1200),
        "rh_pct": plausible(0, 100),
    },
)
PRICES_CSV = csv_bytes(
    ["time", "price_per_mwh"], {"time": times, "price_per_mwh": plausible(-200, 3000, 2)}
)
JOBS_CSV = csv_bytes(
    ["submit_time_s", "duration_s", "gpus", "kind", "checkpoint_s"],
    {"submit_time_s": plausible(0, 1e6, 0), "duration_s": plausible(1, 1e6, 0),
     "gpus": st.integers(1, 64).map(str), "kind": KINDS, "checkpoint_s": plausible(60, 7200, 0)},
    time_cols=("submit_time_s",),
    kinds=("seconds",),
)  # fmt: skip
PEAKS_CSV = csv_bytes(
    ["start", "end", "reduce_kw"],
    {"start": times, "end": times, "reduce_kw": plausible(1, 5000)},
    time_cols=("start", "end"),
    kinds=("aware",),
)


@fuzz(80)
@given(data=WEATHER_CSV | raw_bytes, wrap=st.booleans())
def test_a_weather_csv_loads_or_is_one_line_naming_file_and_line(tmp_path, data, wrap):
    f = tmp_path / "weather.csv"
    f.write_bytes(data)
    loads_or_says_why(f, lambda: load_weather_csv(f, wrap=wrap))
    # as simulate and plant take it: measured weather under a built-in scenario
    loads_or_says_why(f, lambda: load_for_run("normal-day", f, None))


@fuzz(80)
@given(data=PRICES_CSV | raw_bytes, hours=st.sampled_from([1.0, 48.0]))
def test_a_prices_csv_loads_or_is_one_line_naming_file_and_line(tmp_path, data, hours):
    f = tmp_path / "prices.csv"
    f.write_bytes(data)
    loads_or_says_why(f, lambda: load_prices_csv(f))
    # as the schedule benchmark takes it: the run starts at its first price
    loads_or_says_why(f, lambda: load_for_run("normal-day", None, f, hours=hours, strict=True))


@fuzz(80)
@given(data=JOBS_CSV | raw_bytes)
def test_a_job_trace_loads_or_is_one_line_naming_file_and_line(tmp_path, data):
    f = tmp_path / "jobs.csv"
    f.write_bytes(data)
    loads_or_says_why(f, lambda: load_jobs_csv(f))


@fuzz(60)
@given(data=PEAKS_CSV | raw_bytes)
def test_a_peaks_csv_loads_or_is_one_line_naming_file_and_line(tmp_path, data):
    f = tmp_path / "peaks.csv"
    f.write_bytes(data)
    loads_or_says_why(f, lambda: load_peaks_csv(f))


# --------------------------------------------------------------------------
# the site database (historian, model registry): damaged or not SQLite at all
# --------------------------------------------------------------------------
NAMES = [f"p{i}" for i in range(20)]


@pytest.fixture(scope="module")
def historian_bytes(tmp_path_factory) -> bytes:
    db = tmp_path_factory.mktemp("hist") / "h.db"
    with Historian(db, NAMES, site_name="s") as h:
        for k in range(30):
            h.record_scan(1e6 + k, np.arange(20.0), np.zeros(20, np.uint8))
            h.record_event(1e6 + k, "info", "test", "m")
    return db.read_bytes()


@fuzz(60)
@given(data=st.data())
def test_a_damaged_database_opens_or_is_one_line(tmp_path_factory, historian_bytes, data):
    b = bytearray(historian_bytes)
    if data.draw(st.integers(0, 9)) == 0:
        b = bytearray(data.draw(raw_bytes))
    for _ in range(data.draw(st.integers(1, 20))):  # bytes overwritten: header or anywhere
        at = data.draw(st.integers(0, 99) | st.integers(0, max(0, len(b) - 1)))
        if at < len(b):
            b[at] = data.draw(st.integers(0, 255))
    f = tmp_path_factory.mktemp("db") / "site.db"
    f.write_bytes(bytes(b))

    def open_historian() -> None:
        Historian(f, NAMES, site_name="s").close()

    loads_or_says_why(f, open_historian)
    loads_or_says_why(f, lambda: Registry(f).close())


# --------------------------------------------------------------------------
# the command line: exit 2 and one line on stderr
# --------------------------------------------------------------------------
CLI = [sys.executable, "-m", "thermogate.controller.cli"]
BAD_JOBS = "submit_time_s,duration_s,gpus,kind\n0,3600,8,training\n60,600,2.5,inference\n"


def test_a_bad_csv_given_to_the_plant_exits_2_with_one_line_on_stderr(tmp_path):
    (tmp_path / "w.csv").write_text("time,ambient_c\n0,20\n3600,21\n7200,1e400\n")
    proc = subprocess.run(
        [*CLI, "plant", "--weather", str(tmp_path / "w.csv"), "--port", "0", "--duration", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.strip().splitlines()  # one line, no traceback
    assert line.startswith(f"thermogate: error: {tmp_path / 'w.csv'}:4: column 'ambient_c'"), line


@pytest.mark.parametrize(
    ("args", "file", "where"),
    [
        (["run", "--config", "{d}/controller.toml"], "controller.toml", ": modbus.port: "),
        (["simulate", "--hours", "1", "--jobs", "{d}/jobs.csv"], "jobs.csv", ":3: column 'gpus'"),
        (["simulate", "--scenario", "{d}/s.toml"], "s.toml", ": name: "),
        (["forecast", "--db", "{d}/not.db"], "not.db", "not a thermogate database"),
    ],
)
def test_the_cli_says_a_bad_file_in_one_line_and_returns_2(tmp_path, capsys, args, file, where):
    (tmp_path / "site.toml").write_text(demo_site_text(), encoding="utf-8")
    (tmp_path / "controller.toml").write_text(
        '[controller]\nsite = "site.toml"\n[modbus]\nhost = "127.0.0.1"\nport = "5020"\n',
        encoding="utf-8",
    )
    (tmp_path / "jobs.csv").write_text(BAD_JOBS, encoding="utf-8")
    (tmp_path / "s.toml").write_text('name = "a\\nb"\n', encoding="utf-8")
    (tmp_path / "not.db").write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 8)
    assert main([a.format(d=tmp_path) for a in args]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"thermogate: error: {tmp_path / file}") and where in line, line
