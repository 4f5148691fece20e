#!/bin/sh
# Build mod_acme.so for Debian's Apache 2.4 with apxs.
#   APX_SAN="-fsanitize=..." apache_mod_acme/build.sh BUILD_DIR
# Compiles apache_mod_acme/*.c (copied into BUILD_DIR/apache, where apxs/libtool keep their objects: the
# source tree stays clean), links BUILD_DIR/libacme.a (built with -fPIC by the Makefile) and the core's
# libraries, and leaves BUILD_DIR/mod_acme.so.
set -eu

if [ $# -ne 1 ]; then
    echo "usage: $0 BUILD_DIR" >&2
    exit 2
fi
SRC=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$SRC")
mkdir -p "$1/apache"
BUILD=$(cd "$1" && pwd)
OBJ="$BUILD/apache"
APXS=${APXS:-$(command -v apxs || command -v apxs2 || true)}
if [ -z "$APXS" ]; then
    echo "$0: apxs not found (Debian: apt-get install apache2-dev)" >&2
    exit 1
fi
if [ ! -f "$BUILD/libacme.a" ]; then
    echo "$0: $BUILD/libacme.a is missing (make $BUILD/libacme.a)" >&2
    exit 1
fi

# fresh copies of the sources (stale objects of removed files must not linger)
rm -rf "$OBJ"
mkdir -p "$OBJ"
cp -p "$SRC"/*.c "$SRC"/*.h "$OBJ"/

set --
for f in -std=gnu11 -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers \
         -D_GNU_SOURCE $(pkg-config --cflags libcurl jansson openssl); do
    set -- "$@" "-Wc,$f"
done
for f in ${APX_SAN:-}; do
    set -- "$@" "-Wc,$f" "-Wl,$f"
done
# the core's libraries; hiredis for the Redis store (ACMEStorage), ldns and libknot (TSIG) for DNS validation
if ! pkg-config --exists hiredis; then
    echo "$0: hiredis not found (Debian: apt-get install libhiredis-dev)" >&2
    exit 1
fi
LIBS=$(pkg-config --libs libcurl jansson openssl hiredis ldns libknot)

cd "$OBJ"
# shellcheck disable=SC2086
"$APXS" -c -o mod_acme.la -I"$ROOT/common" -I"$OBJ" "$@" ./*.c "$BUILD/libacme.a" $LIBS -lpthread \
    >"$OBJ/build.log" 2>&1 || { grep -v "^/usr/share/apr-1.0/build/libtool\|^libtool: compile:" "$OBJ/build.log" >&2; exit 1; }
grep -E "(warning|error):" "$OBJ/build.log" | grep -v "is not portable" >&2 || true
# every core symbol must be inside, and what the core needs linked: a missing one would only show when
# apache2 loads the module
undef=$(nm -D -u "$OBJ/.libs/mod_acme.so" | awk '{print $2}')
missing=$(echo "$undef" | grep -E '^acme_' || true)
if ! ldd "$OBJ/.libs/mod_acme.so" | grep -q hiredis; then
    missing="$missing hiredis (install libhiredis-dev)"
fi
if [ -n "$missing" ]; then
    echo "$0: undefined in mod_acme.so: $missing" >&2
    exit 1
fi
cp "$OBJ/.libs/mod_acme.so" "$BUILD/mod_acme.so.tmp"
mv "$BUILD/mod_acme.so.tmp" "$BUILD/mod_acme.so"
echo "built $BUILD/mod_acme.so"
