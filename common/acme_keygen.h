/*
 * Key generation that does not stall a host's event loop. RSA keys take up to seconds to make: under a
 * hosted loop (an nginx worker) they are made in a thread of their own (signals blocked), whose end a loop
 * timer polls; not in a child process, which the host would reap and log as unknown. ECDSA keys
 * (milliseconds), and every key in blocking mode (Apache's thread, acmectl), are made in-process. The
 * result always arrives from the loop, never from inside start.
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
/* done is not called; a thread still working stops at OpenSSL's next progress callback and is joined. */
void acme_keygen_cancel(acme_keygen_t *kg);

/* Tests: 1 when the last started generation runs in a thread. */
int acme_keygen_last_threaded(void);

#endif
