/*
 * Key generation that does not stall a host's event loop. RSA keys take up to seconds to make: under a
 * hosted loop (an nginx worker) they are made in a forked child that hands the PEM back through a pipe,
 * polled from a loop timer; no thread. ECDSA keys (milliseconds), and every key in blocking mode (Apache's
 * thread, acmectl), are made in-process. The result always arrives from the loop, never from inside start.
 */
#ifndef ACME_KEYGEN_H
#define ACME_KEYGEN_H

#include <openssl/evp.h>
#include "acme_err.h"
#include "acme_key.h"
#include "acme_loop.h"

typedef struct acme_keygen_s acme_keygen_t;

/* key (owned by the callee) or NULL with err. The acme_keygen_t is gone when this runs. */
typedef void (*acme_keygen_done_pt)(void *arg, EVP_PKEY *key, const acme_err_t *err);

acme_keygen_t *acme_keygen_start(acme_loop_t *loop, const acme_keyspec_t *ks, acme_keygen_done_pt done,
    void *arg, acme_err_t *err);
/* done is not called; a child still working is killed and reaped. */
void acme_keygen_cancel(acme_keygen_t *kg);

/* Tests: 1 when the last started generation ran in a child process. */
int acme_keygen_last_forked(void);

#endif
