"""Regenerate the typed Python stubs beside the .proto files.

The stubs are committed so that wheels and container images build without
grpcio-tools. `python scripts/genproto.py --check` regenerates into a
temporary folder and fails when the committed stubs differ: CI runs it so
the stubs can never drift from the contract.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def generate(out: Path) -> list[Path]:
    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    bindir = str(Path(sys.executable).parent)
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        f"--plugin=protoc-gen-mypy={bindir}/protoc-gen-mypy",
        f"--plugin=protoc-gen-mypy_grpc={bindir}/protoc-gen-mypy_grpc",
        *[str(p.relative_to(PROTO_ROOT)) for p in protos],
    ]
    subprocess.run(cmd, check=True, cwd=PROTO_ROOT)
    return [p for p in out.rglob("*") if p.name.endswith(OUT_SUFFIXES)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed stubs are stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        generated = generate(out)
        stale = []
        for path in generated:
            rel = path.relative_to(out)
            target = PROTO_ROOT / rel
            if args.check:
                if not target.exists() or not filecmp.cmp(path, target, shallow=False):
                    stale.append(str(rel))
            else:
                shutil.copyfile(path, target)
        if args.check:
            if stale:
                print("stale generated stubs (run scripts/genproto.py):", *stale, sep="\n  ")
                return 1
            print(f"generated stubs match the .proto files ({len(generated)} files)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
