"""Fetch and cache a current Debian kernel, without touching the system's apt set-up.

The reference kernel is Debian's own build from the ``trixie-backports``
suite (Linux 7.3.x at the time of writing): a distribution kernel with the
distribution's configuration is what users of tiersim run, and Debian keeps
old versions downloadable, so a recording can be reproduced.

apt is driven with a private configuration -- its own source list, lists,
cache and (empty) dpkg status -- so the host's ``/etc/apt`` and its package
database stay exactly as they were. The mirror is read at run time from the
host's own apt sources (one-line ``.list`` files or deb822 ``.sources``
files), because no registry host name may be written into the project; the
environment variable ``TIERSIM_DEBIAN_MIRROR`` overrides it.

Debian splits a kernel into ``linux-binary-<abi>`` (``vmlinuz``) and
``linux-modules-<abi>`` (the modules, ``.ko.xz``). Both are unpacked with
``dpkg-deb -x`` under the cache; the ``.deb`` files are deleted afterwards.
Nothing is ever written inside the repository.
"""

from __future__ import annotations

import json
import lzma
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import KernelFetchError

SUITE = "trixie-backports"
DEFAULT_SERIES = "7.3"
DEFAULT_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
# Debian release names and aliases, to tell a Debian archive entry from others
# (a vendor repository, a language runtime) in the host's sources.
DEBIAN_SUITES = frozenset(
    {
        "buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid",
        "oldoldstable", "oldstable", "stable", "testing", "unstable",
    }
)  # fmt: skip

Runner = Callable[..., "subprocess.CompletedProcess[str]"]


def cache_root() -> Path:
    """Where downloaded and built artefacts live: ``$TIERSIM_CACHE/reference``.

    ``TIERSIM_CACHE`` defaults to ``~/.cache/tiersim`` (``$XDG_CACHE_HOME`` is
    honoured). Kernels, busybox and disk images never go into the repository.
    """
    base = os.environ.get("TIERSIM_CACHE")
    if base:
        return Path(base).expanduser() / "reference"
    xdg = os.environ.get("XDG_CACHE_HOME")
    root = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return root / "tiersim" / "reference"


# --------------------------------------------------------------------------
# The host's apt sources.


@dataclass(frozen=True)
class AptSource:
    """One ``deb`` entry of the host's apt sources."""

    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str | None = None


def _parse_one_line(text: str) -> list[AptSource]:
    out = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        rest = line[4:].strip()
        signed_by = None
        if rest.startswith("["):
            end = rest.find("]")
            if end < 0:
                continue
            for opt in rest[1:end].split():
                key, _, value = opt.partition("=")
                if key == "signed-by":
                    signed_by = value
            rest = rest[end + 1 :].strip()
        parts = rest.split()
        if len(parts) >= 2:
            out.append(AptSource(parts[0], (parts[1],), tuple(parts[2:]), signed_by))
    return out


def _parse_deb822(text: str) -> list[AptSource]:
    out = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for raw in stanza.splitlines():
            if raw.startswith("#"):
                continue
            if raw[:1] in (" ", "\t") and key:
                fields[key] += "\n" + raw.strip()
                continue
            key, sep, value = raw.partition(":")
            if not sep:
                key = None
                continue
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        signed_by = fields.get("signed-by")
        if signed_by and "\n" in signed_by:  # an inline key block: use the default keyring
            signed_by = None
        for uri in fields.get("uris", "").split():
            out.append(
                AptSource(
                    uri,
                    tuple(fields.get("suites", "").split()),
                    tuple(fields.get("components", "").split()),
                    signed_by,
                )
            )
    return out


def read_apt_sources(etc_apt: Path = Path("/etc/apt")) -> list[AptSource]:
    """All ``deb`` entries of ``sources.list`` and ``sources.list.d/*.{list,sources}``."""
    found: list[AptSource] = []
    main = etc_apt / "sources.list"
    if main.is_file():
        found += _parse_one_line(main.read_text(errors="replace"))
    parts = etc_apt / "sources.list.d"
    if parts.is_dir():
        for path in sorted(parts.iterdir()):
            if path.suffix == ".list":
                found += _parse_one_line(path.read_text(errors="replace"))
            elif path.suffix == ".sources":
                found += _parse_deb822(path.read_text(errors="replace"))
    return found


def debian_mirror(etc_apt: Path = Path("/etc/apt")) -> tuple[str, str | None]:
    """The Debian archive the host uses, and the keyring its entry names.

    Picks the first entry whose suite is a Debian release (``bookworm``,
    ``trixie-updates`` ...) and that is not the security archive, which does
    not carry backports.
    """
    env = os.environ.get("TIERSIM_DEBIAN_MIRROR")
    if env:
        return env, None
    for src in read_apt_sources(etc_apt):
        if "security" in src.uri:
            continue
        for suite in src.suites:
            base = suite.split("-", 1)[0]
            if base in DEBIAN_SUITES and not suite.endswith("-security"):
                return src.uri.rstrip("/"), src.signed_by
    raise KernelFetchError(
        f"no Debian archive found in {etc_apt}/sources.list or {etc_apt}/sources.list.d/; "
        "set TIERSIM_DEBIAN_MIRROR to the URI of a Debian mirror"
    )


# --------------------------------------------------------------------------
# Private apt.


@dataclass(frozen=True)
class Kernel:
    """An unpacked kernel: its image, its module tree and its versions."""

    release: str  # uname -r, e.g. "7.3.4+deb13-amd64"
    package_version: str  # e.g. "7.3.4-1~bpo13+1"
    vmlinuz: Path
    modules_dir: Path  # .../lib/modules/<release>

    def manifest(self) -> dict[str, str]:
        return {"release": self.release, "package_version": self.package_version}


class PrivateApt:
    """apt-get / apt-cache with their own sources, lists, cache and status.

    Empty source-part and preference directories and an empty status file keep the host's
    sources and installed packages out of every answer; downloads run as the
    current user (``APT::Sandbox::User``) since the cache belongs to it.
    """

    def __init__(
        self,
        root: Path,
        mirror: str,
        keyring: str | None,
        *,
        suite: str = SUITE,
        runner: Runner = subprocess.run,
        timeout_s: float = 600.0,
    ) -> None:
        self.root = root
        self.runner = runner
        self.timeout_s = timeout_s
        for sub in ("lists/partial", "cache/archives/partial", "etc/parts", "etc/preferences"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        status = root / "status"
        if not status.exists():
            status.write_text("")
        signed = keyring if keyring else (str(DEFAULT_KEYRING) if DEFAULT_KEYRING.exists() else "")
        opts = f"[signed-by={signed}] " if signed else ""
        self.sources = root / "etc" / "sources.list"
        self.sources.write_text(f"deb {opts}{mirror} {suite} main\n")

    def options(self) -> list[str]:
        r = self.root
        user = os.environ.get("USER") or ("root" if os.geteuid() == 0 else "")
        opts = {
            "Dir::Etc::sourcelist": str(self.sources),
            "Dir::Etc::sourceparts": str(r / "etc" / "parts"),
            "Dir::Etc::preferencesparts": str(r / "etc" / "preferences"),
            "Dir::State::Lists": str(r / "lists"),
            "Dir::State::status": str(r / "status"),
            "Dir::Cache": str(r / "cache"),
            "APT::Architecture": "amd64",
            "APT::Get::List-Cleanup": "false",
            "Debug::NoLocking": "true",
        }
        if user:
            opts["APT::Sandbox::User"] = user
        return [arg for k, v in opts.items() for arg in ("-o", f"{k}={v}")]

    def _run(self, argv: Sequence[str], *, cwd: Path | None = None) -> str:
        cmd = [*argv[:1], *self.options(), *argv[1:]]
        try:
            proc = self.runner(
                cmd,
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=self.timeout_s,
                check=False,
            )
        except FileNotFoundError:
            raise KernelFetchError(
                f"{argv[0]} not found: the reference harness needs apt (a Debian-like host) "
                "to fetch the kernel package"
            ) from None
        except subprocess.TimeoutExpired:
            raise KernelFetchError(
                f"{' '.join(argv[:2])} took longer than {self.timeout_s:.0f}s; is the mirror "
                "reachable?"
            ) from None
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
            raise KernelFetchError(
                f"{' '.join(argv[:2])} failed: {' / '.join(tail) or 'no output'}"
            )
        return proc.stdout

    def update(self) -> None:
        self._run(["apt-get", "-q", "update"])

    def pkgnames(self, prefix: str) -> list[str]:
        return self._run(["apt-cache", "pkgnames", prefix]).split()

    def version(self, package: str) -> str:
        out = self._run(["apt-cache", "show", "--no-all-versions", package])
        m = re.search(r"^Version:\s*(\S+)", out, re.M)
        if not m:
            raise KernelFetchError(f"apt-cache show {package}: no version")
        return m.group(1)

    def download(self, packages: Iterable[str], dest: Path) -> list[Path]:
        dest.mkdir(parents=True, exist_ok=True)
        names = list(packages)
        self._run(["apt-get", "-q", "download", *names], cwd=dest)
        debs = []
        for name in names:
            hits = sorted(dest.glob(f"{name}_*.deb"))
            if not hits:
                raise KernelFetchError(f"apt-get download {name}: no .deb appeared in {dest}")
            debs.append(hits[-1])
        return debs


_BINARY_RE = re.compile(r"^linux-binary-(\d+)\.(\d+)(?:\.(\d+))?\+([a-z0-9.]+)-amd64$")


def pick_release(names: Iterable[str], series: str) -> str:
    """The newest plain amd64 kernel ABI of `series` among ``linux-binary-*`` names.

    ``series`` is ``"7.3"`` (newest 7.3.x) or an exact ABI such as
    ``"7.3.4+deb13"``. Cloud, real-time and unsigned flavours are skipped.
    """
    best: tuple[tuple[int, ...], str] | None = None
    for name in names:
        m = _BINARY_RE.match(name)
        if not m:
            continue
        abi = name[len("linux-binary-") : -len("-amd64")]
        nums = tuple(int(g) for g in m.groups()[:3] if g is not None)
        version = ".".join(map(str, nums))
        if not (abi == series or version == series or version.startswith(series + ".")):
            continue
        if best is None or nums > best[0]:
            best = (nums, abi)
    if best is None:
        raise KernelFetchError(
            f"no linux-binary-{series}*-amd64 package in {SUITE}; set TIERSIM_REFERENCE_KERNEL "
            "to a series or ABI the suite carries (e.g. 7.3 or 7.3.4+deb13)"
        )
    return best[1] + "-amd64"


def _unpack(deb: Path, dest: Path, runner: Runner) -> None:
    try:
        proc = runner(
            ["dpkg-deb", "-x", str(deb), str(dest)], capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        raise KernelFetchError("dpkg-deb not found: it is needed to unpack the kernel") from None
    if proc.returncode != 0:
        raise KernelFetchError(f"dpkg-deb -x {deb.name} failed: {proc.stderr.strip()}")


def _load_cached(kdir: Path) -> Kernel | None:
    manifest = kdir / "kernel.json"
    if not manifest.is_file():
        return None
    try:
        meta = json.loads(manifest.read_text())
        release = meta["release"]
    except (OSError, ValueError, KeyError):
        return None
    mods = kdir / "root" / "usr" / "lib" / "modules" / release
    vmlinuz = mods / "vmlinuz"
    if not vmlinuz.is_file():
        return None
    return Kernel(release, meta.get("package_version", "?"), vmlinuz, mods)


def cached_kernels(cache: Path | None = None) -> list[Kernel]:
    root = (cache or cache_root()) / "kernels"
    if not root.is_dir():
        return []
    found = [k for d in sorted(root.iterdir()) if (k := _load_cached(d))]
    return found


def fetch_kernel(
    series: str | None = None,
    *,
    cache: Path | None = None,
    runner: Runner = subprocess.run,
    etc_apt: Path = Path("/etc/apt"),
    offline_ok: bool = True,
) -> Kernel:
    """The newest cached-or-downloadable kernel of `series` (default 7.3, or
    ``$TIERSIM_REFERENCE_KERNEL``).

    With the mirror unreachable, a kernel of the series already in the cache
    is used (so recordings can be repeated offline); with none cached, a
    `KernelFetchError` says what failed.
    """
    series = series or os.environ.get("TIERSIM_REFERENCE_KERNEL") or DEFAULT_SERIES
    cache = cache or cache_root()

    def matching_cached() -> list[Kernel]:
        return [
            k
            for k in cached_kernels(cache)
            if k.release.startswith(series + ".")
            or k.release.startswith(series + "+")
            or k.release == series + "-amd64"
        ]

    try:
        mirror, keyring = debian_mirror(etc_apt)
        apt = PrivateApt(cache / "apt", mirror, keyring, runner=runner)
        apt.update()
        release = pick_release(apt.pkgnames(f"linux-binary-{series}"), series)
    except KernelFetchError as exc:
        have = matching_cached()
        if offline_ok and have:
            return have[-1]
        raise KernelFetchError(
            f"cannot get a Linux {series} kernel from Debian {SUITE}: {exc}"
        ) from None
    kdir = cache / "kernels" / release
    cached = _load_cached(kdir)
    if cached is not None:
        return cached
    binary, modules = f"linux-binary-{release}", f"linux-modules-{release}"
    try:
        package_version = apt.version(binary)
        debs = apt.download([binary, modules], cache / "debs")
    except KernelFetchError as exc:
        raise KernelFetchError(f"cannot download the {release} kernel: {exc}") from None
    tmp = kdir.with_name(kdir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "root").mkdir(parents=True)
    for deb in debs:
        _unpack(deb, tmp / "root", runner)
    mods = tmp / "root" / "usr" / "lib" / "modules" / release
    if not (mods / "vmlinuz").is_file():
        raise KernelFetchError(f"{binary} holds no usr/lib/modules/{release}/vmlinuz")
    (tmp / "kernel.json").write_text(
        json.dumps({"release": release, "package_version": package_version}) + "\n"
    )
    shutil.rmtree(kdir, ignore_errors=True)
    tmp.rename(kdir)
    for deb in debs:
        deb.unlink(missing_ok=True)
    kernel = _load_cached(kdir)
    assert kernel is not None
    return kernel


# --------------------------------------------------------------------------
# Modules.

_MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


def _module_name(path: Path) -> str:
    name = path.name
    for suffix in _MODULE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)].replace("-", "_")
    return name


def module_index(modules_dir: Path) -> dict[str, Path]:
    """Module name (dashes as underscores) -> file, for every module of the tree."""
    out: dict[str, Path] = {}
    for suffix in _MODULE_SUFFIXES:
        for path in (modules_dir / "kernel").rglob(f"*{suffix}"):
            out.setdefault(_module_name(path), path)
    return out


def read_module(path: Path) -> bytes:
    """The ELF object of a module, decompressed (the guest's busybox insmod
    cannot be relied on to decompress, so ``xz -dc`` is done on the host)."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        import gzip

        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        try:
            proc = subprocess.run(
                ["zstd", "-dc", str(path)], capture_output=True, check=True, timeout=60
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise KernelFetchError(f"cannot decompress {path.name}: {exc}") from None
        return proc.stdout
    return data


def module_depends(elf: bytes) -> list[str]:
    """The ``depends=`` list of a module's ``.modinfo`` section."""
    m = re.search(rb"(?:^|\x00)depends=([^\x00]*)\x00", elf)
    if not m or not m.group(1):
        return []
    return [d.decode().replace("-", "_") for d in m.group(1).split(b",") if d]


def resolve_modules(
    modules_dir: Path, wanted: Iterable[str], *, optional: Iterable[str] = ()
) -> list[tuple[str, bytes]]:
    """Modules to load, dependencies first, as (name, ELF bytes).

    A `wanted` module that is not a file is assumed built in (Debian builds
    zswap, zsmalloc and lz4 in); so is a missing dependency. `optional`
    modules are included only when they exist as files.
    """
    index = module_index(modules_dir)
    order: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in seen:
            return
        seen.add(name)
        path = index.get(name)
        if path is None:
            return  # built in
        elf = read_module(path)
        for dep in module_depends(elf):
            visit(dep)
        order.append((name, elf))

    for name in wanted:
        visit(name)
    for name in optional:
        if name.replace("-", "_") in index:
            visit(name)
    return order
