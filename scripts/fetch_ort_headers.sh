#!/usr/bin/env bash
# Fetch the ONNX Runtime C/C++ API headers (no PyPI wheel ships them) from Debian trixie's
# libonnxruntime-dev into plugins/third_party/onnxruntime/include.
# Uses a private apt state directory: the machine's apt sources and lists are left untouched.
# Usage: scripts/fetch_ort_headers.sh [DEST_INCLUDE_DIR]
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-$repo_root/plugins/third_party/onnxruntime/include}"

if [ -f "$dest/onnxruntime_cxx_api.h" ]; then
    echo "ORT headers already present in $dest"
    exit 0
fi
command -v apt-get >/dev/null || { echo "apt-get not found: set ORT_INCLUDE_DIR instead" >&2; exit 1; }
command -v dpkg-deb >/dev/null || { echo "dpkg-deb not found: set ORT_INCLUDE_DIR instead" >&2; exit 1; }

# Reuse the mirror host this machine's apt already uses (proxies/mirrors may be all that is reachable).
mirror="${XNORPIPE_DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
    # Only active entries: deb822 "URIs:" fields and one-line "deb" entries (not comments).
    mirror="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
        | grep -E '^[[:space:]]*(URIs:|deb )' | grep -oE 'https?://[^ ]+/debian/?( |$)' \
        | grep -v security | head -n1 | tr -d ' ' || true)"
    mirror="${mirror%/}"
    [ -n "$mirror" ] || { echo "no Debian mirror in this machine's apt sources: set XNORPIPE_DEBIAN_MIRROR or ORT_INCLUDE_DIR" >&2; exit 1; }
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/debs"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" > "$work/sources.list"
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || \
    echo "deb [trusted=yes] $mirror trixie main" > "$work/sources.list"

apt_opts=(
    -o "Dir::Etc::sourcelist=$work/sources.list"
    -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::Lists=$work/lists"
    -o "Dir::State::status=/dev/null"
    -o "Dir::Cache=$work/cache"
    -o "APT::Get::List-Cleanup=0"
    -o "Debug::NoLocking=1"
    -o "APT::Sandbox::User=root"
)
echo "fetching libonnxruntime-dev (trixie) from $mirror"
# Retried: a transient mirror error should not fail a whole package build.
retry() { local i; for i in 1 2 3; do "$@" && return 0; echo "retrying ($i): $*" >&2; sleep $((i * 5)); done; return 1; }
retry apt-get -qq "${apt_opts[@]}" update
# apt-get download writes into the current directory; -dev is arch-independent in content we need.
(cd "$work/debs" && retry apt-get -qq "${apt_opts[@]}" download libonnxruntime-dev)
deb="$(ls "$work"/debs/libonnxruntime-dev_*.deb | head -n1)"
dpkg-deb -x "$deb" "$work/root"
src="$(dirname "$(find "$work/root" -name onnxruntime_cxx_api.h | head -n1)")"
[ -f "$src/onnxruntime_cxx_api.h" ] || { echo "no onnxruntime_cxx_api.h in $deb" >&2; exit 1; }
mkdir -p "$dest"
cp -r "$src"/. "$dest"/
echo "ORT headers ($(basename "$deb")) installed in $dest"
