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

#endif
