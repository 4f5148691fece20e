#!/bin/bash
# Runs nginx-acme's own test suite (t/*.t of github.com/nginx/nginx-acme, on the nginx-tests framework) against
# Debian's nginx loading this project's build/ngx_http_acme_module.so. Not part of `make test`: it needs
# checkouts of both projects. See README.md here for the results and what each test needs.
#
#   tests/nginx-acme-t/run.sh [options] NGINX_ACME_DIR NGINX_TESTS_DIR [TEST.t ...]
#
# NGINX_ACME_DIR: a checkout of nginx-acme (its t/ is used); NGINX_TESTS_DIR: a checkout of nginx-tests (its
# lib/ is used). Both may also come from the environment (NGINX_ACME_DIR, NGINX_TESTS_DIR). TEST.t: names in
# t/ (default: all).
#
# Options:
#   -v              prove -v (TAP of every test; with TEST_NGINX_CATLOG=1 also nginx's error log)
#   --no-adapter    do not replace nginx-acme's wait_certificate() (see lib/NgxAcmeT/Adapter.pm)
#   --hosts         diagnosis only (root): the CA host names of the tests (acme.test...) resolve through a
#                   private /etc/hosts (a mount namespace of this run alone) instead of nginx's `resolver`,
#                   to see what fails beyond the resolver
#   --pebble WHICH  debian: /usr/bin/pebble for every test; current: the current Pebble from
#                   ../shared/pebble/build.sh for every test; auto (default): the current one for the tests
#                   that need ARI, profiles or EAB (when ../shared exists), Debian's for the others.
# Environment: ACME_BUILD (default: build/ of this repository), NGINX (default /usr/sbin/nginx),
# PEBBLE_DEBIAN (default /usr/bin/pebble), PEBBLE_CURRENT (default: the output of ../shared/pebble/build.sh).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
verbose= adapter=1 which=auto hosts=
while [[ $# -gt 0 && $1 == -* ]]; do
    case $1 in
        -v) verbose=-v ;;
        --no-adapter) adapter=0 ;;
        --hosts) hosts=1 ;;
        --pebble) which=${2:-}; shift
            [[ $which =~ ^(debian|current|auto)$ ]] || { echo "run.sh: --pebble debian|current|auto" >&2; exit 2; } ;;
        *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
acme_dir=${1:-${NGINX_ACME_DIR:-}}; tests_dir=${2:-${NGINX_TESTS_DIR:-}}
shift $(( $# < 2 ? $# : 2 ))
[[ -n $acme_dir && -n $tests_dir ]] || { sed -n '2,20p' "$0" >&2; exit 2; }
acme_dir=$(cd "$acme_dir" && pwd); tests_dir=$(cd "$tests_dir" && pwd)
[[ -f $acme_dir/t/lib/Test/Nginx/ACME.pm ]] || { echo "run.sh: no t/lib/Test/Nginx/ACME.pm in $acme_dir" >&2; exit 2; }
[[ -f $tests_dir/lib/Test/Nginx.pm ]] || { echo "run.sh: no lib/Test/Nginx.pm in $tests_dir" >&2; exit 2; }

if [[ -n $hosts && -z ${NGX_ACME_T_IN_NS:-} ]]; then
    [[ $(id -u) == 0 ]] || { echo "run.sh: --hosts needs root (a private mount namespace)" >&2; exit 2; }
    etc_hosts=$(mktemp /tmp/nginx-acme-t-hosts.XXXXXX)
    trap 'rm -f "$etc_hosts"' EXIT
    names=$(sed -n 's!.*uri *https\?://\([^:/;]*\).*!\1!p' "$acme_dir"/t/*.t | sort -u | tr '\n' ' ')
    { cat /etc/hosts; echo "127.0.0.1 $names"; } > "$etc_hosts"
    chmod 644 "$etc_hosts"
    NGX_ACME_T_IN_NS=1 unshare -m sh -c 'mount --bind "$0" /etc/hosts && exec "$@"' "$etc_hosts" \
        "$0" ${verbose:+-v} $([[ $adapter == 1 ]] || echo --no-adapter) --pebble "$which" \
        "$acme_dir" "$tests_dir" "$@" && rc=0 || rc=$?
    exit $rc
fi

build=${ACME_BUILD:-$repo/build}
module=$build/ngx_http_acme_module.so
nginx=${NGINX:-/usr/sbin/nginx}
[[ -f $module ]] || { echo "run.sh: $module not found: run make first" >&2; exit 2; }
module=$(cd "$build" && pwd)/ngx_http_acme_module.so
for m in IO::Socket::SSL Net::SSLeay JSON::PP; do
    perl -M"$m" -e1 2>/dev/null || { echo "run.sh: perl module $m missing (Debian: libio-socket-ssl-perl," \
        "libnet-ssleay-perl; IO::Socket::INET6 for the IPv6 test: libio-socket-inet6-perl)" >&2; exit 2; }
done

work=$(mktemp -d /tmp/nginx-acme-t.XXXXXX)
trap 'rm -rf "$work"' EXIT

# nginx-tests adds load_module for every "--with-X=dynamic" in `nginx -V`; Debian's nginx lists modules that
# are separate packages. The wrapper leaves out those whose .so is not installed, and runs nginx otherwise.
modules=$(nginx_modules=$("$nginx" -V 2>&1 | sed -n 's/.*--modules-path=\([^ ]*\).*/\1/p'); echo "${nginx_modules:-/usr/lib/nginx/modules}")
cat > "$work/nginx" <<EOF
#!/bin/bash
if [[ \$# -eq 1 && \$1 == -V ]]; then
    "$nginx" -V 2>&1 | perl -pe 's{ --with-(\S+)=dynamic}{ my \$m = \$1 =~ s/_module\$//r; my @so = glob "$modules/ngx_*\${m}*.so"; @so ? \$& : "" }ge' >&2
    exit 0
fi
exec "$nginx" "\$@"
EOF
chmod +x "$work/nginx"

# nginx-acme's Test::Nginx::ACME reads "pebble -version"; Debian's Pebble has no such flag and the current one
# says "dev", which the tests read as "no ARI, EAB, profiles". The wrapper reports the real release.
pebble_wrapper() {   # NAME BINARY VERSION
    cat > "$work/$1" <<EOF
#!/bin/bash
if [[ \$# -eq 1 && \$1 == -version ]]; then echo "Pebble version: v$3"; exit 0; fi
exec "$2" "\$@"
EOF
    chmod +x "$work/$1"
}
pebble_debian=${PEBBLE_DEBIAN:-/usr/bin/pebble}
debian_version=$(dpkg-query -W -f '${Version}' pebble 2>/dev/null | sed 's/[+~-].*//')
pebble_wrapper pebble-debian "$pebble_debian" "${debian_version:-2.4.0}"
current=${PEBBLE_CURRENT:-}
if [[ -z $current && $which != debian && -x $repo/../shared/pebble/build.sh ]]; then
    current=$("$repo/../shared/pebble/build.sh")/pebble
fi
if [[ -n $current ]]; then
    # ../shared's snapshot is commit b1e1ca4, after v2.9.0
    pebble_wrapper pebble-current "$current" "${PEBBLE_CURRENT_VERSION:-2.9.0}"
elif [[ $which == current ]]; then
    echo "run.sh: --pebble current: no ../shared/pebble/build.sh and no PEBBLE_CURRENT" >&2; exit 2
fi

if [[ $# -gt 0 ]]; then tests=("$@"); else tests=($(cd "$acme_dir/t" && ls *.t)); fi
needs_current=() plain=()
for t in "${tests[@]}"; do
    t=$(basename "$t")
    if [[ $which == current || ( $which == auto && -n $current ) ]] \
        && { [[ $which == current ]] || grep -Eq -- '->has\(qw/[^)]*\b(ari|eab|profile)\b' "$acme_dir/t/$t"; }; then
        needs_current+=("$t")
    else
        plain+=("$t")
    fi
done

globals="load_module $module;"
[[ $(id -u) != 0 ]] || globals="$globals user root;"   # the test directories are root's, mode 0700

run() {   # PEBBLE TESTS...
    local pebble=$1; shift
    [[ $# -gt 0 ]] || return 0
    echo "== with $(basename "$pebble") ($("$pebble" -version)): $*"
    (cd "$acme_dir/t" && env TEST_NGINX_BINARY="$work/nginx" TEST_NGINX_MODULES="$modules" \
        TEST_NGINX_GLOBALS="$globals" TEST_NGINX_PEBBLE_BINARY="$pebble" \
        NGX_ACME_T_ADAPTER=$adapter PERL5LIB="$here/lib${PERL5LIB:+:$PERL5LIB}" PERL5OPT="-MNgxAcmeT::Adapter" \
        prove $verbose -I "$tests_dir/lib" "$@")
}

rc=0
run "$work/pebble-debian" "${plain[@]}" || rc=1
run "$work/pebble-current" "${needs_current[@]}" || rc=1
exit $rc
