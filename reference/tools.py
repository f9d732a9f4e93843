"""Host tools the harness needs, found or installed.

QEMU and a statically linked busybox come from the distribution's packages
(``qemu-system-x86``, ``busybox-static``), installed with the system's own
apt-get when missing and when we may (root). gcc with a static libc builds
the guest workload. ``TIERSIM_QEMU`` and ``TIERSIM_BUSYBOX`` point at other
binaries. Whatever cannot be had ends in a `ToolError` naming the package to
install, never in a failure deep inside a boot.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import ToolError

Runner = Callable[..., "subprocess.CompletedProcess[str]"]

# binary -> Debian packages that provide it (a static link needs libc6-dev's libc.a,
# which apt does not pull in with --no-install-recommends)
PACKAGES = {
    "qemu-system-x86_64": "qemu-system-x86",
    "busybox": "busybox-static",
    "gcc": "gcc libc6-dev",
}
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox", "/usr/lib/busybox/busybox-static")


@dataclass(frozen=True)
class Tools:
    qemu: Path
    busybox: Path
    gcc: Path


def is_static_elf(path: Path) -> bool:
    """True when `path` is an ELF executable without a program interpreter.

    The guest has no dynamic loader and no libc, so busybox must be static;
    Debian's plain ``busybox`` package is dynamically linked.
    """
    try:
        with path.open("rb") as f:
            ident = f.read(64)
            if len(ident) < 64 or ident[:4] != b"\x7fELF" or ident[4] != 2:
                return False
            end = "<" if ident[5] == 1 else ">"
            phoff = struct.unpack_from(end + "Q", ident, 32)[0]
            phentsize, phnum = struct.unpack_from(end + "HH", ident, 54)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    for i in range(phnum):
        (p_type,) = struct.unpack_from(end + "I", table, i * phentsize)
        if p_type == 3:  # PT_INTERP
            return False
    return True


def _find_qemu() -> Path | None:
    env = os.environ.get("TIERSIM_QEMU")
    if env:
        return Path(env)
    hit = shutil.which("qemu-system-x86_64")
    return Path(hit) if hit else None


def _find_busybox() -> Path | None:
    env = os.environ.get("TIERSIM_BUSYBOX")
    if env:
        return Path(env)
    for cand in (shutil.which("busybox"), *BUSYBOX_CANDIDATES):
        if cand and is_static_elf(Path(cand)):
            return Path(cand)
    return None


def _find_gcc() -> Path | None:
    hit = shutil.which(os.environ.get("CC", "gcc"))
    return Path(hit) if hit else None


def apt_install(packages: list[str], runner: Runner = subprocess.run) -> None:
    """Install Debian packages with the system's apt-get (no recommends)."""
    if os.geteuid() != 0:
        raise ToolError(
            f"missing: {', '.join(packages)}; run as root to let the harness install them, "
            f"or install them yourself (apt-get install {' '.join(packages)})"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    steps = [
        ["apt-get", "-q", "update"],
        ["apt-get", "-q", "install", "-y", "--no-install-recommends", *packages],
    ]
    for step in steps:
        try:
            proc = runner(step, capture_output=True, text=True, env=env, timeout=1800, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            raise ToolError(f"cannot run {' '.join(step[:3])}: {exc}") from None
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-2:]
            raise ToolError(f"apt-get could not install {', '.join(packages)}: {' / '.join(tail)}")


def ensure_tools(*, install: bool = True, runner: Runner = subprocess.run) -> Tools:
    """QEMU, a static busybox and gcc, installing missing ones when allowed."""
    finders: dict[str, Callable[[], Path | None]] = {
        "qemu-system-x86_64": _find_qemu,
        "busybox": _find_busybox,
        "gcc": _find_gcc,
    }
    found = {name: find() for name, find in finders.items()}
    missing = [name for name, path in found.items() if path is None]
    if missing and install:
        apt_install([pkg for name in missing for pkg in PACKAGES[name].split()], runner)
        found = {name: find() for name, find in finders.items()}
        missing = [name for name, path in found.items() if path is None]
    if missing:
        what = ", ".join(f"{name} (Debian package {PACKAGES[name]})" for name in missing)
        raise ToolError(f"not available: {what}")
    for name, path in found.items():
        if path is not None and not os.access(path, os.X_OK):
            raise ToolError(f"{name} at {path} is not executable")
    qemu, busybox, gcc = (found[n] for n in finders)
    assert qemu and busybox and gcc
    return Tools(qemu=qemu, busybox=busybox, gcc=gcc)


def guest_source() -> bytes:
    """The C source of the guest workload, shipped with the package."""
    return resources.files("tiersim.reference").joinpath("guest/workload.c").read_bytes()


def build_workload(gcc: Path, build_dir: Path, runner: Runner = subprocess.run) -> Path:
    """Compile the guest workload statically (cached by the source's hash).

    Static, because the initramfs holds no libc; -O2, so that under TCG the
    guest's time goes to the kernel's memory management, not to our loop.
    """
    src = guest_source()
    digest = hashlib.sha256(src + str(gcc).encode()).hexdigest()[:16]
    out = build_dir / f"workload-{digest}"
    if out.is_file():
        return out
    build_dir.mkdir(parents=True, exist_ok=True)
    c_file = build_dir / f"workload-{digest}.c"
    c_file.write_bytes(src)
    tmp = out.with_suffix(".tmp")
    cmd = [str(gcc), "-static", "-O2", "-Wall", "-o", str(tmp), str(c_file)]
    try:
        proc = runner(cmd, capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ToolError(f"cannot run {gcc}: {exc}") from None
    if proc.returncode != 0:
        raise ToolError(
            "building the guest workload failed (is a static libc installed? Debian: "
            f"libc6-dev): {proc.stderr.strip()[-600:]}"
        )
    tmp.rename(out)
    return out
