"""`lifecycle chaos`: the fault harness. It tries to break the promises at random and counts what broke.

It starts a private stack (devstack/chaos/stack.py) with R stagers and R dispatchers, applies
journeys with waits of seconds through the admin API, and for each run plays a seeded workload
(devstack/chaos/workload.py) while injecting faults (devstack/chaos/faults.py). Once the workload
and every fault are over and the pipeline is idle, it compares what reached its SMTP server with
what the acknowledged events require (devstack/chaos/judge.py). It judges only what the sink holds
and what the API acknowledged. See docs/reliability.md.
"""
