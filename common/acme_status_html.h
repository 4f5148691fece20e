/* The status page for people: the status document (JSON) drawn as HTML, shared by nginx and Apache. */
#ifndef ACME_STATUS_HTML_H
#define ACME_STATUS_HTML_H

#include <stddef.h>
#include <time.h>

/* 1 when an Accept header value prefers text/html to application/json (a browser's); 0 for NULL, an
 * empty value, a bare wildcard, application/json or text/html with q=0: JSON stays the default. */
int acme_status_accepts_html(const char *accept, size_t len);

/* 1 when a POST may act, judged from what browsers send: Sec-Fetch-Site must be "same-origin" or "none"
 * when present; an Origin, when present, must name the Host (scheme stripped; "null" never does).
 * Clients that send neither (curl, scripts) pass. Each argument may be NULL (header absent). */
int acme_status_post_allowed(const char *sec_fetch_site, const char *origin, const char *host);

/* The page for the status document json (its "certificates" array), renew buttons when renew != 0,
 * days left counted from now. malloc()ed, NUL-terminated, *len its length; NULL when out of memory.
 * Every text from the document is HTML-escaped; the page loads nothing and runs no script. */
char *acme_status_html(const char *json, size_t json_len, int renew, time_t now, size_t *len);

/* The Content-Security-Policy that goes with the page: nothing loaded, no script, only the page's own
 * stylesheet (by its hash), forms posted only to the page's origin, never framed. Static storage. */
const char *acme_status_html_csp(void);

#endif
