/* The host side of benches/net.py's rx phase: sends 1514-byte frames of ethertype 0x88b5 to a MAC
 * through a network interface as fast as it can, 64 per sendmmsg, bypassing the qdisc.
 * Usage: net_blaster IFNAME MAC */
#define _GNU_SOURCE
#include <linux/if_packet.h>
#include <net/if.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

enum { FRAME = 1514, BATCH = 64 };

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s IFNAME MAC\n", argv[0]);
        return 2;
    }
    unsigned m[6];
    if (sscanf(argv[2], "%x:%x:%x:%x:%x:%x", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]) != 6) {
        fprintf(stderr, "bad MAC %s\n", argv[2]);
        return 2;
    }
    int s = socket(AF_PACKET, SOCK_RAW, 0);
    if (s < 0) {
        perror("socket");
        return 1;
    }
    int one = 1;
    setsockopt(s, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one);
    struct sockaddr_ll sa = {.sll_family = AF_PACKET, .sll_ifindex = if_nametoindex(argv[1])};
    if (sa.sll_ifindex == 0 || bind(s, (struct sockaddr *)&sa, sizeof sa) < 0) {
        perror(argv[1]);
        return 1;
    }
    static unsigned char f[FRAME];
    for (int i = 0; i < 6; i++)
        f[i] = m[i];
    const unsigned char src[6] = {2, 0, 0, 0, 0, 0xaa};
    memcpy(f + 6, src, 6);
    f[12] = 0x88;
    f[13] = 0xb5;
    for (int i = 14; i < FRAME; i++)
        f[i] = (i - 14) & 255;
    static struct mmsghdr msgs[BATCH];
    static struct iovec iov[BATCH];
    for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = f;
        iov[i].iov_len = FRAME;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    for (;;)
        sendmmsg(s, msgs, BATCH, 0); /* a full tap queue drops frames: that is the point */
}
