#!/bin/bash
# Make (once) the Debian root that the systemd tier boots with systemd-nspawn, and print
# its path.
#
#   tests/systemd/build_root.sh
#
# The root is `debootstrap --variant=minbase` of Debian 12 with systemd as PID 1 and the
# packages xfrmwatch needs on a real system (python3 + venv for a pip install, iproute2
# for the tests' `ip xfrm`, procps for the unit's ExecReload=/bin/kill). It is cached in
# $XW_CACHE (default /var/cache/xfrmwatch-tests) under a name keyed by the suite and the
# package list, so a rerun reuses it and a change of the list builds a new one. The
# tests never write into it: they boot an overlay on top of it.
#
# The mirror is the one apt already uses here: the first `URIs:` line of
# /etc/apt/sources.list.d/debian.sources (XW_DEBIAN_MIRROR overrides it).
#
# Needs root and: apt-get install -y debootstrap systemd-container
set -euo pipefail

SUITE=bookworm
PACKAGES=systemd,systemd-sysv,dbus,libnss-systemd,procps,python3,python3-venv,iproute2
cache=${XW_CACHE:-/var/cache/xfrmwatch-tests}
key=$(printf '%s %s minbase v1' "$SUITE" "$PACKAGES" | sha256sum | cut -c1-12)
root="$cache/systemd-root-$key"

if [ -e "$root/.complete" ]; then
    echo "$root"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "build_root.sh: apt-get install -y debootstrap" >&2; exit 1; }

mirror=${XW_DEBIAN_MIRROR:-}
if [ -z "$mirror" ] && [ -r /etc/apt/sources.list.d/debian.sources ]; then
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
fi
mirror=${mirror:-http://deb.debian.org/debian}

mkdir -p "$cache"
exec 9>"$cache/.systemd-root.lock"
flock 9  # another run may be building the same root
if [ -e "$root/.complete" ]; then
    echo "$root"
    exit 0
fi
tmp="$root.tmp.$$"
rm -rf "$root" "$root".tmp.*
start=$(date +%s)
echo "build_root.sh: debootstrap $SUITE ($PACKAGES) from $mirror into $root" >&2
if ! debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$tmp" "$mirror" >"$cache/debootstrap-$key.log" 2>&1; then
    echo "build_root.sh: debootstrap failed; the end of $cache/debootstrap-$key.log:" >&2
    tail -20 "$cache/debootstrap-$key.log" >&2
    rm -rf "$tmp"
    exit 1
fi
rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/*  # not needed offline
echo "$SUITE $PACKAGES" >"$tmp/.complete"
mv "$tmp" "$root"
for old in "$cache"/systemd-root-*; do  # roots for other package lists
    [ "$old" = "$root" ] || rm -rf "$old"
done
echo "build_root.sh: built in $(( $(date +%s) - start )) s" >&2
echo "$root"
