"""Check a results document from a cluster against the embedded run of the same scenario.

    python tests/deploy/check_results.py RESULTS.json SCENARIO.toml

The scenario's nodes are at addresses (containers, namespaces); its embedded
twin is the same file without the addresses, so the engine builds those
nodes in-process with the seeds it derives, which the cluster's nodes were
started with. Every run must match, wall-clock fields aside (DESIGN
principle 3). Used by deploy/ci-containers.sh and by tests/deploy.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from tiersim.orchestrator.launcher import toml_dumps
from tiersim.orchestrator.results import strip_wall_clock


def embedded_twin(scenario: str | Path) -> str:
    """The scenario's TOML text with every node embedded (addresses and credentials removed)."""
    raw = tomllib.loads(Path(scenario).read_text())
    for node in raw.get("nodes", []):
        for key in list(node):
            # Where the node is and how to reach it: meaningless for an embedded node.
            if key == "address" or key.startswith(("token_", "tls")):
                del node[key]
    return toml_dumps(raw)


def run_embedded(scenario: str | Path) -> list[dict[str, Any]]:
    from tiersim.orchestrator._cli import load, run_scenario

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(scenario).name
        path.write_text(embedded_twin(scenario))
        return asyncio.run(run_scenario(load(str(path))))


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two documents differ, as dotted paths (the first few)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += differences(a.get(k), b.get(k), f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            out += differences(x, y, f"{path}[{i}]")
        return out
    return [] if a == b else [f"{path}: {str(a)[:60]} != {str(b)[:60]}"]


def compare(results: dict[str, Any], scenario: str | Path) -> list[str]:
    runs = results.get("runs", [results])
    # Through JSON, as the other document came: tuples become lists.
    embedded = json.loads(json.dumps(run_embedded(scenario)))
    if len(runs) != len(embedded):
        return [f"{len(runs)} runs, embedded {len(embedded)}"]
    return differences(strip_wall_clock(runs), strip_wall_clock(embedded))


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    text = Path(argv[0]).read_text()
    try:
        results = json.loads(text)
    except ValueError as exc:
        print(f"check_results: {argv[0]} is not a results document ({exc}):\n{text[:500]}")
        return 1
    diffs = compare(results, argv[1])
    runs = results.get("runs", [results])
    for r in runs:
        vm = {k: v for h in r["hosts"].values() for k, v in h["vmstat"].items()}
        print(
            f"check_results: {r['variant']}: {r['latency']['count']} accesses, "
            f"pgmigrate_success {vm.get('pgmigrate_success', 0)}, "
            f"pgdemote {vm.get('pgdemote_kswapd', 0) + vm.get('pgdemote_direct', 0)}, "
            f"wall {r.get('wall_time_s')} s, nodes lost {len(r['failures']['nodes_lost'])}"
        )
    if diffs:
        print(f"check_results: {len(diffs)} differences from the embedded run:")
        for d in diffs[:20]:
            print(f"  {d}")
        return 1
    print("check_results: equal to the embedded run (wall-clock fields aside)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
