#!/usr/bin/env bash
# Rebuild the FUSE passthrough prototype of docs/passthrough.md and print its table.
#
#   sudo docs/passthrough/prototype.sh [WORKDIR]     (default: a new dir under /var/tmp)
#
# Builds libfuse 3.17.2 under WORKDIR/prefix and the patched pyfuse3 into a venv WORKDIR/venv,
# linked to that libfuse (scripts/build-pyfuse3.sh, as `make setup` does), then runs
# prototype.py. Needs root, /dev/fuse, a kernel with CONFIG_FUSE_PASSTHROUGH (6.9+), gcc,
# python3-venv and the Python headers. Nothing outside WORKDIR is changed; remove it after.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="${1:-$(mktemp -d /var/tmp/eddy-passthrough-XXXXXX)}"
mkdir -p "$work"
cd "$work"

[ -x venv/bin/python ] || python3 -m venv venv
venv/bin/pip install -q trio  # pyfuse3's one dependency: the build installs it without deps
"$here/../../scripts/build-pyfuse3.sh" "$work/venv/bin/python" "$work/prefix"
venv/bin/python -c 'import pyfuse3; pyfuse3.get_session_fd' 2>/dev/null \
  || { echo "no passthrough pyfuse3: see $work/prefix.log" >&2; exit 1; }

venv/bin/python "$here/prototype.py" "$work"
