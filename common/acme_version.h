/* The release version, sent in the User-Agent (keep in step with debian/changelog). */
#ifndef ACME_VERSION_H
#define ACME_VERSION_H

#define ACME_PRODUCT  "acme-httpd"
#define ACME_VERSION  "0.1.0"

#endif
