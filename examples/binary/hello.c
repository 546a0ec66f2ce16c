/* dinp's binary example: a tiny HTTP server, compiled static by build.sh.
 * Listens on $PORT (default 8080) and answers every request with one line. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(void) {
    const char *port = getenv("PORT");
    const char *app = getenv("DINP_APP");
    char body[256], response[512], request[4096];
    int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_ANY)};

    signal(SIGPIPE, SIG_IGN);
    addr.sin_port = htons((unsigned short)atoi(port ? port : "8080"));
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(fd, 64) < 0) {
        perror("hello: listen");
        return 1;
    }
    snprintf(body, sizeof body, "hello from a static binary (app %s)\n", app ? app : "?");
    snprintf(response, sizeof response,
             "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
             "Connection: close\r\n\r\n%s", strlen(body), body);
    printf("hello: listening on port %s\n", port ? port : "8080");
    fflush(stdout);
    for (;;) {
        int client = accept(fd, NULL, NULL);
        if (client < 0)
            continue;
        if (read(client, request, sizeof request) > 0 &&
            write(client, response, strlen(response)) < 0)
            perror("hello: write");
        close(client);
    }
}
