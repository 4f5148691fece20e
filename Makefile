# One build for the whole tree. Everything lands in $(BUILD).
BUILD      ?= build
CC         ?= cc
PYTHON     ?= /usr/bin/python3
SAN        ?=
OPT        ?= -O2

PKGS        := libcurl jansson openssl hiredis ldns libknot
DEB_PKGS    := build-essential pkg-config libssl-dev libcurl4-openssl-dev libjansson-dev \
               libcmocka-dev pebble python3-pytest curl openssl nginx nginx-dev apache2 apache2-dev \
               libhiredis-dev libldns-dev libknot-dev knot redis-server clang libclang-rt-14-dev valgrind \
               python3-prometheus-client certbot chromium libnginx-mod-stream libnginx-mod-mail \
               python3-pytest-xdist
PKG_CFLAGS  := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS    := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

CFLAGS     += -std=gnu11 $(OPT) -g -Wall -Wextra -Werror -fPIC -fvisibility=hidden \
              -D_GNU_SOURCE -Icommon $(PKG_CFLAGS) $(SAN)
LDLIBS     += $(PKG_LIBS) -lpthread $(SAN)

CORE_SRC   := $(sort $(wildcard common/*.c))
CORE_OBJ   := $(patsubst common/%.c,$(BUILD)/obj/common/%.o,$(CORE_SRC))
CTL_SRC    := $(sort $(wildcard acmectl/*.c))
CTL_OBJ    := $(patsubst acmectl/%.c,$(BUILD)/obj/acmectl/%.o,$(CTL_SRC))
UNIT_SRC   := $(sort $(wildcard tests/unit/test_*.c))
UNIT_BIN   := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRC))

NGX_SRCS   := $(wildcard ngx_acme_module/*.c ngx_acme_module/*.h) config
APX_SRCS   := $(wildcard apache_mod_acme/*.c apache_mod_acme/*.h)
MODULES    := $(if $(wildcard config),$(BUILD)/ngx_http_acme_module.so) \
              $(if $(wildcard apache_mod_acme/mod_acme.c),$(BUILD)/mod_acme.so)

# A current Pebble (ARI, profiles) for the tests that need it (tests/e2e/test_pebble_current.py): built
# by ../shared/pebble/build.sh when that is beside the repository (cached after the first build);
# without it those tests are skipped and Debian's Pebble serves all others.
PEBBLE_NEXT := $(wildcard ../shared/pebble/build.sh)

.PHONY: all deps test unit e2e test-asan clean check-deps pebble-next

all: check-deps $(BUILD)/libacme.a $(BUILD)/acmectl $(MODULES)

# nginx's own build compiles the core and the module (see ./config); SAN flags pass through.
# NGX_SRC: another nginx tree to build against (make test-asan's sanitized nginx).
$(BUILD)/ngx_http_acme_module.so: $(CORE_SRC) $(wildcard common/*.h) $(NGX_SRCS) ngx_acme_module/build.sh \
                                  $(wildcard $(NGX_SRC)/objs/Makefile)
	NGX_CC_OPT="$(SAN)" NGX_LD_OPT="$(SAN)" ngx_acme_module/build.sh $(BUILD)

# apxs compiles the module and links the core built with -fPIC above.
# APXS: another httpd's apxs (make test-asan's sanitized httpd).
$(BUILD)/mod_acme.so: $(BUILD)/libacme.a $(APX_SRCS) apache_mod_acme/build.sh $(wildcard $(APXS))
	APX_SAN="$(SAN)" apache_mod_acme/build.sh $(BUILD)

# Install what the build and the tests need from Debian, only when something is missing.
deps:
	@missing=""; for p in $(DEB_PKGS); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	    $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@$(MAKE) --no-print-directory pebble-next

pebble-next:
ifneq ($(PEBBLE_NEXT),)
	@dir=$$($(PEBBLE_NEXT)) && echo "current Pebble: $$dir"
endif

check-deps:
	@pkg-config --exists $(PKGS) && [ -f /usr/include/cmocka.h ] && command -v pebble >/dev/null \
	    && $(PYTHON) -c 'import xdist' 2>/dev/null || $(MAKE) --no-print-directory deps

$(BUILD)/obj/common/%.o: common/%.c $(wildcard common/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/obj/acmectl/%.o: acmectl/%.c $(wildcard common/*.h acmectl/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Iacmectl -c -o $@ $<

$(BUILD)/libacme.a: $(CORE_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@
	ar rcs $@ $^

$(BUILD)/acmectl: $(CTL_OBJ) $(BUILD)/libacme.a
	$(CC) $(SAN) -o $@ $(CTL_OBJ) $(BUILD)/libacme.a $(LDLIBS)

$(BUILD)/tests/%: tests/unit/%.c tests/unit/unit.h $(BUILD)/libacme.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Wno-unused-parameter -Itests/unit -o $@ $< $(BUILD)/libacme.a $(LDLIBS) -lcmocka

unit: check-deps $(UNIT_BIN)
	@$(PYTHON) tests/run_unit.py $(UNIT_BIN)

# Both test targets run the e2e suite on E2E_JOBS processes (default: one per CPU), then the tests marked
# `serial` alone (tests/run_all.py); E2E_JOBS=1: one process.
e2e: all pebble-next
	@ACME_BUILD=$(abspath $(BUILD)) $(PYTHON) tests/run_all.py

test: check-deps all pebble-next $(UNIT_BIN)
	@ACME_BUILD=$(abspath $(BUILD)) $(PYTHON) tests/run_all.py $(UNIT_BIN)

# The core, acmectl, both modules and their tests under ASan/UBSan. nginx and Apache httpd are built
# from Debian's source packages with the same flags (tests/asan/build-*.sh, cached in build/asan), the
# modules against those trees; a sanitizer report of any test process fails the test (see
# docs/architecture.md, Testing). nginx's and httpd's own code get recoverable UBSan checks, so that
# tests/asan/ubsan.supp can silence their known reports (halt_on_error=1 stops at any other one).
ASAN_SAN   := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
ASAN_SRV   := -fsanitize=address,undefined -fno-omit-frame-pointer
ASAN_BUILD := build/asan
ASAN_ABS   := $(abspath $(ASAN_BUILD))
test-asan: check-deps
	tests/asan/build-nginx.sh $(ASAN_BUILD) "$(ASAN_SRV)"
	tests/asan/build-apache.sh $(ASAN_BUILD) "$(ASAN_SRV)"
	NGINX_BIN=$(ASAN_ABS)/nginx-bin NGX_SRC=$(ASAN_ABS)/nginx-src \
	APACHE_BIN=$(ASAN_ABS)/httpd/bin/httpd APACHE_MODULES=$(ASAN_ABS)/httpd/modules \
	APXS=$(ASAN_ABS)/httpd/bin/apxs \
	ACME_SANITIZER_PRELOAD="$$($(CC) -print-file-name=libasan.so) $(ASAN_ABS)/nodlclose.so" \
	ACME_SANITIZER_LOGS=$(ASAN_ABS)/sanitizer \
	$(MAKE) BUILD=$(ASAN_BUILD) OPT=-O1 SAN="$(ASAN_SAN)" \
	    MODULES="$(ASAN_BUILD)/ngx_http_acme_module.so $(ASAN_BUILD)/mod_acme.so" \
	    PYTEST_ARGS="--ignore-glob=*valgrind* $(PYTEST_ARGS)" test

# nginx and the module under valgrind through 50 forced renewals (also part of `make test`).
.PHONY: test-valgrind
test-valgrind: check-deps all
	ACME_BUILD=$(abspath $(BUILD)) $(PYTHON) -m pytest -p no:cacheprovider -q tests/e2e/test_nginx_valgrind.py

clean:
	rm -rf $(BUILD)

include tests/fuzz/fuzz.mk

# ---- Debian packages, the demo, the package test ------------------------------------------------------
.PHONY: deb demo test-packages

# libnginx-mod-http-acme, libapache2-mod-acme and acmectl (.deb) into $(BUILD)/deb, with debhelper
deb:
	debian/build-deb.sh $(BUILD)/deb

# Pebble + Debian's nginx with the module on loopback; shows the certificate; Ctrl-C stops it all.
# DEMO_TIMEOUT=SECONDS ends it by itself.
demo:
	@$(MAKE) --no-print-directory deps
	@$(MAKE) --no-print-directory all
	@ACME_BUILD=$(abspath $(BUILD)) $(PYTHON) tests/demo/demo.py

# builds the packages, installs them on this machine (stream/mail ones with Debian's modules present
# and absent), checks them, issues from Pebble through
# /etc/nginx, removes and purges them; restores /etc/nginx and /etc/apache2. Needs root.
test-packages:
	@ACME_BUILD=$(abspath $(BUILD)) $(PYTHON) tests/packaging/test_packages.py

# Benchmarks (bench/, docs/performance.md): a table of side-by-side ratios, build/bench/results.json and
# results.png. Fails only when a scenario could not run. Knobs: BENCH_* variables, see bench/bench.py.
BENCH_PKGS := wrk gnuplot-nox caddy
$(BUILD)/bench/hsbench: bench/hsbench.c
	@mkdir -p $(dir $@)
	$(CC) -O2 -g -Wall -Wextra -o $@ $< $(shell pkg-config --cflags --libs openssl) -lpthread

$(BUILD)/bench/gencerts: bench/gencerts.c
	@mkdir -p $(dir $@)
	$(CC) -O2 -g -Wall -Wextra -o $@ $< $(shell pkg-config --cflags --libs openssl)

.PHONY: bench bench-deps
bench-deps:
	@missing=""; for p in $(BENCH_PKGS); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	    $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

bench: all bench-deps $(BUILD)/bench/hsbench $(BUILD)/bench/gencerts
	ACME_BUILD=$(abspath $(BUILD)) BENCH_OUT=$(abspath $(BUILD))/bench $(PYTHON) bench/bench.py
