#!/usr/bin/env bash
# Run a command of this project inside a bare Debian 12 root (mmdebstrap minbase + python3, Debian's own
# Python 3.11.2), as root, from a copy of the checkout: what a new machine has, not what this one gathered.
#   scripts/in-fresh-debian.sh scripts/test.sh [PYTEST ARGS...]
# The bare root is built once per machine and cached as a tarball ($BANGER_FRESH_BASE); each run unpacks a
# new copy and removes it afterwards. The test cache ($BANGER_TEST_CACHE, kernels and images keyed by
# their inputs) is shared with the host so artifacts are still built once. This machine's apt, pip, DNS
# and CA settings are copied in so the package mirrors resolve and verify the same way.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "in-fresh-debian: run as root" >&2; exit 2; }
[ $# -gt 0 ] || { echo "usage: $0 COMMAND [ARGS...]" >&2; exit 2; }

if ! command -v mmdebstrap >/dev/null; then
  echo "in-fresh-debian: installing mmdebstrap on this host to build the bare root" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
fi
base=${BANGER_FRESH_BASE:-/var/tmp/banger-fresh-debian-base.tar}
if [ ! -s "$base" ]; then
  echo "in-fresh-debian: building a bare bookworm root (once, cached in $base)" >&2
  mmdebstrap --quiet --format=tar --variant=minbase --include=python3,ca-certificates bookworm "$base.part" >&2
  mv "$base.part" "$base"
fi
cache=${BANGER_TEST_CACHE:-/var/tmp/banger-test-cache}
mkdir -p "$cache"

root=$(mktemp -d /var/tmp/banger-fresh-root.XXXXXX)
rootid=""
cleanup() {
  local rc=$? p left=""
  # Anything still running inside the root is a leak the run should have cleaned up: say so, then end it.
  for p in /proc/[0-9]*; do
    [ -n "$rootid" ] && [ "$(stat -Lc %d:%i "$p/root" 2>/dev/null)" = "$rootid" ] && left="$left ${p#/proc/}"
  done
  if [ -n "$left" ]; then
    echo "in-fresh-debian: the run left processes behind:" >&2
    for p in $left; do echo "  $p $(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | cut -c1-120)" >&2; done
    kill -9 $left 2>/dev/null || true
    [ "$rc" = 0 ] && rc=1
  fi
  umount -R -l "$root" 2>/dev/null || true
  rm -rf --one-file-system "$root"
  exit "$rc"
}
trap cleanup EXIT
tar -C "$root" -xf "$base"
mount --bind "$root" "$root"  # a mount point, so `ip netns exec` can remount / as a slave inside it
rootid=$(stat -c %d:%i "$root")  # what a process inside has as its root (the leak check's test)
for f in /etc/resolv.conf /etc/apt/sources.list.d /etc/apt/apt.conf.d /etc/pip.conf /etc/xdg/pip /etc/ssl/certs \
         /usr/local/share/ca-certificates; do
  if [ -e "$f" ]; then mkdir -p "$root$(dirname "$f")"; cp -a "$f" "$root$(dirname "$f")/"; fi
done
[ -d /etc/apt/sources.list.d ] && [ -n "$(ls -A /etc/apt/sources.list.d)" ] && rm -f "$root/etc/apt/sources.list"
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"
mount -t proc proc "$root/proc"
mount -t sysfs sys "$root/sys"
mount -t tmpfs run "$root/run"
mkdir -p "$root$cache" "$root/src"
mount --bind "$cache" "$root$cache"
# The checkout as CI sees it: tracked files plus new ones not ignored (no .venv, no caches).
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -C "$root/src" -xf -
# The machine's package-mirror settings travel along (pip options, CA bundles, proxies), nothing else.
mapfile -t keep < <(env | grep -E '^(PIP_[A-Z_]*|SSL_CERT_(FILE|DIR)|REQUESTS_CA_BUNDLE|CURL_CA_BUNDLE|GIT_SSL_CAINFO|(https?|no)_proxy|(HTTPS?|NO)_PROXY|CI)=' || true)
# Into the root with pivot_root in a mount namespace of its own, not chroot: a chrooted process may not
# create user namespaces (EPERM), and an owner's image builds run in one (banger.host.userns).
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb LANG=C.UTF-8 BANGER_TEST_CACHE="$cache" "${keep[@]}" \
  unshare --mount --propagation private --fork -- /bin/sh -c \
  'cd "$1" && mkdir .old-root && pivot_root . .old-root && cd / && umount -l /.old-root && rmdir /.old-root &&
   shift && cd /src && exec bash -c '"'"'exec "$@"'"'"' _ "$@"' _ "$root" "$@"
