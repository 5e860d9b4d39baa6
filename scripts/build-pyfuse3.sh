#!/usr/bin/env bash
# Build the pyfuse3 eddy wants (FUSE passthrough, docs/passthrough.md; resuming a connection
# after its mount daemon died, docs/ARCHITECTURE.md), or keep the stock one.
#
#   scripts/build-pyfuse3.sh PYTHON PREFIX [WHEEL_DIR]
#     make setup:  scripts/build-pyfuse3.sh .venv/bin/python .venv/opt/libfuse
#     Dockerfile:  scripts/build-pyfuse3.sh python /opt/libfuse /wheels
#
# Both need libfuse >= 3.17.1 (Debian 12 ships 3.14: no passthrough, no custom session I/O)
# and a pyfuse3 with FileInfo(backing_id=...), get_session_fd(), init(resume_init=...) and
# get_init_exchange() (no release has them). So this builds libfuse 3.17.2 into PREFIX and
# pyfuse3 3.5.0 with pyfuse3-3.5.0-eddy.patch for PYTHON,
# linked with an rpath to PREFIX/lib, and installs that pyfuse3 into PYTHON's environment
# (with WHEEL_DIR: puts its wheel there in place of the stock pyfuse3 wheel).
#
# eddy runs on the stock pyfuse3 too (slower warm reads; a mount daemon that dies is replaced
# by a new mount, which running pods do not see), so this never fails a setup: if a step fails
# (no network, no compiler), it prints one line, leaves pyfuse3 and PREFIX as they were (stock
# pyfuse3 on a fresh setup), and exits 0. EDDY_FUSE_PASSTHROUGH=0 skips it.
#
# Sources are sha256-pinned; build tools come from PyPI into a temporary venv; gcc, patch and
# the Python headers must be installed. The build's output goes to PREFIX.log. 1-2 minutes.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 PYTHON PREFIX [WHEEL_DIR]" >&2; exit 2; }
# Absolute paths (the rpath must be absolute), without resolving a venv's python symlink.
python="$(realpath -s "$(command -v "$1")")"
prefix="$(realpath -ms "$2")"
wheels="${3:+$(realpath -ms "$3")}"
here="$(cd "$(dirname "$0")" && pwd)"
stock="keeping the pyfuse3 installed (stock on a fresh setup): no passthrough, no resumed mounts"

if [ "${EDDY_FUSE_PASSTHROUGH:-1}" = 0 ]; then
  echo "eddy: pyfuse3 build skipped (EDDY_FUSE_PASSTHROUGH=0): $stock"
  exit 0
fi

# From here on, a failing command ends the script with one line on the original stdout (fd 3).
log="$prefix.log"
step="creating $log"
exec 3>&1
trap 'echo "eddy: pyfuse3 build failed ($step, see $log): $stock" >&3; exit 0' ERR
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$(dirname "$prefix")"
exec >"$log" 2>&1

step="downloading the sources"
get='import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])'
"$python" -c "$get" https://deb.debian.org/debian/pool/main/f/fuse3/fuse3_3.17.2.orig.tar.gz \
  "$tmp/fuse3.tar.gz"
"$python" -c "$get" https://files.pythonhosted.org/packages/b9/a9/ce2c0513e9611ee2ffeeb482a33d23a210326801d48866df30a989562d43/pyfuse3-3.5.0.tar.gz \
  "$tmp/pyfuse3.tar.gz"
sha256sum -c <<EOF
3d932431ad94e86179e5265cddde1d67aa3bb2fb09a5bd35c641f86f2b5ed06f  $tmp/fuse3.tar.gz
88399a9494b88603230bba300f4ba9ad63fece5ed514ca3633d555a0c6a42b24  $tmp/pyfuse3.tar.gz
EOF

step="installing the build tools"
"$python" -m venv "$tmp/tools"
"$tmp/tools/bin/pip" install meson==1.12.1 ninja==1.13.2 cython==3.3.1 setuptools==84.2.1 \
  setuptools_scm==10.3.4
export PATH="$tmp/tools/bin:$PATH"

# Installed under a staging root first, so a failure below leaves PREFIX as it was.
step="building libfuse 3.17.2"
stage="$tmp/stage"
tar -xzf "$tmp/fuse3.tar.gz" -C "$tmp"
meson setup "$tmp/fuse-build" "$tmp/fuse-3.17.2" --prefix="$prefix" --libdir=lib \
  -Dutils=false -Dexamples=false -Dtests=false
meson install -C "$tmp/fuse-build" --destdir "$stage"

step="building the patched pyfuse3 3.5.0"
tar -xzf "$tmp/pyfuse3.tar.gz" -C "$tmp"
patch -p1 -d "$tmp/pyfuse3-3.5.0" <"$here/pyfuse3-3.5.0-eddy.patch"
# The sysroot points pkg-config's -I and -L at the staged libfuse; the rpath at PREFIX.
PKG_CONFIG_PATH="$stage$prefix/lib/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$stage" \
  LDFLAGS="-Wl,-rpath,$prefix/lib" \
  pip wheel --no-build-isolation --no-deps --wheel-dir "$tmp/wheel" "$tmp/pyfuse3-3.5.0"

step="installing pyfuse3"
rm -rf "$prefix"
mv "$stage$prefix" "$prefix"
if [ -n "$wheels" ]; then
  rm -f "$wheels"/pyfuse3-*.whl
  cp "$tmp"/wheel/pyfuse3-*.whl "$wheels"/
else
  "$python" -m pip install --no-deps --force-reinstall "$tmp"/wheel/pyfuse3-*.whl
fi
echo "eddy: pyfuse3 3.5.0 with passthrough and resumable sessions," \
  "linked to libfuse 3.17.2 in $prefix" >&3
