/* net-ping ADDR [COUNT]: send ICMP echo requests to ADDR (dotted IPv4), one a second, and wait up
 * to 10 s for each reply. Integer-only on purpose: busybox ping parses its interval with x87 code,
 * which faults (#UD) in guest user mode on PVM hosts. Prints one line per reply; exit 0 when every
 * request was answered. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static unsigned short csum(const unsigned char *p, int n) {
    unsigned long s = 0;
    for (int i = 0; i + 1 < n; i += 2) s += (p[i] << 8) | p[i + 1];
    if (n & 1) s += p[n - 1] << 8;
    while (s >> 16) s = (s & 0xffff) + (s >> 16);
    return (unsigned short)~s;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: net-ping ADDR [COUNT]\n");
        return 2;
    }
    int count = argc > 2 ? atoi(argv[2]) : 3;
    struct sockaddr_in to = {.sin_family = AF_INET};
    if (inet_pton(AF_INET, argv[1], &to.sin_addr) != 1) {
        fprintf(stderr, "net-ping: bad address %s\n", argv[1]);
        return 2;
    }
    int fd = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
    if (fd < 0) {
        perror("net-ping: socket");
        return 1;
    }
    unsigned short id = (unsigned short)getpid();
    int ok = 0;
    for (int seq = 1; seq <= count; seq++) {
        unsigned char pkt[64] = {8, 0};
        pkt[4] = id >> 8, pkt[5] = id & 255, pkt[6] = seq >> 8, pkt[7] = seq & 255;
        for (int i = 8; i < 64; i++) pkt[i] = (unsigned char)i;
        unsigned short c = csum(pkt, sizeof pkt);
        pkt[2] = c >> 8, pkt[3] = c & 255;
        if (sendto(fd, pkt, sizeof pkt, 0, (struct sockaddr *)&to, sizeof to) < 0) {
            perror("net-ping: sendto");
            continue;
        }
        int waited = 0;
        while (waited < 10000) {
            struct pollfd p = {.fd = fd, .events = POLLIN};
            if (poll(&p, 1, 500) <= 0) {
                waited += 500;
                continue;
            }
            unsigned char buf[256];
            struct sockaddr_in from;
            socklen_t fl = sizeof from;
            int n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
            if (n < 28) continue;
            int ihl = (buf[0] & 15) * 4;
            if (n < ihl + 8 || from.sin_addr.s_addr != to.sin_addr.s_addr) continue;
            unsigned char *icmp = buf + ihl;
            if (icmp[0] == 0 && icmp[4] == (id >> 8) && icmp[5] == (id & 255) &&
                icmp[6] == (seq >> 8) && icmp[7] == (seq & 255)) {
                printf("net-ping: reply from %s seq=%d\n", argv[1], seq);
                fflush(stdout);
                ok++;
                break;
            }
        }
        /* poll, not sleep: this guest kernel lacks the 32-bit time syscalls sleep() may use. */
        if (seq < count) poll(NULL, 0, 1000);
    }
    close(fd);
    return ok == count ? 0 : 1;
}
