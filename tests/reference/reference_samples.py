"""Small reference workloads shared by the tests."""

MINIMAL = """
[reference]
name = "mini"
seed = 1

[memory.node0]
size = "256MiB"

[swap]
size = "64MiB"

[zswap]
enabled = true

[cgroup]
memory_max = "8MiB"

[workload]
footprint = "12MiB"
content = "text"
passes = 1
"""

TIERED = """
[reference]
name = "tiered"
seed = 2

[memory.node0]
size = "192MiB"

[memory.node1]
size = "128MiB"
latency_ns = 250
bandwidth = "10GiB"

[tunables]
demotion_enabled = true
numa_balancing = 2

[workload]
footprint = "16MiB"
content = "zero"
order = "random"
passes = 2
op = "write"
"""
