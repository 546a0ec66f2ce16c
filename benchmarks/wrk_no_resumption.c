/* Loaded into wrk (LD_PRELOAD) by benchmarks/router.py for its "full TLS handshakes" test.
 *
 * wrk keeps one SSL object per connection slot and SSL_clear()s it between connections,
 * which keeps the session: every new connection offers the previous one's ticket, and a
 * server that takes it makes a resumed handshake (no certificate, no signature). This
 * forgets the session before a handshake starts, so that each connection is a full
 * handshake, as for a client that keeps no sessions (curl, most HTTP libraries, health
 * checks) or a new visitor.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>

int SSL_connect(void *ssl)
{
    static int (*connect)(void *);
    static int (*set_session)(void *, void *);
    static int (*in_before)(void *);

    if (connect == NULL) {
        connect = (int (*)(void *))dlsym(RTLD_NEXT, "SSL_connect");
        set_session = (int (*)(void *, void *))dlsym(RTLD_DEFAULT, "SSL_set_session");
        in_before = (int (*)(void *))dlsym(RTLD_DEFAULT, "SSL_in_before");
    }
    /* wrk calls SSL_connect again while a non-blocking handshake goes on: only before
     * it has started is the session forgotten. */
    if (in_before(ssl))
        set_session(ssl, NULL);
    return connect(ssl);
}
