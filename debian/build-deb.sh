#!/bin/sh
# make deb: build the Debian packages with debhelper into OUT_DIR (default build/deb).
#   debian/build-deb.sh [OUT_DIR]
# Installs the build dependencies when some are missing, copies the source tree (without build/ and
# .git) to OUT_DIR/src/acme-httpd-VERSION and runs dpkg-buildpackage -b there, so that nothing is
# written into the repository or next to it. debian/rules builds with the project's Makefile into
# debian/build of that copy. The log is OUT_DIR/build.log.
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "${1:-$repo/build/deb}"
out=$(cd "${1:-$repo/build/deb}" && pwd)

if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
apt_install() {
    echo "installing build dependencies: $*"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@"
}
# dpkg-dev first (dpkg-checkbuilddeps), then whatever debian/control's Build-Depends still miss
missing=""
for p in build-essential dpkg-dev; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
# shellcheck disable=SC2086 # lists of package names
[ -z "$missing" ] || apt_install $missing
unmet=$(cd "$repo" && dpkg-checkbuilddeps 2>&1 | sed -n 's/.*Unmet build dependencies: //p' \
        | sed 's/([^)]*)//g; s/ *| *[^ ]*//g; s/:any//g')
# shellcheck disable=SC2086
[ -z "$unmet" ] || apt_install $unmet

source=$(dpkg-parsechangelog -l "$repo/debian/changelog" -S Source)
version=$(dpkg-parsechangelog -l "$repo/debian/changelog" -S Version)
work="$out/src"
src="$work/$source-$version"
rm -rf "$work"
mkdir -p "$src"
# the tree as it is now (tracked or not), without build products and in-tree debhelper leftovers
tar -C "$repo" -cf - \
    --exclude=./build --exclude=./.git --exclude=__pycache__ --exclude='*.pyc' \
    --exclude=./debian/build --exclude=./debian/.debhelper --exclude=./debian/files \
    --exclude='./debian/*.substvars' --exclude='./debian/*.debhelper' --exclude='./debian/*.debhelper.log' \
    --exclude=./debian/debhelper-build-stamp --exclude=./debian/libnginx-mod-http-acme \
    --exclude=./debian/libnginx-mod-stream-acme --exclude=./debian/libnginx-mod-mail-acme \
    --exclude=./debian/libapache2-mod-acme --exclude=./debian/acmectl --exclude=./debian/tmp \
    . | tar -C "$src" -xf -

echo "dpkg-buildpackage -b in $src (log: $out/build.log)"
start=$(date +%s)
if ! (cd "$src" && dpkg-buildpackage -b -us -uc -Jauto) >"$out/build.log" 2>&1; then
    tail -n 60 "$out/build.log" >&2
    echo "make deb: dpkg-buildpackage failed (full log: $out/build.log)" >&2
    exit 1
fi

rm -f "$out"/*.deb "$out"/*.ddeb "$out"/*.buildinfo "$out"/*.changes
for f in "$work"/*.deb "$work"/*.ddeb "$work"/*.buildinfo "$work"/*.changes; do
    [ -e "$f" ] && mv "$f" "$out"/
done
rm -rf "$work"
echo "built in $(( $(date +%s) - start )) s:"
ls -l "$out"/*.deb
