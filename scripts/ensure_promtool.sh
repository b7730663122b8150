#!/bin/sh
# Makes promtool available to the test suite (tests/unit/test_observability_assets.py runs
# `promtool check rules` and `promtool test rules` on deploy/observability/).
#
# promtool comes from Debian's `prometheus` package. Rather than installing that package (which
# adds a system user and a Prometheus server that systemd would start on :9090), this takes the
# package with apt-get (signed lists, checked hash), unpacks it to a scratch folder and keeps only
# its promtool, in .tools/promtool/ (git-ignored, like the pinned uv). Never fails the caller: where
# it cannot install, it says why and the one test that needs promtool reports itself as skipped.
#
# Idempotent and quick on repeat runs: nothing is done when promtool is on PATH or already here.
set -u

DEST_DIR=".tools/promtool"
DEST="$DEST_DIR/promtool"

if command -v promtool >/dev/null 2>&1 || [ -x "$DEST" ]; then
    exit 0
fi

note() {
    echo "ensure_promtool: $*; the promtool checks of deploy/observability will be skipped" >&2
    exit 0
}

command -v apt-get >/dev/null 2>&1 || note "no apt-get on this machine"
command -v dpkg-deb >/dev/null 2>&1 || note "no dpkg-deb on this machine"

if [ "$(id -u)" -eq 0 ]; then
    AS_ROOT=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
    AS_ROOT="sudo -n"
else
    AS_ROOT="none"
fi

# The package lists may be missing or stale (a fresh machine): refresh them once if the
# package has no candidate, which needs root.
if ! apt-cache policy prometheus 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    [ "$AS_ROOT" = "none" ] && note "apt lists lack the prometheus package and we are not root"
    $AS_ROOT apt-get update -qq >/dev/null 2>&1 || note "apt-get update failed"
fi

SCRATCH=$(mktemp -d) || note "mktemp failed"
trap 'rm -rf "$SCRATCH"' EXIT
# apt-get download writes into the current folder and needs no root once the lists are there.
if ! (cd "$SCRATCH" && apt-get download -qq prometheus >/dev/null 2>&1); then
    note "apt-get download prometheus failed"
fi
DEB=$(ls "$SCRATCH"/prometheus_*.deb 2>/dev/null | head -n 1)
[ -n "$DEB" ] || note "no prometheus .deb was downloaded"
dpkg-deb -x "$DEB" "$SCRATCH/root" || note "dpkg-deb could not unpack $DEB"
[ -x "$SCRATCH/root/usr/bin/promtool" ] || note "the prometheus package holds no usr/bin/promtool"

mkdir -p "$DEST_DIR"
# Copy then rename, so an interrupted run never leaves a half-written promtool behind.
cp "$SCRATCH/root/usr/bin/promtool" "$DEST.partial" && mv "$DEST.partial" "$DEST" \
    || note "could not write $DEST"
echo "ensure_promtool: installed $("$DEST" --version 2>&1 | head -n 1) as $DEST" >&2
