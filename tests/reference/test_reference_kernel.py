"""Kernel fetching: apt sources, the private apt set-up, version choice, clear failures."""

from __future__ import annotations

import lzma
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tiersim.reference import kernel as k
from tiersim.reference.errors import KernelFetchError


def _etc(tmp_path: Path, files: dict[str, str]) -> Path:
    etc = tmp_path / "etc-apt"
    (etc / "sources.list.d").mkdir(parents=True)
    for name, text in files.items():
        (etc / name).write_text(text)
    return etc


DEB822 = """Types: deb
URIs: http://mirror.invalid/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.invalid/debian/
Suites: bookworm bookworm-updates
Components: main
Signed-By: /keys/debian.gpg
"""


def test_deb822_sources_skip_security(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIERSIM_DEBIAN_MIRROR", raising=False)
    etc = _etc(tmp_path, {"sources.list.d/debian.sources": DEB822})
    assert k.debian_mirror(etc) == ("http://mirror.invalid/debian", "/keys/debian.gpg")


def test_one_line_sources_and_other_vendors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TIERSIM_DEBIAN_MIRROR", raising=False)
    etc = _etc(
        tmp_path,
        {
            "sources.list.d/vendor.list": "deb https://vendor.invalid/apt cloud-sdk main\n",
            "sources.list": (
                "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://m.invalid/debian trixie main\n"
            ),
            "sources.list.d/off.sources.disabled": DEB822,
        },
    )
    assert k.debian_mirror(etc) == ("http://m.invalid/debian", "/k.gpg")


def test_disabled_stanza_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIERSIM_DEBIAN_MIRROR", raising=False)
    text = "Types: deb\nURIs: http://a.invalid/debian\nSuites: trixie\nEnabled: no\n"
    etc = _etc(tmp_path, {"sources.list.d/a.sources": text})
    with pytest.raises(KernelFetchError, match="TIERSIM_DEBIAN_MIRROR"):
        k.debian_mirror(etc)


def test_mirror_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TIERSIM_DEBIAN_MIRROR", "http://override.invalid/debian")
    assert k.debian_mirror(tmp_path)[0] == "http://override.invalid/debian"


def test_pick_release() -> None:
    names = [
        "linux-binary-7.2.12+deb13-amd64",
        "linux-binary-7.3.4+deb13-amd64",
        "linux-binary-7.3.10+deb13-amd64",
        "linux-binary-7.3.11+deb13-cloud-amd64",
        "linux-binary-unsigned-7.3.12+deb13-amd64",
        "linux-binary-7.30.1+deb13-amd64",
    ]
    assert k.pick_release(names, "7.3") == "7.3.10+deb13-amd64"
    assert k.pick_release(names, "7.3.4+deb13") == "7.3.4+deb13-amd64"
    with pytest.raises(KernelFetchError, match="TIERSIM_REFERENCE_KERNEL"):
        k.pick_release(names, "8.0")


def test_private_apt_leaves_system_alone(tmp_path: Path) -> None:
    apt = k.PrivateApt(tmp_path / "apt", "http://m.invalid/debian", "/k.gpg")
    opts = apt.options()
    joined = " ".join(opts)
    for key in (
        "Dir::Etc::sourcelist",
        "Dir::Etc::sourceparts",
        "Dir::State::Lists",
        "Dir::State::status",
        "Dir::Cache",
    ):
        value = next(o for o in opts if o.startswith(key + "="))
        assert value.split("=", 1)[1].startswith(str(tmp_path)), value
    assert "/etc/apt" not in joined and "/var/lib/apt" not in joined
    assert apt.sources.read_text() == (
        "deb [signed-by=/k.gpg] http://m.invalid/debian trixie-backports main\n"
    )


class FakeRunner:
    """Plays apt-get / apt-cache / dpkg-deb; fails where told."""

    def __init__(self, fail: str | None = None, names: str = "") -> None:
        self.fail = fail
        self.names = names
        self.calls: list[list[str]] = []

    def __call__(self, cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append(cmd)
        tool = cmd[0]
        verb = next(
            (c for c in cmd[1:] if not c.startswith("-") and "=" not in c and "::" not in c), ""
        )
        if self.fail and self.fail in (tool, verb):
            return subprocess.CompletedProcess(cmd, 100, "", "E: Failed to fetch (simulated)")
        if verb == "pkgnames":
            return subprocess.CompletedProcess(cmd, 0, self.names, "")
        if verb == "show":
            return subprocess.CompletedProcess(cmd, 0, "Package: x\nVersion: 7.3.4-1~bpo13+1\n", "")
        if verb == "download":
            for name in cmd[cmd.index("download") + 1 :]:
                (Path(kw["cwd"]) / f"{name}_7.3.4-1_amd64.deb").write_bytes(b"deb")
            return subprocess.CompletedProcess(cmd, 0, "", "")
        if tool == "dpkg-deb":
            deb, dest = Path(cmd[2]), Path(cmd[3])
            if deb.name.startswith("linux-binary-"):
                rel = deb.name.split("_")[0][len("linux-binary-") :]
                d = dest / "usr/lib/modules" / rel
                d.mkdir(parents=True, exist_ok=True)
                (d / "vmlinuz").write_bytes(b"kernel")
            return subprocess.CompletedProcess(cmd, 0, "", "")
        return subprocess.CompletedProcess(cmd, 0, "", "")


def _sources(tmp_path: Path) -> Path:
    return _etc(tmp_path, {"sources.list": "deb http://m.invalid/debian bookworm main\n"})


def test_fetch_unreachable_mirror_is_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIERSIM_DEBIAN_MIRROR", raising=False)
    runner = FakeRunner(fail="update")
    with pytest.raises(KernelFetchError) as info:
        k.fetch_kernel("7.3", cache=tmp_path / "c", runner=runner, etc_apt=_sources(tmp_path))
    msg = str(info.value)
    assert "cannot get a Linux 7.3 kernel from Debian trixie-backports" in msg
    assert "simulated" in msg


def test_fetch_missing_package_is_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIERSIM_DEBIAN_MIRROR", raising=False)
    runner = FakeRunner(names="linux-binary-7.2.1+deb13-amd64\n")
    with pytest.raises(KernelFetchError, match=r"no linux-binary-7\.3"):
        k.fetch_kernel("7.3", cache=tmp_path / "c", runner=runner, etc_apt=_sources(tmp_path))


def test_fetch_download_failure_is_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIERSIM_DEBIAN_MIRROR", raising=False)
    runner = FakeRunner(fail="download", names="linux-binary-7.3.4+deb13-amd64\n")
    with pytest.raises(KernelFetchError, match=r"cannot download the 7\.3\.4"):
        k.fetch_kernel("7.3", cache=tmp_path / "c", runner=runner, etc_apt=_sources(tmp_path))


def test_fetch_unpacks_caches_and_reuses_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TIERSIM_DEBIAN_MIRROR", raising=False)
    etc = _sources(tmp_path)
    cache = tmp_path / "c"
    runner = FakeRunner(names="linux-binary-7.3.4+deb13-amd64\nlinux-binary-7.2.1+deb13-amd64\n")
    kern = k.fetch_kernel("7.3", cache=cache, runner=runner, etc_apt=etc)
    assert kern.release == "7.3.4+deb13-amd64"
    assert kern.package_version == "7.3.4-1~bpo13+1"
    assert kern.vmlinuz.read_bytes() == b"kernel"
    assert not list((cache / "debs").glob("*.deb")), "debs are removed once unpacked"
    download = next(c for c in runner.calls if "download" in c)
    assert "linux-modules-7.3.4+deb13-amd64" in download
    # Mirror gone: the cached kernel still serves.
    again = k.fetch_kernel("7.3", cache=cache, runner=FakeRunner(fail="update"), etc_apt=etc)
    assert again == kern


def test_no_apt_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIERSIM_DEBIAN_MIRROR", raising=False)

    def missing(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError(cmd[0])

    with pytest.raises(KernelFetchError, match="apt-get not found"):
        k.fetch_kernel("7.3", cache=tmp_path / "c", runner=missing, etc_apt=_sources(tmp_path))


def _module(deps: str) -> bytes:
    return b"\x7fELF....\x00license=GPL\x00depends=" + deps.encode() + b"\x00name=x\x00"


def test_resolve_modules_orders_dependencies(tmp_path: Path) -> None:
    mods = tmp_path / "lib/modules/7.3.4"
    (mods / "kernel/drivers/block").mkdir(parents=True)
    (mods / "kernel/drivers/virtio").mkdir(parents=True)
    (mods / "kernel/drivers/block/virtio_blk.ko.xz").write_bytes(
        lzma.compress(_module("virtio-ring"))
    )
    (mods / "kernel/drivers/virtio/virtio_ring.ko.xz").write_bytes(lzma.compress(_module("")))
    got = k.resolve_modules(mods, ["virtio_blk"], optional=["lz4", "virtio_ring"])
    assert [name for name, _ in got] == ["virtio_ring", "virtio_blk"]
    assert got[1][1].startswith(b"\x7fELF"), "modules are decompressed on the host"
    assert k.module_depends(_module("a,b-c")) == ["a", "b_c"]
    assert k.module_depends(_module("")) == []


def test_cache_root_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TIERSIM_CACHE", str(tmp_path))
    assert k.cache_root() == tmp_path / "reference"
    monkeypatch.delenv("TIERSIM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert k.cache_root() == tmp_path / "x" / "tiersim" / "reference"
