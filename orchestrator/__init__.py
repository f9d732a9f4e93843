"""The orchestrator: the kernel's tiering mechanisms in simulated time."""
