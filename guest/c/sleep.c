/* sleep without x87: replaces busybox's `sleep` in plainvm's 32-bit Linux guests.
 *
 *   sleep N[.FRAC][s|m|h|d]...   several arguments add up;  sleep inf   sleeps until killed
 *
 * On kvm_pvm hosts (no VT-x/AMD-V) 32-bit guest user code does not run natively: KVM's
 * instruction emulator runs it, and the emulator has no x87, MMX and most SSE instructions, so the
 * first `fldz` raises #UD and the guest kernel kills the process with SIGILL. Busybox's sleep adds
 * its arguments up as doubles and dies that way. This one uses integers only and is built with
 * -mno-80387 (resources/build-guest-bins.sh), so the compiler cannot put x87 code into it.
 *
 * It sleeps with the 64-bit-time system call (clock_nanosleep_time64, Linux 5.1+), which works
 * whether or not the guest kernel has CONFIG_COMPAT_32BIT_TIME, and falls back to the 32-bit-time
 * nanosleep on older kernels. resources/guest/init calls it as /usr/bin/sleep: busybox's shell
 * prefers its own applets to anything on PATH.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>

#ifndef SYS_clock_nanosleep_time64
#define SYS_clock_nanosleep_time64 407 /* i386 */
#endif

#define NS 1000000000ULL
/* "Forever": also what any sum too large for 64 bits of nanoseconds (584 years) becomes. */
#define FOREVER (~0ULL)

#ifdef PLAINVM_GUEST_TEST
#define main sleep_main /* guest/c/tests/sleep-parse.c has its own */
#endif

static unsigned long long sat_add(unsigned long long a, unsigned long long b)
{
    return a > FOREVER - b ? FOREVER : a + b;
}

static unsigned long long sat_mul(unsigned long long a, unsigned long long b)
{
    return b && a > FOREVER / b ? FOREVER : a * b;
}

/* Nanoseconds in `s` (N[.FRAC][s|m|h|d], "inf" or "infinity"), FOREVER when too large; -1 if `s`
 * is not a duration. Fraction digits past the ninth are ignored. */
static int parse_duration(const char *s, unsigned long long *ns)
{
    unsigned long long sec = 0, frac = 0, scale = NS, mul = 1;
    const char *p = s;
    int digits = 0;

    if (strcmp(s, "inf") == 0 || strcmp(s, "infinity") == 0) {
        *ns = FOREVER;
        return 0;
    }
    for (; *p >= '0' && *p <= '9'; p++, digits++)
        sec = sat_add(sat_mul(sec, 10), (unsigned)(*p - '0'));
    if (*p == '.')
        for (p++; *p >= '0' && *p <= '9'; p++, digits++)
            if (scale > 1) {
                scale /= 10;
                frac += (unsigned)(*p - '0') * scale;
            }
    if (digits == 0)
        return -1;
    switch (*p) {
    case 0: case 's': break;
    case 'm': mul = 60; break;
    case 'h': mul = 3600; break;
    case 'd': mul = 86400; break;
    default: return -1;
    }
    if (*p && p[1])
        return -1;
    *ns = sat_mul(sat_add(sat_mul(sec, NS), frac), mul);
    return 0;
}

/* The sum of the arguments in nanoseconds; -1 (after a message) if one is not a duration. */
static int total_duration(int argc, char **argv, unsigned long long *total)
{
    unsigned long long ns;
    *total = 0;
    for (int i = 1; i < argc; i++) {
        if (parse_duration(argv[i], &ns) != 0) {
            fprintf(stderr, "sleep: invalid number '%s'\n", argv[i]);
            return -1;
        }
        *total = sat_add(*total, ns);
    }
    return 0;
}

struct ts64 {
    long long sec;
    long long nsec;
};

/* The 32-bit-time nanosleep (kernels before 5.1), in steps that fit a 32-bit time_t. */
static int sleep_time32(struct ts64 left)
{
    for (;;) {
        int last = left.sec <= 0x7fffffff;
        struct timespec t = { (time_t)(last ? left.sec : 0x7fffffff), last ? (long)left.nsec : 0 };
        while (nanosleep(&t, &t) != 0)
            if (errno != EINTR) {
                perror("sleep");
                return 1;
            }
        if (last)
            return 0;
        left.sec -= 0x7fffffff;
    }
}

/* Sleep `ns` nanoseconds (FOREVER: until a signal ends the process). */
static int sleep_ns(unsigned long long ns)
{
    if (ns == FOREVER)
        for (;;)
            pause();
    struct ts64 left = { (long long)(ns / NS), (long long)(ns % NS) };
    for (;;) {
        /* Relative: `left` gets the time still to sleep when a signal interrupts. */
        if (syscall(SYS_clock_nanosleep_time64, CLOCK_MONOTONIC, 0, &left, &left) == 0)
            return 0;
        if (errno == EINTR)
            continue;
        if (errno == ENOSYS)
            return sleep_time32(left);
        perror("sleep");
        return 1;
    }
}

int main(int argc, char **argv)
{
    unsigned long long total;
    if (argc < 2) {
        fprintf(stderr, "usage: sleep N[.FRAC][s|m|h|d]... | inf\n");
        return 1;
    }
    if (total_duration(argc, argv, &total) != 0)
        return 1;
    return sleep_ns(total);
}
