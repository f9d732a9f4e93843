#!/usr/bin/env bash
# Re-record every reference workload on the real kernel, then compare tiersim
# with the fresh recordings (docs/fidelity.md).
#
# Boots Debian's Linux 7.3 under QEMU (TCG, no KVM needed), three times per
# workload: expect 20-40 minutes. The first run needs root on a Debian-like
# host with network access: apt-get installs qemu-system-x86 and
# busybox-static when missing, and the kernel package is fetched with a
# private apt configuration into the cache, never into the repository.
#
# Environment:
#   TIERSIM_REFERENCE_OUT   where the recordings go (default: a scratch
#                           directory; set it to reference/data to refresh
#                           the committed recordings)
#   TIERSIM_REFERENCE_RUNS  boots per workload (default: 3)
#   TIERSIM_CACHE           kernels, apt state, images (default: ~/.cache/tiersim)
#   TIERSIM_REFERENCE_ONLY  a pytest -k expression to record some workloads only
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${VIRTUAL_ENV:-}" ] && [ -f .venv/bin/activate ]; then
  . .venv/bin/activate
fi

out="${TIERSIM_REFERENCE_OUT:-$(mktemp -d -t tiersim-reference.XXXXXX)}"
mkdir -p "$out"
echo "reference-ci: recording into $out"

select=()
if [ -n "${TIERSIM_REFERENCE_ONLY:-}" ]; then
  select=(-k "$TIERSIM_REFERENCE_ONLY")
fi

# 1. Boot the kernel on every library workload and record it; each recording
#    is also checked against the committed one (tests/reference/test_reference_rerecord.py).
TIERSIM_REFERENCE=1 TIERSIM_REFERENCE_OUT="$out" \
  pytest -q -m reference "${select[@]}" tests/reference/test_reference_rerecord.py

# 2. tiersim against the fresh recordings (known gaps are expected failures).
#    Only with the full library at three boots or more: one boot gives a
#    range of a single value, narrower than what the kernel itself repeats.
if [ -z "${TIERSIM_REFERENCE_ONLY:-}" ] && [ "${TIERSIM_REFERENCE_RUNS:-3}" -ge 3 ]; then
  TIERSIM_REFERENCE_DATA="$out" pytest -q tests/reference/test_reference_fidelity.py
fi
