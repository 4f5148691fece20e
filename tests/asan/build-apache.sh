#!/usr/bin/env bash
# Build Apache httpd 2.4 from Debian's source package with the sanitizer flags, for `make test-asan`.
# usage: build-apache.sh OUT_DIR "SAN FLAGS"
#   installs into OUT_DIR/httpd: bin/httpd, bin/apxs (mod_acme is built with it) and modules/ with
#   the modules the tests load (the MPMs, authz_core, authz_host, socache_shmcb, ssl, http2), all
#   built with the same flags. Debian's Apache modules cannot be used: an uninstrumented module of
#   another 2.4 release beside an instrumented httpd. Cached like build-nginx.sh. Compiled in, as in
#   Debian's apache2: so, watchdog, log_config, logio, version, unixd.
set -euo pipefail
unset CFLAGS
out=$(mkdir -p "$1" && cd "$1" && pwd)
san=${2:-}
prefix="$out/httpd"
stamp="$out/httpd.flags"
# the modules the tests load (test_docs_examples: alias for Redirect)
shared="authz_core authz_host alias socache_shmcb ssl http2"
if [ -x "$prefix/bin/httpd" ] && [ -x "$prefix/bin/apxs" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$san $shared" ]; then
    exit 0
fi
if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi

need=""
for p in dpkg-dev libapr1-dev libaprutil1-dev libpcre2-dev libssl-dev libnghttp2-dev zlib1g-dev; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need="$need $p"
done
if [ -n "$need" ]; then
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086  # one word per package
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $need
fi

# The installed version's source first, then the newest other 2.4 one the mirror has (every module
# the tests load comes from this tree, so it need not match the installed apache2).
fetch="$out/apache-fetch"
ver=$(dpkg-query -W -f='${Version}' apache2 2>/dev/null || true)
: >"$out/apache-fetch.log"
get_source() {
    local v
    for v in $ver $(apt-cache showsrc apache2 2>/dev/null | sed -n 's/^Version: //p' | sort -rV); do
        case "$v" in 2.4.*) ;; *) continue ;; esac
        rm -rf "$fetch" && mkdir -p "$fetch"
        if (cd "$fetch" && apt-get source -qq --only-source "apache2=$v") >>"$out/apache-fetch.log" 2>&1; then
            echo "$0: apache2 source $v" >&2
            return 0
        fi
    done
    return 1
}
if ! get_source; then
    "$(dirname "$0")/deb-src.sh"
    get_source || { tail -20 "$out/apache-fetch.log" >&2; exit 1; }
fi
src="$out/apache-src"
rm -rf "$src"
mv "$fetch"/apache2-2.4.* "$src"
rm -rf "$fetch" "$prefix"
# Debian's reproducible-builds patch takes the build time from debian/rules
sed -i 's/= BUILD_DATETIME;/= __DATE__ " " __TIME__;/' "$src/server/buildmark.c"

(cd "$src" && ./configure --prefix="$prefix" \
    --with-apr=/usr/bin/apr-1-config --with-apr-util=/usr/bin/apu-1-config \
    --with-pcre=/usr/bin/pcre2-config --enable-pie \
    --enable-mpms-shared="event worker prefork" \
    --enable-modules=none --enable-mods-static="watchdog log_config logio version unixd" \
    --enable-mods-shared="$shared" \
    CFLAGS="-g -O1 $san" LDFLAGS="$san" >"$out/apache-configure.log" 2>&1) \
    || { tail -30 "$out/apache-configure.log" >&2; exit 1; }
(make -s -j"$(nproc)" -C "$src" && make -s -C "$src" install) >"$out/apache-make.log" 2>&1 \
    || { tail -40 "$out/apache-make.log" >&2; exit 1; }
printf '%s' "$san $shared" >"$stamp"
