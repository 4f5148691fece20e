# libFuzzer harnesses (tests/fuzz/targets.c), built with clang and its sanitizers into $(BUILD)/fuzz/.
#
#   make fuzz                   every target for FUZZ_SECONDS (default 20) each, one after the other
#   make fuzz-<target>          one of them (targets: see FUZZ_TARGETS)
#   make fuzz FUZZ_SECONDS=0    only replay the seed corpora
#   make fuzz-build             build the binaries only
#   FUZZ_FLAGS="-jobs=..."      extra libFuzzer flags
#
# Each run works on a copy of tests/fuzz/corpus/<target> in $(BUILD)/fuzz/corpus/<target>; crashing inputs
# land in $(BUILD)/fuzz/artifacts/<target>/. Keep a minimised one in tests/fuzz/regressions/<target>/: the
# unit test test_fuzz_corpus replays every seed and regression in the normal (and ASan) build.

FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 20
FUZZ_FLAGS   ?=
FUZZ_DIR     := $(BUILD)/fuzz
FUZZ_TARGETS := problem directory ca order authz challenge renewal_info time pem_chain http01 ident certmeta announce

FUZZ_SAN     := -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
# the core's pkg-config packages (PKGS in the Makefile: libcurl jansson openssl, and whatever it adds)
FUZZ_PKGS    := $(or $(PKGS),libcurl jansson openssl)
FUZZ_CFLAGS  := $(FUZZ_SAN) -g -O1 -std=gnu11 -Wall -Wextra -Wno-unused-parameter -D_GNU_SOURCE \
                -Icommon $(shell pkg-config --cflags $(FUZZ_PKGS) 2>/dev/null)
FUZZ_LIBS    := $(shell pkg-config --libs $(FUZZ_PKGS) 2>/dev/null) -lcurl -ljansson -lssl -lcrypto -lpthread

FUZZ_CORE_SRC := $(sort $(wildcard common/*.c))
FUZZ_CORE_OBJ := $(patsubst common/%.c,$(FUZZ_DIR)/obj/%.o,$(FUZZ_CORE_SRC))
FUZZ_LIB      := $(FUZZ_DIR)/libacme-fuzz.a
FUZZ_BINS     := $(addprefix $(FUZZ_DIR)/fuzz_,$(FUZZ_TARGETS))
FUZZ_RUNS     := $(addprefix fuzz-,$(FUZZ_TARGETS))

.PHONY: fuzz fuzz-build fuzz-deps $(FUZZ_RUNS)
.SECONDARY: $(FUZZ_BINS) $(FUZZ_CORE_OBJ) $(FUZZ_LIB)

fuzz: $(FUZZ_RUNS)

fuzz-build: $(FUZZ_BINS)

# clang and libclang-rt come from Debian (DEB_PKGS in the Makefile).
fuzz-deps:
	@command -v $(FUZZ_CC) >/dev/null && ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a \
	    >/dev/null 2>&1 || $(MAKE) --no-print-directory deps

# The core with the same clang flags as the harnesses (the gcc objects in $(BUILD)/obj are not reused).
$(FUZZ_DIR)/obj/%.o: common/%.c $(wildcard common/*.h) | fuzz-deps
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -c -o $@ $<

$(FUZZ_LIB): $(FUZZ_CORE_OBJ)
	rm -f $@
	ar rcs $@ $^

$(FUZZ_DIR)/fuzz_%: tests/fuzz/libfuzzer_main.c tests/fuzz/targets.c $(FUZZ_LIB)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -DFUZZ_TARGET=$* -o $@ tests/fuzz/libfuzzer_main.c $(FUZZ_LIB) $(FUZZ_LIBS)

$(FUZZ_RUNS): fuzz-%: $(FUZZ_DIR)/fuzz_%
	@sh tests/fuzz/run.sh $< $* $(FUZZ_SECONDS) tests/fuzz/corpus/$* $(FUZZ_DIR) $(FUZZ_FLAGS)

# The corpus replay test (tests/unit/test_fuzz_corpus.c) includes the targets: rebuild it when they change.
$(BUILD)/tests/test_fuzz_corpus: tests/fuzz/targets.c
