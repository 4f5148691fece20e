/*
 * libFuzzer entry point for one target, chosen at compile time:
 *     clang -fsanitize=fuzzer,address,undefined -DFUZZ_TARGET=problem tests/fuzz/libfuzzer_main.c ...
 * builds fuzz_problem. The targets themselves are in targets.c (shared with the corpus replay test).
 */
#include "targets.c"

#ifndef FUZZ_TARGET
#error "define FUZZ_TARGET to one of the names in FUZZ_TARGETS (targets.c)"
#endif

#define FUZZ_CAT2(a, b)  a##b
#define FUZZ_CAT(a, b)   FUZZ_CAT2(a, b)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return FUZZ_CAT(fuzz_, FUZZ_TARGET)(data, size);
}
