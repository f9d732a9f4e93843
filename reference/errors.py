"""Errors of the reference harness.

User mistakes in a workload file are `tiersim._errors.ConfigError` (the CLI
prints them with file, line and key). Everything else that stops a reference
run -- a tool that cannot be installed, a kernel package that cannot be had,
a guest that hangs or fails -- is a `HarnessError`, so the CLI can print one
clear line instead of a traceback.
"""

from __future__ import annotations


class HarnessError(Exception):
    """A reference run cannot go on; the message says why and what to do."""


class ToolError(HarnessError):
    """A host tool (qemu-system-x86_64, a static busybox, gcc) is missing."""


class KernelFetchError(HarnessError):
    """The Debian kernel package could not be found, downloaded or unpacked."""


class GuestTimeout(HarnessError):
    """QEMU did not finish within its time bound; it has been killed."""


class GuestError(HarnessError):
    """The guest finished but did not report its counters."""
