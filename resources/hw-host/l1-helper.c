/* l1-helper: what the scripts on the level-1 host of resources/hw-host need beyond busybox.
 *   l1-helper vsock-connect SOCK PORT MSG [SECS]
 *       The host side of plainvm's vsock convention (busybox nc has no unix sockets): connect to
 *       the device socket SOCK, ask for guest PORT (`CONNECT PORT`), send MSG, half-close, print
 *       "HWVSOCK-REPLY <reply>"; retried for SECS (default 60) while the guest does not listen.
 *   l1-helper vsock-serve PATH [SECS]
 *       Listen on the unix socket PATH (a guest connection to host port P arrives on SOCK_P),
 *       accept one connection, print "HWVSOCK-GOT <msg>", answer "echo:<msg>".
 *   l1-helper tcp-send ADDR PORT FILE [SECS]
 *       Connect to ADDR:PORT (retried for SECS, default 60), send FILE, half-close, then wait
 *       for the peer to close. busybox nc cannot do this against busybox `nc -l </dev/null` (the
 *       guest's receiver): it quits at the peer's half-close, long before its input is sent.
 * Exit 0 on success, 1 on failure (with a HWHELPER-FAIL line). Built 64-bit static by
 * resources/hw-host/build-l1.sh. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static int fail(const char *what)
{
    printf("HWHELPER-FAIL %s: %s\n", what, strerror(errno));
    return 1;
}

static struct sockaddr_un addr(const char *path)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strncpy(a.sun_path, path, sizeof(a.sun_path) - 1);
    return a;
}

/* Read until EOF (or the buffer is full) into buf; returns the length. */
static long read_all(int fd, char *buf, long cap)
{
    long n = 0, r;
    while (n < cap - 1 && (r = read(fd, buf + n, cap - 1 - n)) > 0)
        n += r;
    buf[n] = 0;
    return n;
}

static int try_connect(const char *path, const char *port, const char *msg, char *reply, long cap)
{
    struct sockaddr_un a = addr(path);
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof(a)) < 0) {
        if (s >= 0)
            close(s);
        return -1;
    }
    char line[64];
    snprintf(line, sizeof(line), "CONNECT %s\n", port);
    if (write(s, line, strlen(line)) < 0) {
        close(s);
        return -1;
    }
    /* The answer line, byte by byte: what follows it belongs to the guest. */
    long n = 0;
    char c;
    while (n < (long)sizeof(line) - 1 && read(s, &c, 1) == 1 && c != '\n')
        line[n++] = c;
    line[n] = 0;
    if (strncmp(line, "OK ", 3) != 0) {
        close(s);
        return -1;
    }
    if (write(s, msg, strlen(msg)) < 0) {
        close(s);
        return -1;
    }
    shutdown(s, SHUT_WR);
    read_all(s, reply, cap);
    close(s);
    return 0;
}

static int tcp_send(const char *ip, const char *port, const char *file, int secs)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(port))};
    if (inet_pton(AF_INET, ip, &a.sin_addr) != 1)
        return fail("address");
    int f = open(file, O_RDONLY);
    if (f < 0)
        return fail("open");
    time_t end = time(NULL) + secs;
    int s;
    for (;;) {
        s = socket(AF_INET, SOCK_STREAM, 0);
        if (s >= 0 && connect(s, (struct sockaddr *)&a, sizeof(a)) == 0)
            break;
        if (s >= 0)
            close(s);
        if (time(NULL) >= end)
            return fail("connect");
        usleep(300 * 1000);
    }
    static char buf[65536];
    long n, total = 0;
    while ((n = read(f, buf, sizeof(buf))) > 0) {
        for (long off = 0; off < n;) {
            long w = write(s, buf + off, n - off);
            if (w <= 0)
                return fail("send");
            off += w;
        }
        total += n;
    }
    shutdown(s, SHUT_WR);
    while (read(s, buf, sizeof(buf)) > 0)
        ;
    printf("HWHELPER-SENT %ld\n", total);
    return 0;
}

int main(int argc, char **argv)
{
    static char buf[65536];
    if (argc >= 5 && strcmp(argv[1], "tcp-send") == 0)
        return tcp_send(argv[2], argv[3], argv[4], argc > 5 ? atoi(argv[5]) : 60);
    if (argc >= 5 && strcmp(argv[1], "vsock-connect") == 0) {
        int secs = argc > 5 ? atoi(argv[5]) : 60;
        time_t end = time(NULL) + secs;
        do {
            if (try_connect(argv[2], argv[3], argv[4], buf, sizeof(buf)) == 0) {
                printf("HWVSOCK-REPLY %s\n", buf);
                return 0;
            }
            usleep(300 * 1000);
        } while (time(NULL) < end);
        return fail("connect");
    }
    if (argc >= 3 && strcmp(argv[1], "vsock-serve") == 0) {
        int secs = argc > 3 ? atoi(argv[3]) : 120;
        struct sockaddr_un a = addr(argv[2]);
        int l = socket(AF_UNIX, SOCK_STREAM, 0);
        unlink(argv[2]);
        if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(l, 1) < 0)
            return fail("listen");
        printf("HWVSOCK-SERVING %s\n", argv[2]);
        fflush(stdout);
        struct pollfd p = {.fd = l, .events = POLLIN};
        if (poll(&p, 1, secs * 1000) != 1)
            return fail("no connection");
        int c = accept(l, NULL, NULL);
        if (c < 0)
            return fail("accept");
        read_all(c, buf, sizeof(buf) - 8);
        printf("HWVSOCK-GOT %s\n", buf);
        char out[sizeof(buf) + 8];
        snprintf(out, sizeof(out), "echo:%s", buf);
        if (write(c, out, strlen(out)) < 0)
            return fail("write");
        close(c);
        return 0;
    }
    fprintf(stderr, "usage: l1-helper vsock-connect SOCK PORT MSG [SECS] | vsock-serve PATH [SECS] | tcp-send ADDR PORT FILE [SECS]\n");
    return 2;
}
