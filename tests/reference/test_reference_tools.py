"""Host tools: found, installed when allowed, or a clear error."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tiersim.reference import tools
from tiersim.reference.errors import ToolError


def test_dynamic_binary_is_not_static() -> None:
    assert not tools.is_static_elf(Path(sys.executable).resolve())
    assert not tools.is_static_elf(Path(__file__))


def test_missing_tools_without_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("TIERSIM_QEMU", raising=False)
    monkeypatch.delenv("TIERSIM_BUSYBOX", raising=False)
    monkeypatch.setattr(tools, "BUSYBOX_CANDIDATES", ())
    with pytest.raises(ToolError) as info:
        tools.ensure_tools(install=False)
    msg = str(info.value)
    assert "qemu-system-x86_64 (Debian package qemu-system-x86)" in msg
    assert "busybox (Debian package busybox-static)" in msg


def test_failed_install_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("TIERSIM_QEMU", raising=False)
    monkeypatch.setattr(tools, "BUSYBOX_CANDIDATES", ())
    monkeypatch.setattr(tools.os, "geteuid", lambda: 0)
    calls: list[list[str]] = []

    def apt(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        return subprocess.CompletedProcess(
            cmd, 100, "", "E: Unable to locate package qemu-system-x86"
        )

    with pytest.raises(ToolError, match="apt-get could not install qemu-system-x86"):
        tools.ensure_tools(install=True, runner=apt)
    assert calls and calls[0][:2] == ["apt-get", "-q"]


def test_install_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tools.os, "geteuid", lambda: 1000)
    with pytest.raises(ToolError, match="run as root"):
        tools.apt_install(["qemu-system-x86"])


def test_env_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "qemu"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("TIERSIM_QEMU", str(fake))
    monkeypatch.setenv("TIERSIM_BUSYBOX", str(fake))
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    found = tools.ensure_tools(install=False)
    assert found.qemu == fake and found.busybox == fake


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
def test_guest_workload_builds_static(tmp_path: Path) -> None:
    gcc = Path(shutil.which("gcc") or "gcc")
    try:
        out = tools.build_workload(gcc, tmp_path)
    except ToolError as exc:
        pytest.skip(f"no static libc here: {exc}")
    assert tools.is_static_elf(out)
    assert tools.build_workload(gcc, tmp_path) == out, "cached by source hash"
