"""The fault campaign: `thermogate bench faults` (see ``bench_faults``)."""
