/* Which status format a request asks for, and whether a POST from a browser may act. */
#include "acme_status_html.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* q of one media range's parameters ("; q=0.5; level=1"): 1000 scale, 1000 when absent, 0 when bad. */
static int
range_q(const char *p, const char *end)
{
    int  q, digits;

    while (p < end) {
        while (p < end && (*p == ';' || *p == ' ' || *p == '\t')) {
            p++;
        }
        if (end - p >= 2 && (p[0] == 'q' || p[0] == 'Q') && p[1] == '=') {
            p += 2;
            if (p < end && *p == '1') {
                return 1000;
            }
            if (p >= end || *p != '0') {
                return 0;
            }
            p++;
            q = 0;
            digits = 0;
            if (p < end && *p == '.') {
                for (p++; p < end && digits < 3 && *p >= '0' && *p <= '9'; p++, digits++) {
                    q = q * 10 + (*p - '0');
                }
            }
            for (; digits < 3; digits++) {
                q *= 10;
            }
            return q;
        }
        while (p < end && *p != ';') {
            p++;
        }
    }
    return 1000;
}

int
acme_status_accepts_html(const char *accept, size_t len)
{
    const char  *p, *end, *item, *type_end;
    size_t       n;
    int          q, html = -1, json = -1, json_rank = 0, rank;

    if (accept == NULL) {
        return 0;
    }
    end = accept + len;
    for (p = accept; p < end; p = item + 1) {
        while (p < end && (*p == ' ' || *p == '\t' || *p == ',')) {
            p++;
        }
        if (p >= end) {
            break;
        }
        item = memchr(p, ',', (size_t) (end - p));
        if (item == NULL) {
            item = end;
        }
        type_end = memchr(p, ';', (size_t) (item - p));
        if (type_end == NULL) {
            type_end = item;
        }
        n = (size_t) (type_end - p);
        while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t')) {
            n--;
        }
        q = range_q(type_end, item);

        /* only an explicit text/html asks for the page; JSON takes its q from the most specific range */
        if (n == 9 && strncasecmp(p, "text/html", 9) == 0) {
            html = q > html ? q : html;
            continue;
        }
        rank = (n == 16 && strncasecmp(p, "application/json", 16) == 0) ? 3
               : (n == 13 && strncasecmp(p, "application/*", 13) == 0) ? 2
               : (n == 3 && strncmp(p, "*/*", 3) == 0) ? 1 : 0;
        if (rank > json_rank || (rank == json_rank && rank > 0 && q > json)) {
            json_rank = rank;
            json = q;
        }
    }
    return html > 0 && html > json;
}

/* host[:port] of an origin ("https://host:port"), compared with the Host header, case-insensitively */
static int
origin_is_host(const char *origin, const char *host)
{
    const char  *sep;

    sep = strstr(origin, "://");
    if (sep == NULL) {
        return 0;
    }
    origin = sep + 3;
    return strchr(origin, '/') == NULL && strcasecmp(origin, host) == 0;
}

int
acme_status_post_allowed(const char *sec_fetch_site, const char *origin, const char *host)
{
    if (sec_fetch_site != NULL && strcasecmp(sec_fetch_site, "same-origin") != 0
        && strcasecmp(sec_fetch_site, "none") != 0)
    {
        return 0;
    }
    if (origin != NULL && (host == NULL || !origin_is_host(origin, host))) {
        return 0;
    }
    return 1;
}
