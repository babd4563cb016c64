"""The OPC UA face of thermogate: facility SCADA browses, subscribes and commands here.

An asyncua server runs in its own thread and event loop (``server.OpcUaFace``)
so that no client, however slow, ever delays a scan. The address space is
generated from the site description and its point map (``space.py``): the site's
loops, tanks, racks, feeders and workloads with their points as analog items
with engineering units and ranges, each device with an identification and a
NAMUR NE107 health, and a status code on every value that follows the
controller's quality (a stale point is never Good).

The scan hands each result over as a frozen ``snapshot.Snapshot`` (latest
wins); methods and writable setpoints (``methods.py``) become commands on the
controller's one command path, given by the run loop between two scans through
the ``bridge.CommandBridge``, with ``opcua:<user>`` as their origin, so roles,
limits, precedence and the audit are those of every other face.

Security (certificates, trust list, users) lives in ``security.py``; alarm
events and history reads in ``alarms.py`` and ``history.py``.
"""
