/* Common includes for the cmocka unit tests. */
#ifndef ACME_UNIT_H
#define ACME_UNIT_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <string.h>
#include <stdlib.h>
#include <stdio.h>
#include <cmocka.h>
#include <ftw.h>
#include <sys/stat.h>

static int
unit_rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void) sb;
    (void) flag;
    (void) ftw;
    return remove(path);
}

/* Removes a test's temporary directory and everything under it (links not followed). */
static inline void
unit_rmtree(const char *dir)
{
    nftw(dir, unit_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

#endif
