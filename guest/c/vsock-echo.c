/* vsock-echo: a guest-side vsock test helper.
 *   vsock-echo listen PORT        accept one connection on PORT, echo it back until EOF
 *   vsock-echo connect CID PORT MSG   connect to CID:PORT, send MSG, half-close, print reply
 * Prints one result line starting with VSOCK- and exits 0 on success, 1 on failure. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <linux/vm_sockets.h>

static int fail(const char *what)
{
    perror(what);
    printf("VSOCK-FAIL %s\n", what);
    return 1;
}

static int do_listen(unsigned port)
{
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port};
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (s < 0)
        return fail("socket");
    if (bind(s, (struct sockaddr *)&a, sizeof(a)) < 0)
        return fail("bind");
    if (listen(s, 1) < 0)
        return fail("listen");
    printf("VSOCK-LISTENING %u\n", port);
    fflush(stdout);
    int c = accept(s, NULL, NULL);
    if (c < 0)
        return fail("accept");
    char buf[4096];
    long total = 0;
    for (;;) {
        ssize_t n = read(c, buf, sizeof(buf));
        if (n < 0)
            return fail("read");
        if (n == 0)
            break;
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(c, buf + off, n - off);
            if (w <= 0)
                return fail("write");
            off += w;
        }
        total += n;
    }
    close(c);
    printf("VSOCK-ECHOED %ld\n", total);
    return 0;
}

static int do_connect(unsigned cid, unsigned port, const char *msg)
{
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = cid, .svm_port = port};
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (s < 0)
        return fail("socket");
    if (connect(s, (struct sockaddr *)&a, sizeof(a)) < 0)
        return fail("connect");
    size_t len = strlen(msg);
    if (write(s, msg, len) != (ssize_t)len)
        return fail("write");
    shutdown(s, SHUT_WR);
    char buf[4096];
    size_t got = 0;
    for (;;) {
        ssize_t n = read(s, buf + got, sizeof(buf) - 1 - got);
        if (n < 0)
            return fail("read");
        if (n == 0 || got + n >= sizeof(buf) - 1) {
            got += n > 0 ? n : 0;
            break;
        }
        got += n;
    }
    buf[got] = 0;
    close(s);
    printf("VSOCK-REPLY %s\n", buf);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "listen"))
        return do_listen(strtoul(argv[2], NULL, 10));
    if (argc == 5 && !strcmp(argv[1], "connect"))
        return do_connect(strtoul(argv[2], NULL, 10), strtoul(argv[3], NULL, 10), argv[4]);
    fprintf(stderr, "usage: vsock-echo listen PORT | connect CID PORT MSG\n");
    return 2;
}
