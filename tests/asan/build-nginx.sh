#!/usr/bin/env bash
# Build Debian's nginx (same version as the installed nginx-dev) with the sanitizer flags, for `make test-asan`.
# usage: build-nginx.sh OUT_DIR "SAN FLAGS"
#   writes OUT_DIR/nginx-bin (the binary), OUT_DIR/nginx-src (the configured tree that
#   ngx_acme_module/build.sh then builds the module in, via NGX_SRC) and OUT_DIR/nodlclose.so (see
#   tests/asan/nodlclose.c). Cached: the binary is rebuilt only when missing or built with other flags.
# Fetches the source with `apt-get source` from Debian's mirror (adds a deb-src entry for the suites already
# configured when there is none). Needs root (or sudo) for that step only.
set -euo pipefail
unset CFLAGS
out=$(mkdir -p "$1" && cd "$1" && pwd)
san=${2:-}
dev=/usr/share/nginx/src
bin="$out/nginx-bin"
src="$out/nginx-src"
stamp="$out/nginx-bin.flags"
here=$(cd "$(dirname "$0")" && pwd)
if [ ! -f "$out/nodlclose.so" ] || [ "$here/nodlclose.c" -nt "$out/nodlclose.so" ]; then
    ${CC:-cc} -shared -fPIC -O2 -Wall -Wextra -Werror -o "$out/nodlclose.so" "$here/nodlclose.c"
fi
if [ -x "$bin" ] && [ -f "$src/objs/Makefile" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$san" ]; then
    exit 0
fi
[ -f "$dev/conf_flags" ] || { echo "$0: $dev/conf_flags missing (apt-get install nginx-dev)" >&2; exit 1; }
ver=$(dpkg-query -W -f='${Version}' nginx-dev)
if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi

# dpkg-source unpacks and applies Debian's patches; the build itself needs the -dev packages of the
# libraries behind the configure flags (pcre-jit, ssl, gzip).
need=""
for p in dpkg-dev libpcre2-dev libssl-dev zlib1g-dev; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need="$need $p"
done
if [ -n "$need" ]; then
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086  # one word per package
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $need
fi

fetch="$out/nginx-fetch"
upstream=${ver%%-*}
# The installed version first; a mirror may lack that one's source (security pool), then the newest
# other Debian revision of the same upstream release: the module is built against this very tree, so
# only the upstream version must match nginx-dev's.
get_source() {
    local v
    for v in "$ver" $(apt-cache showsrc nginx 2>/dev/null | sed -n 's/^Version: //p' | sort -rV); do
        [ "${v%%-*}" = "$upstream" ] || continue
        rm -rf "$fetch" && mkdir -p "$fetch"
        if (cd "$fetch" && apt-get source -qq --only-source "nginx=$v") >>"$out/nginx-fetch.log" 2>&1; then
            echo "$0: nginx source $v" >&2
            return 0
        fi
    done
    return 1
}
: >"$out/nginx-fetch.log"
if ! get_source; then
    "$here/deb-src.sh"
    get_source || { tail -20 "$out/nginx-fetch.log" >&2; exit 1; }
fi
rm -rf "$src"
mv "$fetch/nginx-$upstream" "$src"
rm -rf "$fetch"
# The module build (ngx_acme_module/build.sh) copies this tree and configures it again with the
# same flags, so the module and the binary agree on every structure.
cp "$dev/conf_flags" "$src/conf_flags"
# shellcheck disable=SC1091
. "$src/conf_flags"
(cd "$src" && ./configure "${NGX_CONF_FLAGS[@]}" --with-cc-opt="-g -O1 $san" --with-ld-opt="$san" \
    >"$out/nginx-bin-configure.log" 2>&1) || { tail -30 "$out/nginx-bin-configure.log" >&2; exit 1; }
make -s -j"$(nproc)" -C "$src" -f objs/Makefile binary >"$out/nginx-bin-make.log" 2>&1 \
    || { tail -40 "$out/nginx-bin-make.log" >&2; exit 1; }
cp "$src/objs/nginx" "$bin.tmp"
mv "$bin.tmp" "$bin"
printf '%s' "$san" >"$stamp"
