"""Workload gating: which jobs run, where and at what power (issue 10).

``cluster`` is the GPU side as a scheduler sees it (jobs, admission,
preemption, the books); the planner that sets its capacity from headroom,
prices and grid commitments plugs into the core's planning seam.
"""
