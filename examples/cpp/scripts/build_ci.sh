#!/usr/bin/env bash
# Builds the C++ runner for CI against ONNX Runtime obtained without installing it system-wide:
#   - the C API library from the onnxruntime wheel in the Python environment
#     (onnxruntime/capi/libonnxruntime.so.1.*),
#   - the headers and CMake files of Debian trixie's libonnxruntime-dev, fetched with a private apt
#     configuration (own sources list, state and cache; Debian's archive keyring) and unpacked with
#     dpkg-deb -x into a cache folder, never installed.
# Installs cmake, g++, nlohmann-json3-dev and libstb-dev where missing (apt-get; root or sudo).
#
# usage: examples/cpp/scripts/build_ci.sh [release|asan|all]     (default: all)
#   release: -O3 (CMake Release), -Wall -Wextra -Wpedantic -Werror -> examples/cpp/build-ci/release/subtune_edge_run
#   asan:    AddressSanitizer + UBSan, -O1 -g, same warnings        -> examples/cpp/build-ci/asan/subtune_edge_run
#   (every variant also configure-checks -DONNXRUNTIME_ROOT on a release-archive layout)
# Prints the path of each binary built on stdout. The cache is kept between runs; delete it to pick
# up a newer libonnxruntime-dev.
# environment:
#   PYTHON               the Python whose onnxruntime wheel to use (default: python3)
#   SUBTUNE_EDGE_CACHE   cache folder (default: ${XDG_CACHE_HOME:-~/.cache}/subtune-edge)
#   BUILD_JOBS           parallel compile jobs (default: 2)
# exit status: 0 built; 75 the Debian archive could not be reached (nothing cached); other: failure.
set -euo pipefail

VARIANT="${1:-all}"
case "$VARIANT" in release|asan|all) ;; *) echo "usage: $0 [release|asan|all]" >&2; exit 2 ;; esac

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"           # examples/cpp
PYTHON="${PYTHON:-python3}"
CACHE="${SUBTUNE_EDGE_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/subtune-edge}/cpp-deps"
BUILD_ROOT="$HERE/build-ci"
JOBS="${BUILD_JOBS:-2}"
EX_UNAVAILABLE=75

log() { echo "build_ci: $*" >&2; }
die() { echo "build_ci: error: $*" >&2; exit 1; }
unreachable() { echo "build_ci: registry unreachable: $*" >&2; exit "$EX_UNAVAILABLE"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else return 1; fi; }
network_failure() { grep -qiE "could not resolve|temporary failure|failed to fetch|unable to connect|connection (failed|timed out|refused)|network is unreachable|no route to host" "$1"; }

# The Debian mirror this machine's apt already uses for its own release (DEBIAN_MIRROR overrides).
debian_mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "${DEBIAN_MIRROR%/}"; return; fi
  local codename uri
  codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
  uri="$(apt-get -o Debug::NoLocking=1 update --print-uris 2>/dev/null \
    | sed -n "s|^'\(.*\)/dists/$codename/InRelease'.*|\1|p" | head -n 1)"
  [ -n "$uri" ] || die "cannot tell which Debian mirror this machine uses; set DEBIAN_MIRROR to one"
  echo "$uri"
}

# ---- 1. build tools and header-only libraries from the system's own Debian archive ----------------
need=()
for pkg in cmake g++ make nlohmann-json3-dev libstb-dev; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  log "installing ${need[*]}"
  out="$(mktemp)"
  if ! { as_root apt-get update -q && DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q --no-install-recommends "${need[@]}"; } >"$out" 2>&1; then
    tail -n 20 "$out" >&2
    if network_failure "$out"; then rm -f "$out"; unreachable "apt-get could not download ${need[*]}"; fi
    rm -f "$out"
    die "could not install ${need[*]} (run as root, or install them: apt-get install ${need[*]})"
  fi
  rm -f "$out"
fi

# ---- 2. the ONNX Runtime library from the Python wheel ---------------------------------------------
ORT_CAPI="$("$PYTHON" -c 'import os, onnxruntime; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))' 2>/dev/null)" \
  || die "$PYTHON cannot import onnxruntime (set PYTHON to the project's virtualenv python)"
ORT_LIB="$(ls "$ORT_CAPI"/libonnxruntime.so.1.* 2>/dev/null | head -n 1 || true)"
[ -n "$ORT_LIB" ] || die "no libonnxruntime.so.1.* in $ORT_CAPI"
ORT_LIB_VERSION="${ORT_LIB##*/libonnxruntime.so.}"                 # e.g. 1.32.0
ORT_LIB_API="$(echo "$ORT_LIB_VERSION" | cut -d. -f2)"              # ONNX Runtime 1.N serves C API versions 1..N

# ---- 3. headers and CMake files: Debian trixie's libonnxruntime-dev, private apt, dpkg-deb -x --------
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
DEB_DIR="$CACHE/onnxruntime-dev"
mkdir -p "$DEB_DIR"
exec 9>"$DEB_DIR/.lock"
flock 9                                                            # one fetch at a time per cache

UNPACKED="$(ls -d "$DEB_DIR"/unpacked-* 2>/dev/null | grep -v "\.tmp$" | sort -V | tail -n 1 || true)"
if [ -z "$UNPACKED" ] || [ ! -f "$UNPACKED/usr/include/onnxruntime/onnxruntime_cxx_api.h" ]; then
  [ -f /usr/share/keyrings/debian-archive-trixie-stable.gpg ] || die \
    "this machine's debian-archive-keyring has no trixie keys; update it (apt-get install debian-archive-keyring)"
  APT="$DEB_DIR/apt"
  mkdir -p "$APT/etc" "$APT/state/lists/partial" "$APT/cache/archives/partial" "$DEB_DIR/download"
  : >"$APT/state/status"
  MIRROR="$(debian_mirror)" || exit 1
  echo "deb [signed-by=$KEYRING] $MIRROR trixie main" >"$APT/etc/sources.list"
  apt_opts=(
    -o "Dir::Etc::sourcelist=$APT/etc/sources.list" -o "Dir::Etc::sourceparts=-"
    -o "Dir::Etc::preferences=/dev/null" -o "Dir::Etc::preferencesparts=-"
    -o "Dir::State=$APT/state" -o "Dir::State::status=$APT/state/status"
    -o "Dir::Cache=$APT/cache" -o "APT::Architecture=$(dpkg --print-architecture)"
    -o "APT::Get::List-Cleanup=0" -o "Debug::NoLocking=1" -q)
  # As root, apt fetches as the _apt user, who cannot enter a private cache under /root: fetch as root
  # (signatures and hashes are still checked against the keyring).
  if [ "$(id -u)" = 0 ]; then apt_opts+=(-o "APT::Sandbox::User=root"); fi
  out="$(mktemp)"
  log "fetching libonnxruntime-dev from Debian trixie (private apt configuration in $APT)"
  if ! apt-get "${apt_opts[@]}" update >"$out" 2>&1 || grep -qiE "GPG error|NO_PUBKEY|not signed" "$out"; then
    cat "$out" >&2
    if network_failure "$out"; then rm -f "$out"; unreachable "cannot fetch Debian trixie's package lists"; fi
    rm -f "$out"
    die "apt-get update of Debian trixie from $MIRROR failed (set DEBIAN_MIRROR to a Debian mirror)"
  fi
  if ! (cd "$DEB_DIR/download" && apt-get "${apt_opts[@]}" download libonnxruntime-dev) >"$out" 2>&1; then
    cat "$out" >&2
    if network_failure "$out"; then rm -f "$out"; unreachable "cannot download libonnxruntime-dev"; fi
    rm -f "$out"
    die "apt-get download libonnxruntime-dev failed"
  fi
  rm -f "$out"
  DEB="$(ls -t "$DEB_DIR"/download/libonnxruntime-dev_*.deb | head -n 1)"
  DEB_VERSION="$(dpkg-deb -f "$DEB" Version)"
  UNPACKED="$DEB_DIR/unpacked-$DEB_VERSION"
  rm -rf "$UNPACKED.tmp" && mkdir -p "$UNPACKED.tmp"
  dpkg-deb -x "$DEB" "$UNPACKED.tmp"
  rm -rf "$UNPACKED" && mv "$UNPACKED.tmp" "$UNPACKED"
  log "unpacked $(basename "$DEB") into $UNPACKED"
fi
exec 9>&-

HEADERS="$UNPACKED/usr/include/onnxruntime"
HDR_API="$(sed -n 's/^#define ORT_API_VERSION \([0-9][0-9]*\).*/\1/p' "$HEADERS/onnxruntime_c_api.h")"
[ -n "$HDR_API" ] || die "no ORT_API_VERSION in $HEADERS/onnxruntime_c_api.h"
# The C API is versioned and ABI-stable: a library serves every API version up to its own, so headers of
# API version H work with a library of version 1.L when H <= L (the runner also checks this at start-up).
if [ "$HDR_API" -gt "$ORT_LIB_API" ]; then
  die "the headers use ONNX Runtime C API version $HDR_API but the wheel's library ($ORT_LIB_VERSION) serves up to $ORT_LIB_API"
fi
log "ONNX Runtime: headers with C API version $HDR_API ($(basename "$UNPACKED")), library $ORT_LIB_VERSION from $ORT_CAPI"

# ---- 4. a per-build prefix: Debian's -dev files plus the wheel's library where the package's own
#         runtime library (libonnxruntime1.xx) would be, so Debian's onnxruntimeConfig.cmake finds it ----
PREFIX="$BUILD_ROOT/onnxruntime-prefix"
rm -rf "$PREFIX" && mkdir -p "$BUILD_ROOT" && cp -a "$UNPACKED" "$PREFIX"
CMAKE_DIR="$(dirname "$(find "$PREFIX" -name onnxruntimeConfig.cmake | head -n 1)")"
[ -f "$CMAKE_DIR/onnxruntimeConfig.cmake" ] || die "libonnxruntime-dev has no onnxruntimeConfig.cmake"
LIBDIR="$(dirname "$(dirname "$CMAKE_DIR")")"
EXPECTED="$(sed -n 's/.*IMPORTED_LOCATION_[A-Z]* "${_IMPORT_PREFIX}\/\(.*\)".*/\1/p' "$CMAKE_DIR"/onnxruntimeTargets-*.cmake | head -n 1)"
[ -n "$EXPECTED" ] || die "cannot read the library location from $CMAKE_DIR"
ln -sfn "$ORT_LIB" "$PREFIX/usr/$EXPECTED"                                  # what the CMake files import
ln -sfn "$ORT_LIB" "$LIBDIR/$(readelf -d "$ORT_LIB" | sed -n 's/.*SONAME.*\[\(.*\)\].*/\1/p')"  # its SONAME, for run time

# ---- 5. configure and build ------------------------------------------------------------------------
build() {  # name, extra cmake args...
  local name="$1"; shift
  local dir="$BUILD_ROOT/$name"
  log "building $name in $dir"
  cmake -S "$HERE" -B "$dir" -DCMAKE_BUILD_TYPE=Release -DSUBTUNE_EDGE_WERROR=ON \
    -Donnxruntime_DIR="$CMAKE_DIR" "$@" >"$dir.configure.log" 2>&1 || { cat "$dir.configure.log" >&2; die "cmake configure ($name) failed"; }
  cmake --build "$dir" -j "$JOBS" >"$dir.build.log" 2>&1 || { cat "$dir.build.log" >&2; die "build ($name) failed"; }
  echo "$dir/subtune_edge_run"
}
mkdir -p "$BUILD_ROOT"
# The other way users get ONNX Runtime, a release archive (include/, lib/): check that CMake finds it
# through ONNXRUNTIME_ROOT (configure only; the compile is the same as the release build's).
ARCHIVE="$BUILD_ROOT/onnxruntime-archive-layout"
rm -rf "$ARCHIVE" && mkdir -p "$ARCHIVE/lib" && cp -a "$HEADERS" "$ARCHIVE/include"
ln -s "$ORT_LIB" "$ARCHIVE/lib/libonnxruntime.so.$ORT_LIB_VERSION"
ln -s "libonnxruntime.so.$ORT_LIB_VERSION" "$ARCHIVE/lib/libonnxruntime.so.1"
ln -s libonnxruntime.so.1 "$ARCHIVE/lib/libonnxruntime.so"
cmake -S "$HERE" -B "$BUILD_ROOT/archive-check" -DONNXRUNTIME_ROOT="$ARCHIVE" >"$BUILD_ROOT/archive-check.log" 2>&1 \
  || { cat "$BUILD_ROOT/archive-check.log" >&2; die "configuring with -DONNXRUNTIME_ROOT (release archive layout) failed"; }
grep -q "ONNX Runtime: $ARCHIVE/lib/libonnxruntime.so" "$BUILD_ROOT/archive-check.log" \
  || die "-DONNXRUNTIME_ROOT did not select the archive's library (see $BUILD_ROOT/archive-check.log)"

if [ "$VARIANT" = release ] || [ "$VARIANT" = all ]; then build release; fi
# -O1 -g, as the sanitizer documentation advises: good stacks, and a third of -O2's compile time here.
if [ "$VARIANT" = asan ] || [ "$VARIANT" = all ]; then
  build asan -DSUBTUNE_EDGE_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g"
fi
