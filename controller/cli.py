"""The ``thermogate`` command line.

Every user mistake (a bad site file, CSV, option value) is a
``ThermogateError`` and is printed as one line naming the problem, with exit
status 2; a traceback means a bug in thermogate.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

from thermogate.plc.errors import ThermogateError

from .heap import single_malloc_arena

EXIT_USAGE = 2


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{v} must be at least {minimum}")
        return v

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number")
    return v


def _port(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a port number") from None
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"{v} is not a TCP port (0-65535)")
    return v


# --------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------
def cmd_points(args: argparse.Namespace) -> int:
    from thermogate.plc.pointmap import build_point_map
    from thermogate.plc.site import load_site

    site = load_site(args.site)
    pmap = build_point_map(site)
    if args.format == "csv":
        sys.stdout.write(pmap.to_csv())
    elif args.format == "json":
        sys.stdout.write(pmap.to_json() + "\n")
    else:
        sys.stdout.write(pmap.to_markdown())
    return 0


def cmd_site(args: argparse.Namespace) -> int:
    from thermogate.plc.pointmap import build_point_map
    from thermogate.plc.site import load_site, parse_site_text
    from thermogate.plc.sitegen import SiteSpec, generate_site_toml

    from .modbus_io import unwatched_plcs

    if args.check is not None:
        site = load_site(args.check)
        info = site.summary()
        info["points"] = len(build_point_map(site))
        print(json.dumps(info, indent=1))
        note = unwatched_plcs(site)
        if note is not None:  # said, not refused: a site's PLC program may watch the main heartbeat
            print(f"note: {note}", file=sys.stderr)
        return 0
    spec = SiteSpec(
        name=args.name,
        asic_tanks=args.tanks,
        gpu_tanks=args.gpu_tanks if args.gpu_tanks is not None else max(1, args.tanks // 6),
        rack_rows=args.rows if args.rows is not None else max(1, args.tanks // 12),
        tanks_per_plc=args.tanks_per_plc,
        oversubscription=args.oversubscription,
    )
    try:
        text = generate_site_toml(spec)
    except ValueError as exc:
        raise ThermogateError(f"cannot generate that site: {exc}") from None
    parse_site_text(text, "<generated>")  # never emit a file we would reject
    if args.output:
        try:
            with open(args.output, "w", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as exc:
            raise ThermogateError(f"{args.output}: cannot write: {exc.strerror}") from None
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_vtn(args: argparse.Namespace) -> int:
    from thermogate.hil.vtn import serve_vtn_cli

    return serve_vtn_cli(args)


def cmd_plant(args: argparse.Namespace) -> int:
    from thermogate.hil.serve import serve_plant_cli

    return serve_plant_cli(args)


def cmd_run(args: argparse.Namespace) -> int:
    from .run import run_cli

    return run_cli(args)


def cmd_probe(args: argparse.Namespace) -> int:
    from .probe import probe_cli

    return probe_cli(args)


def cmd_simulate(args: argparse.Namespace) -> int:
    from .simulate import simulate_cli

    summary = simulate_cli(args)
    if args.json:
        print(json.dumps(summary))
    else:
        for k, v in summary.items():
            print(f"{k}: {v}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .modelcli import train_cli

    return train_cli(args)


def cmd_forecast(args: argparse.Namespace) -> int:
    from .modelcli import forecast_cli

    return forecast_cli(args)


def cmd_bench(args: argparse.Namespace) -> int:
    if args.bench == "scan":
        from .bench import bench_scan

        result = bench_scan(args)
    elif args.bench == "forecast":
        from .bench_forecast import bench_forecast

        result = bench_forecast(args)
    elif args.bench == "headroom":
        from .bench_headroom import bench_headroom

        result = bench_headroom(args)
    elif args.bench == "schedule":
        from .gating.bench_schedule import bench_schedule

        result = bench_schedule(args)
    elif args.bench == "dr":
        from .grid.bench_dr import bench_dr

        result = bench_dr(args)
    elif args.bench == "opcua":
        from .opcua.bench import bench_opcua

        result = bench_opcua(args)
    elif args.bench == "cooling":
        from .bench_cooling import bench_cooling

        result = bench_cooling(args)
    elif args.bench == "historian":
        from .historian.bench import bench_historian

        result = bench_historian(args)
    elif args.bench == "faults":
        from .faults import bench_faults

        result = bench_faults(args)
    elif args.bench == "retrain":
        from .bench_retrain import bench_retrain

        result = bench_retrain(args)
    elif args.bench == "soak":
        from .bench_soak import bench_soak

        result = bench_soak(args)
    elif args.bench == "lockstep":
        from .bench_lockstep import bench_lockstep

        result = bench_lockstep(args)
    else:
        from thermogate.hil.bench import run_bench

        result = run_bench(args)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
    if args.bench == "faults" and not result["ok"]:
        return 1  # something was lost, crashed or failed a check: a CI gate
    if args.bench == "soak" and not result["levels_off"]:
        return 1  # memory still growing in the second half: a leak to find
    return 0


# --------------------------------------------------------------------------
def _version() -> str:
    """The installed distribution's version (one source: pyproject.toml)."""
    try:
        return metadata.version("thermogate")
    except metadata.PackageNotFoundError:  # run from a tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="thermogate",
        description="Site controller companion for hybrid mining / AI data halls.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log what runs in the background (retraining, reconnects); -vv for debug",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    sp = sub.add_parser("points", help="print the Modbus point map of a site")
    sp.add_argument("--site", metavar="FILE", help="site description (default: built-in demo)")
    sp.add_argument("--format", choices=("csv", "md", "json"), default="csv")
    sp.set_defaults(func=cmd_points)

    ss = sub.add_parser("site", help="generate a site description, or check one")
    ss.add_argument("--check", metavar="FILE", help="validate FILE and print its summary")
    ss.add_argument(
        "--tanks", type=_non_negative_int, default=12, help="ASIC miner tanks (0: an AI-only hall)"
    )
    ss.add_argument("--gpu-tanks", type=_non_negative_int, default=None, help="GPU immersion tanks")
    ss.add_argument("--rows", type=_non_negative_int, default=None, help="direct-to-chip rack rows")
    ss.add_argument(
        "--tanks-per-plc",
        type=_non_negative_int,
        default=0,
        help="spread tanks over PLCs (needed above ~100 devices)",
    )
    ss.add_argument(
        "--oversubscription",
        type=_positive_float,
        default=1.4,
        metavar="X",
        help="installed IT over the grid import limit (1.4: the import feeds 1/1.4 of it)",
    )
    ss.add_argument("--name", default="Generated hall")
    ss.add_argument("-o", "--output", metavar="FILE")
    ss.set_defaults(func=cmd_site)

    rp = sub.add_parser(
        "run",
        help="run the controller (no --config: the demo site against the built-in plant)",
    )
    rp.add_argument("--config", metavar="FILE", help="controller configuration (TOML)")
    rp.add_argument("--db", metavar="FILE", help="historian database (default thermogate.db)")
    rp.add_argument(
        "--plant-port",
        type=_port,
        default=None,
        metavar="P",
        help="without --config: the demo plant's Modbus port on 127.0.0.1 (default 5020)",
    )
    rp.add_argument(
        "--opcua-port",
        type=_port,
        default=None,
        metavar="P",
        help="without --config: the demo's OPC UA port on 127.0.0.1 (default 4840)",
    )
    rp.add_argument(
        "--no-opcua", action="store_true", help="do not start the OPC UA server ([opcua] or demo)"
    )
    rp.add_argument(
        "--no-console",
        action="store_true",
        help="do not open the technician's serial console ([console], or the demo's pty)",
    )
    rp.add_argument(
        "--accept-new-map",
        action="store_true",
        help="start although points moved since the last run on this database (the PLC's"
        " program was changed to match the site file)",
    )
    rp.set_defaults(func=cmd_run)

    pr = sub.add_parser(
        "probe",
        help="check a run configuration and read every point once (commissioning); writes nothing",
    )
    pr.add_argument(
        "--config", metavar="FILE", help="controller configuration (TOML; default: the demo)"
    )
    pr.add_argument(
        "--offline", action="store_true", help="only validate the configuration: ask no device"
    )
    pr.add_argument("--json", action="store_true", help="the report as JSON")
    pr.set_defaults(func=cmd_probe)

    sm = sub.add_parser("simulate", help="controller and plant in lockstep, faster than real time")
    _site(sm)
    sm.add_argument("--scenario", default="normal-day", metavar="NAME|FILE")
    sm.add_argument("--hours", type=_positive_float, default=24.0)
    sm.add_argument("--weather", metavar="CSV")
    sm.add_argument("--prices", metavar="CSV")
    sm.add_argument(
        "--openadr",
        metavar="TOML",
        help="a file with an [openadr] section: the VEN runs beside the simulation on its "
        "clock and its events become curtailments",
    )
    sm.add_argument(
        "--peaks",
        metavar="CSV",
        help="peak windows (start,end,reduce_kw; ISO times with UTC offsets): the import "
        "cut by reduce_kw inside each",
    )
    sm.add_argument("--report", metavar="DIR", help="write plots and an HTML report here")
    sm.add_argument("--seed", type=int, default=0)
    sm.add_argument(
        "--scan-s",
        type=_positive_float,
        default=None,
        help="controller scan in simulated seconds (default: the site's)",
    )
    sm.add_argument(
        "--model",
        metavar="DB",
        help="forecast with the promoted model of this historian/registry database",
    )
    _learn_h(sm)
    sm.add_argument(
        "--jobs",
        metavar="CSV",
        help="GPU-cluster job trace (submit_time_s,duration_s,gpus,kind) run on the GPUs",
    )
    sm.add_argument(
        "--planner",
        choices=("gating", "limits"),
        default="gating",
        help="gating: the gating planner (price, heat headroom, precedence; default); "
        "limits: every load at its rating within protection's limits",
    )
    sm.add_argument("--json", action="store_true", help="print the summary as JSON")
    sm.set_defaults(func=cmd_simulate)

    pp = sub.add_parser("plant", help="serve the simulated plant over Modbus TCP or RTU")
    _site(pp)
    pp.add_argument("--scenario", default="normal-day", metavar="NAME|FILE")
    pp.add_argument("--weather", metavar="CSV", help="weather CSV (time,ambient_c,...)")
    pp.add_argument("--prices", metavar="CSV", help="price CSV (time,price_per_mwh)")
    pp.add_argument("--host", default="127.0.0.1")
    pp.add_argument("--port", type=_port, default=5020)
    pp.add_argument(
        "--speed", type=_positive_float, default=1.0, help="simulated seconds per wall second"
    )
    pp.add_argument("--rtu", metavar="DEVICE", help="serve Modbus RTU on a serial device/pty")
    pp.add_argument("--baudrate", type=_positive_int, default=19200)
    pp.add_argument("--parity", choices=("N", "E", "O"), default="E")
    pp.add_argument("--seed", type=int, default=0)
    pp.add_argument(
        "--start",
        choices=("idle", "rated"),
        default="idle",
        help="idle: as its PLC holds a hall no controller has run yet (mining off, GPUs at "
        "the safe cap; default); rated: every load at its rating, a hall already running",
    )
    pp.add_argument(
        "--duration",
        type=_positive_float,
        default=None,
        help="stop after this many wall seconds (default: until Ctrl-C)",
    )
    pp.set_defaults(func=cmd_plant)

    vp = sub.add_parser("vtn", help="a grid operator's OpenADR 2.0b VTN (openleadr) for tests")
    vp.add_argument("--host", default="127.0.0.1")
    vp.add_argument("--port", type=_port, default=8080)
    vp.add_argument("--vtn-id", default="thermogate-test-vtn")
    vp.add_argument("--poll-s", type=_positive_float, default=10.0, help="VENs poll this often")
    vp.add_argument(
        "--event",
        action="append",
        metavar="START,DURATION,LIMIT_KW",
        help="an import limit for every VEN that registers (repeatable)",
    )
    vp.add_argument("--duration", type=_positive_float, help="stop after this many seconds")
    vp.set_defaults(func=cmd_vtn)

    tp = sub.add_parser("train", help="train a forecast model on the historian; promote if better")
    tp.add_argument("--db", metavar="FILE", help="historian database (default thermogate.db)")
    tp.add_argument("--site", metavar="FILE", help="site description (default: built-in demo)")
    tp.add_argument("--days", type=_positive_float, default=7.0, help="days of history (7)")
    tp.set_defaults(func=cmd_train)

    fp = sub.add_parser("forecast", help="forecasts of every tank, loop and CDU (promoted model)")
    fp.add_argument("--db", metavar="FILE", help="historian database (default thermogate.db)")
    fp.add_argument("--site", metavar="FILE", help="site description (default: built-in demo)")
    fp.add_argument("--json", action="store_true", help="print JSON")
    fp.set_defaults(func=cmd_forecast)

    from .people import add_parsers

    add_parsers(sub)

    bp = sub.add_parser("bench", help="benchmarks (JSON with --json)")
    bsub = bp.add_subparsers(dest="bench", metavar="WHAT")
    bsub.required = True
    bpl = _bench(bsub, "plant", help="accelerated plant speed vs real time")
    _site(bpl)
    bpl.add_argument("--hours", type=_positive_float, default=24.0)
    bsc = _bench(bsub, "scan", help="full controller scan over Modbus vs the bare read")
    bsc.add_argument(
        "--points",
        type=_positive_int,
        default=10_000,
        help="approximate site size in points (a site is generated)",
    )
    bsc.add_argument("--scans", type=_positive_int, default=200)
    bsc.add_argument(
        "--speed",
        type=_positive_float,
        default=1.0,
        help="plant and controller clock this many times real time: run's loop at the "
        "site's scan interval, compressed (1: as run scans; 10 is quicker, rougher, ~15 %% low)",
    )
    bsc.add_argument(
        "--in-flight",
        type=_positive_int,
        default=4,
        help="read requests outstanding per connection (the plant serves a pipelined stream; 4)",
    )
    bsc.add_argument(
        "--share-cores",
        action="store_true",
        help="leave the plant and the controller where the scheduler puts them (by default "
        "the plant gets a core of its own, as a PLC is another box)",
    )
    bou = _bench(
        bsub, "opcua", help="scan p99 and SCADA's delivery/latency with 10,000 monitored items"
    )
    bou.add_argument("--points", type=_positive_int, default=10_000, help="approximate site size")
    bou.add_argument("--items", type=_positive_int, default=10_000, help="monitored items")
    bou.add_argument("--scans", type=_positive_int, default=60, help="scans per phase (1 s each)")
    bsh = _bench(
        bsub, "schedule", help="workload gating against static splits, closed loop, one run"
    )
    _site(bsh)
    bsh.add_argument(
        "--trace", metavar="CSV", help="job trace (submit_time_s,duration_s,gpus,kind)"
    )
    bsh.add_argument("--prices", metavar="CSV", help="energy prices (time,price_per_mwh)")
    bsh.add_argument("--weather", metavar="CSV", help="weather (time,ambient_c[,...])")
    bsh.add_argument("--scenario", default="normal-day", metavar="NAME|FILE")
    bsh.add_argument("--days", type=_positive_float, default=2.0, help="days simulated (2)")
    bsh.add_argument(
        "--gpus",
        type=_positive_int,
        metavar="N",
        help="GPUs of the site (default: the demo's; with --trace, 1.5x its mean offered load)",
    )
    bfc = _bench(
        bsub, "forecast", help="learned thermal model vs persistence and RC on simulated days"
    )
    _site(bfc)
    _weather(bfc)
    bfc.add_argument("--days", type=_positive_float, default=10.0, help="days simulated (10)")
    bfc.add_argument(
        "--train-days", type=_positive_float, default=7.0, help="days trained on (first 7)"
    )
    bfc.add_argument("--seed", type=int, default=0)
    bfc.add_argument("--db", metavar="FILE", help="keep the study's historian in FILE")
    bfc.add_argument(
        "--from-db", metavar="FILE", help="evaluate an existing study historian, no simulation"
    )
    bhr = _bench(
        bsub,
        "headroom",
        help="heat headroom tested by stepping copies of the plant (and an oracle)",
    )
    _site(bhr)
    _weather(bhr)
    bhr.add_argument("--days", type=_positive_float, default=7.0, help="hot days tested on (7)")
    bhr.add_argument(
        "--train-days", type=_positive_float, default=3.0, help="ordinary days trained on (3)"
    )
    bhr.add_argument(
        "--points", type=_positive_int, default=120, help="operating points stepped (120)"
    )
    bhr.add_argument("--seed", type=int, default=0)
    bhr.add_argument("--db", metavar="FILE", help="keep the study's historian in FILE")
    bhi = _bench(
        bsub, "historian", help="historian: caller cost of a scan/event, writer throughput, disk"
    )
    bhi.add_argument("--points", type=_positive_int, default=10_000, help="points per scan")
    bhi.add_argument("--scans", type=_positive_int, default=300, help="scans per phase")
    bfa = _bench(
        bsub, "faults", help="seeded fault campaign over real Modbus: nothing lost, nothing crashed"
    )
    bfa.add_argument("--seed", type=int, default=0)
    bfa.add_argument(
        "--runs", type=_positive_int, default=200, help="controller kill -9 instants (200)"
    )
    bfa.add_argument(
        "--frames", type=_positive_int, default=10_000, help="fuzz frames at the server (10,000)"
    )
    bfa.add_argument(
        "--only",
        metavar="CLASS,...",
        help="run these classes only: modbus_server_fuzz, modbus_client, device_loss, "
        "controller_kill9, sensor_faults, clock_step, disk",
    )
    bre = _bench(
        bsub, "retrain", help="scan-loop wake-ups during a retrain: in a thread vs its own process"
    )
    bre.add_argument(
        "--hours", type=_positive_float, default=6.0, help="hours of history trained on (6)"
    )
    bso = _bench(
        bsub,
        "soak",
        help="memory over a simulated month in lockstep, retention running: levels off?",
    )
    bso.add_argument("--days", type=_positive_float, default=30.0, help="simulated days (30)")
    bso.add_argument(
        "--scan-s", type=_positive_float, default=5.0, help="controller scan in seconds (5)"
    )
    bso.add_argument("--seed", type=int, default=0)
    bso.add_argument(
        "--raw-days", type=_positive_float, default=7.0, help="raw telemetry kept (7, as run)"
    )
    bso.add_argument(
        "--retrain-days",
        type=float,
        default=7.0,
        help="data days between retrains of the model (7; 0: never, the physics prior only)",
    )
    bso.add_argument(
        "--trace", action="store_true", help="tracemalloc: the allocation sites that grew"
    )
    bls = _bench(
        bsub,
        "lockstep",
        help="controller and plant in lockstep: speedup, stage shares, plant-only floor",
    )
    _site(bls)
    bls.add_argument("--scenario", default="heatwave", metavar="NAME|FILE")
    bls.add_argument("--hours", type=_positive_float, default=2.0, help="simulated hours (2)")
    bls.add_argument(
        "--scan-s", type=_positive_float, default=None, help="controller scan in s (the site's)"
    )
    _learn_h(bls, lead="as simulate: ")
    bco = _bench(
        bsub,
        "cooling",
        help="cooling energy: fixed design setpoints vs thermogate, same site and load",
    )
    _site(bco)
    bco.add_argument("--scenario", default="heatwave", metavar="NAME|FILE")
    _weather(bco)
    bco.add_argument("--days", type=_positive_float, default=1.0, help="days simulated (1)")
    bco.add_argument(
        "--scan-s", type=_positive_float, default=5.0, help="controller scan in seconds (5)"
    )
    bco.add_argument("--seed", type=int, default=0)
    bdr = _bench(
        bsub,
        "dr",
        help="under-frequency shed timed over real Modbus: frequency dips in the served plant",
    )
    bdr.add_argument("--site", metavar="FILE", help="a site with an armed [grid] relay")
    bdr.add_argument(
        "--events", type=_positive_int, default=60, help="tripping dips (near misses come extra)"
    )
    return p


def _bench(bsub: Any, name: str, help: str) -> argparse.ArgumentParser:
    """A ``bench`` subcommand: every one prints JSON with ``--json``."""
    b = bsub.add_parser(name, help=help)
    b.add_argument("--json", action="store_true", help="print the result as JSON")
    b.set_defaults(func=cmd_bench)
    return b


def _site(p: argparse.ArgumentParser) -> None:
    p.add_argument("--site", metavar="FILE", help="site description (default: built-in demo)")


def _learn_h(p: argparse.ArgumentParser, lead: str = "without --model: ") -> None:
    p.add_argument(
        "--learn-h",
        type=float,
        default=None,
        metavar="H",
        help=f"{lead}learn a model from the run's first H hours "
        "(default a third of the run, at most 6; the physics prior forecasts until "
        "then, and alone in runs under 3 h; 0 = no forecasting)",
    )


def _weather(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--weather", metavar="CSV", help="measured weather (time,ambient_c[,...]; hourly is fine)"
    )


def configure_logging(verbose: int) -> None:
    """Warnings and errors always; ``-v`` adds what the background threads do, ``-vv``
    everything (pymodbus frames stay at their own level unless asked for)."""
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
        stream=sys.stderr,
    )
    if verbose < 3:  # -vvv: pymodbus's own debug output too
        logging.getLogger("pymodbus").setLevel(max(level, logging.INFO))


def main(argv: Sequence[str] | None = None) -> int:
    single_malloc_arena()  # before any thread: a replaced model's pages can go back
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ThermogateError as exc:
        print(f"thermogate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `thermogate points | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
