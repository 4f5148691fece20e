#!/usr/bin/env bash
# Adds a deb-src entry for the Debian release this machine runs (main; the release, -updates and
# -security suites) unless apt already has one, and runs apt-get update. For `apt-get source`.
set -euo pipefail
if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
if grep -rqsE '^(deb-src |Types:.*deb-src)' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    $SUDO apt-get update -qq
    exit 0
fi
list=/etc/apt/sources.list.d/acme-test-deb-src.sources
echo "$0: adding $list (deb-src, for apt-get source)" >&2
# shellcheck disable=SC1091
. /etc/os-release
$SUDO tee "$list" >/dev/null <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $VERSION_CODENAME $VERSION_CODENAME-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: $VERSION_CODENAME-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
$SUDO apt-get update -qq
