#!/usr/bin/env bash
# Build ngx_http_acme_module.so against Debian's nginx-dev sources, with the flags Debian's nginx was built with.
# usage: build.sh BUILD_DIR   (writes BUILD_DIR/ngx_http_acme_module.so, ngx_stream_acme_module.so, ngx_mail_acme_module.so)
set -euo pipefail
# nginx's configure takes CFLAGS from the environment instead of its own warning set
unset CFLAGS
repo=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "$1" && cd "$1" && pwd)
src=${NGX_SRC:-/usr/share/nginx/src}
tree="$out/nginx"
# The addon config globs common/*.c: configure again when the set of sources changes.
srcs=$(cd "$repo" && ls common/*.c ngx_acme_module/*.c 2>/dev/null | tr '\n' ' ')
# ... and when the nginx tree (NGX_SRC: make test-asan's sanitizer nginx) or the flags change.
srcs="$srcs src=$src built=$(stat -c %Y "$src/objs/Makefile" 2>/dev/null || true) cc=${NGX_CC_OPT:-}"
if [ ! -f "$tree/objs/Makefile" ] || [ "$repo/config" -nt "$tree/objs/Makefile" ] \
    || [ "$(cat "$tree/.acme-srcs" 2>/dev/null)" != "$srcs" ]; then
    rm -rf "$tree"
    cp -r "$src" "$tree"
    # shellcheck disable=SC1091
    . "$tree/conf_flags"
    # nginx-dev's flags leave out stream and mail, which Debian builds as dynamic modules
    # (libnginx-mod-stream, -mail): with them ours are configured; only our modules
    # are built below, stream's and mail's own sources are not in nginx-dev
    (cd "$tree" && ./configure "${NGX_CONF_FLAGS[@]}" --with-stream=dynamic --with-stream_ssl_module \
        --with-mail=dynamic --with-mail_ssl_module \
        --add-dynamic-module="$repo" \
        --with-cc-opt="${NGX_CC_OPT:-}" --with-ld-opt="${NGX_LD_OPT:-}" >"$out/nginx-configure.log" 2>&1) || {
        tail -30 "$out/nginx-configure.log" >&2
        exit 1
    }
    printf '%s' "$srcs" >"$tree/.acme-srcs"
fi
make -s -C "$tree" -f objs/Makefile objs/ngx_http_acme_module.so objs/ngx_stream_acme_module.so \
    objs/ngx_mail_acme_module.so \
    >"$out/nginx-make.log" 2>&1 || { tail -40 "$out/nginx-make.log" >&2; exit 1; }
cp "$tree/objs/ngx_http_acme_module.so" "$out/ngx_http_acme_module.so"
cp "$tree/objs/ngx_stream_acme_module.so" "$out/ngx_stream_acme_module.so"
cp "$tree/objs/ngx_mail_acme_module.so" "$out/ngx_mail_acme_module.so"
