/* plainvm-guest: the guest side of the plainvm hypercall device (docs/hypercall.md) for 32-bit
 * Linux guests. Drives the MMIO register page at 0xc0000000 through /dev/mem (CONFIG_DEVMEM=y,
 * STRICT_DEVMEM off). The same subcommands as the x86_64 Rust agent in guest/agent; the constants
 * mirror guest/proto/src (keep them in sync).
 *
 *   plainvm-guest mark <stage>            stage: init|userspace|ready|shutdown or a number
 *   plainvm-guest poweroff [--code N]     sync, drain the console, then POWER(off, N): plainvm
 *                                         exits with N
 *   plainvm-guest reboot [--code N]       sync, drain the console, then POWER(reboot, N)
 *   plainvm-guest time-sync               set the clock from HOST_TIME
 *   plainvm-guest watch [--interval MS]   announce the agent; follow GENERATION (resync the
 *                                         clock), answer host REQUESTs, heartbeat, memory hint
 *   plainvm-guest log <text...>           one line into the host log (rate-limited)
 *   plainvm-guest heartbeat [--interval MS]
 *   plainvm-guest version
 */
#define _GNU_SOURCE
#define _FILE_OFFSET_BITS 64
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define HC_BASE 0xc0000000ULL
#define HC_MAGIC 0x4d564c50u /* "PLVM" little endian */
#define HC_VERSION 1u

#define R_MAGIC 0x00
#define R_VERSION 0x04
#define R_CALL 0x08
#define R_STATUS 0x0c
#define R_ARG0 0x10
#define R_RET0 0x20
#define R_GENERATION 0x30
#define R_PENDING 0x34
#define R_TEXT 0x100
#define LOG_MAX 512

enum { NR_VERSION, NR_BOOT_MARK, NR_POWER, NR_LOG, NR_HOST_TIME, NR_GENERATION, NR_MEM_HINT,
       NR_HEARTBEAT, NR_REQUEST, NR_AGENT_HELLO, NR_LOG_TEXT };
enum { REQ_NONE, REQ_POWER_OFF, REQ_REBOOT, REQ_TIME_SYNC };
#define AGENT_POWER 1u
#define AGENT_TIME_SYNC 2u

static volatile uint32_t *page;

static const char *describe(uint32_t status)
{
    switch (status) {
    case 0: return "ok";
    case 1: return "unknown call (is plainvm older than this helper?)";
    case 2: return "invalid argument";
    case 3: return "address outside guest RAM";
    case 4: return "rate limited, try again later";
    case 5: return "limit reached";
    case 6: return "bad register access";
    default: return "unknown status";
    }
}

static int lock_fd = -1;

#ifdef PLAINVM_GUEST_TEST
/* guest/c/tests/watch-race.c includes this file and provides the device and the clock. */
static uint32_t rd(unsigned off);
static void wr(unsigned off, uint32_t v);
static int set_realtime(const struct timespec *t);
#define main plainvm_guest_main
#else
static uint32_t rd(unsigned off) { return page[off / 4]; }
static void wr(unsigned off, uint32_t v) { page[off / 4] = v; }
static int set_realtime(const struct timespec *t) { return clock_settime(CLOCK_REALTIME, t); }
#endif

/* Map the device page and check the magic; exits with a message when it is not there. */
static void open_device(void)
{
    int fd = open("/dev/mem", O_RDWR | O_SYNC);
    if (fd < 0) {
        fprintf(stderr, "plainvm-guest: cannot open /dev/mem: %s (needs root and CONFIG_DEVMEM)\n",
                strerror(errno));
        exit(1);
    }
    void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)HC_BASE);
    /* Kept open: each call holds flock on it (see hc). */
    lock_fd = fd;
    if (p == MAP_FAILED) {
        fprintf(stderr, "plainvm-guest: cannot map the hypercall page at %#llx: %s\n",
                HC_BASE, strerror(errno));
        exit(1);
    }
    page = p;
    if (rd(R_MAGIC) != HC_MAGIC) {
        fprintf(stderr, "plainvm-guest: no plainvm hypercall device at %#llx (magic %#x): not running under plainvm?\n",
                HC_BASE, rd(R_MAGIC));
        exit(1);
    }
}

/* Run call nr; returns the status, results in ret (may be NULL). The registers are shared by the
 * whole guest (the `watch` agent and one-shot commands run at once), so a call holds an exclusive
 * flock on /dev/mem from its first write to its last read. */
static uint32_t hc(uint32_t nr, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t ret[4])
{
    while (flock(lock_fd, LOCK_EX) < 0 && errno == EINTR)
        ;
    wr(R_ARG0, a0);
    wr(R_ARG0 + 4, a1);
    wr(R_ARG0 + 8, a2);
    wr(R_ARG0 + 12, 0);
    wr(R_CALL, nr);
    uint32_t s = rd(R_STATUS);
    if (ret)
        for (int i = 0; i < 4; i++)
            ret[i] = s == 0 ? rd(R_RET0 + 4 * i) : 0;
    flock(lock_fd, LOCK_UN);
    return s;
}

static int fail(const char *what, uint32_t status)
{
    fprintf(stderr, "plainvm-guest: %s failed: %s\n", what, describe(status));
    return 1;
}

static int parse_u32(const char *s, uint32_t *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (!*s || *end || errno || v > 0xffffffffUL)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

/* "--code N" / "--interval N" style option; returns -1 on a bad or unknown argument. */
static int option(int argc, char **argv, const char *name, uint32_t *val)
{
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], name) == 0 && i + 1 < argc) {
            if (parse_u32(argv[i + 1], val)) {
                fprintf(stderr, "plainvm-guest: %s wants a number, got '%s'\n", name, argv[i + 1]);
                return -1;
            }
            i++;
        } else {
            fprintf(stderr, "plainvm-guest: unexpected argument '%s'\n", argv[i]);
            return -1;
        }
    }
    return 0;
}

static int do_mark(const char *stage)
{
    static const char *names[] = { "init", "userspace", "ready", "shutdown" };
    uint32_t n = 0;
    for (unsigned i = 0; i < 4; i++)
        if (strcmp(stage, names[i]) == 0)
            n = i + 1;
    if (!n && parse_u32(stage, &n)) {
        fprintf(stderr, "plainvm-guest: mark: unknown stage '%s' (init, userspace, ready, shutdown or a number)\n", stage);
        return 1;
    }
    uint32_t s = hc(NR_BOOT_MARK, n, 0, 0, NULL);
    return s ? fail("mark", s) : 0;
}

static void on_alarm(int sig) { (void)sig; }

/* Wait until the console has sent what processes wrote to it, for at most 2 s. The kernel's tty
 * layer sends asynchronously: output still queued when POWER stops the VM is lost (seen: a guest
 * whose UART interrupt edge was lost powered off with its last lines unsent). */
static void drain_console(void)
{
    int fd = open("/dev/console", O_WRONLY | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return;
    /* No SA_RESTART: the alarm ends a drain that does not finish (tcdrain fails with EINTR). */
    struct sigaction sa = { .sa_handler = on_alarm };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, NULL);
    alarm(2);
    tcdrain(fd);
    alarm(0);
    close(fd);
}

static int do_power(int reboot, uint32_t code)
{
    if (code > 255) {
        fprintf(stderr, "plainvm-guest: exit code %u is out of range 0..255\n", code);
        return 1;
    }
    sync();
    fflush(NULL);
    drain_console();
    uint32_t s = hc(NR_POWER, reboot ? 1 : 0, code, 0, NULL);
    return fail(reboot ? "reboot" : "poweroff", s);
}

/* HOST_TIME into *host: 0 on success, -1 on an error (reported), 1 when the results were lost. A
 * snapshot taken between the call and the reading of its results restores into a new device,
 * whose result registers read 0 (no real host clock says 1970). */
static int host_time(struct timespec *host)
{
    uint32_t r[4];
    uint32_t s = hc(NR_HOST_TIME, 0, 0, 0, r);
    if (s)
        return fail("time-sync", s), -1;
    if (r[0] == 0 && r[1] == 0 && r[2] == 0)
        return 1;
    host->tv_sec = (time_t)r[0];
    host->tv_nsec = (long)r[2];
    if (r[1] != 0 || (uint64_t)host->tv_sec != r[0]) {
        fprintf(stderr, "plainvm-guest: time-sync: host time %u:%u does not fit this guest's time_t\n", r[1], r[0]);
        return -1;
    }
    return 0;
}

/* Set the clock to *host and say so (tests count these lines). */
static int set_clock(const struct timespec *host)
{
    struct timespec before;
    clock_gettime(CLOCK_REALTIME, &before);
    if (set_realtime(host)) {
        fprintf(stderr, "plainvm-guest: time-sync: cannot set the clock: %s\n", strerror(errno));
        return 1;
    }
    printf("plainvm-guest: time-sync: clock set to %lld.%03ld (was %lld, off by %lld s)\n",
           (long long)host->tv_sec, host->tv_nsec / 1000000, (long long)before.tv_sec,
           (long long)host->tv_sec - (long long)before.tv_sec);
    fflush(stdout);
    return 0;
}

static int do_time_sync(void)
{
    struct timespec host;
    for (int i = 0; i < 4; i++) {
        int lost = host_time(&host);
        if (lost < 0)
            return 1;
        if (!lost)
            return set_clock(&host);
    }
    fprintf(stderr, "plainvm-guest: time-sync failed: the host time read back as 0 4 times\n");
    return 1;
}

static int do_log(int argc, char **argv)
{
    char text[LOG_MAX];
    size_t n = 0;
    for (int i = 2; i < argc && n < LOG_MAX; i++) {
        if (i > 2)
            text[n++] = ' ';
        size_t l = strlen(argv[i]);
        if (l > LOG_MAX - n)
            l = LOG_MAX - n;
        memcpy(text + n, argv[i], l);
        n += l;
    }
    if (n == 0) {
        fprintf(stderr, "plainvm-guest: log: give the text to log\n");
        return 1;
    }
    /* Copy into the TEXT window one 32-bit word at a time (MMIO). */
    for (size_t i = 0; i < n; i += 4) {
        uint32_t w = 0;
        memcpy(&w, text + i, n - i < 4 ? n - i : 4);
        wr(R_TEXT + i, w);
    }
    uint32_t s = hc(NR_LOG_TEXT, (uint32_t)n, 0, 0, NULL);
    return s ? fail("log", s) : 0;
}

static uint64_t free_kib(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    char line[128];
    unsigned long long kib = 0;
    if (!f)
        return 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %llu kB", &kib) == 1)
            break;
    fclose(f);
    return kib;
}

/* CLOCK_MONOTONIC in milliseconds (0 if it cannot be read, which Linux never does). */
static long long now_ms(void)
{
    struct timespec t;
    if (clock_gettime(CLOCK_MONOTONIC, &t) != 0)
        return 0;
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* Sleep `ms` milliseconds. poll(), not usleep()/sleep(): glibc's nanosleep may use the 32-bit-time
 * system call, which a guest kernel without CONFIG_COMPAT_32BIT_TIME lacks: it fails at once with
 * ENOSYS, and the watch loop then spun (hundreds of heartbeats a second). poll's timeout is an int
 * of milliseconds, the same in every ABI. A signal cuts a sleep short; the loop sleeps the rest. */
static void sleep_ms(unsigned ms)
{
    long long end = now_ms() + ms, left = ms;
    while (left > 0 && poll(NULL, 0, (int)left) != 0)
        left = end - now_ms();
}

/* Graceful power-off for a host request: ask every process to stop, give them a moment, sync. */
static int other_processes(void);

static int graceful(int reboot, uint32_t code)
{
    printf("plainvm-guest: host asked to %s (code %u): stopping processes\n",
           reboot ? "reboot" : "power off", code);
    fflush(stdout);
    /* No more beats from here: stop the VMM's watch, or it reports a missed heartbeat while we
     * wait for the other processes (up to 9 s). */
    hc(NR_HEARTBEAT, 0, 0, 0, NULL);
    signal(SIGTERM, SIG_IGN);
    kill(-1, SIGTERM);
    /* Give the other processes, and init after them, time to finish: init may well power the
     * VM off itself. Only then, or after 7 s, power off from here. A deadline, not a count of
     * polls: one look through /proc can take a second on a host that emulates guest ring 0, and
     * a process that ignores SIGTERM (an interactive shell) must not hold us past the VMM's own
     * 10 s deadline for a SIGTERM-initiated stop. */
    long long end = now_ms() + 7000;
    while (other_processes() > 0 && now_ms() < end)
        sleep_ms(100);
    sleep_ms(2000);
    return do_power(reboot, code);
}

/* How many processes run besides init and this one. */
static int other_processes(void)
{
    DIR *d = opendir("/proc");
    if (!d)
        return 0;
    int n = 0;
    pid_t me = getpid();
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!isdigit((unsigned char)e->d_name[0]))
            continue;
        pid_t pid = (pid_t)atoi(e->d_name);
        /* Kernel threads have no command line; they never exit. */
        char path[64], buf[2];
        snprintf(path, sizeof path, "/proc/%d/cmdline", (int)pid);
        int fd = open(path, O_RDONLY);
        ssize_t got = fd >= 0 ? read(fd, buf, 1) : 0;
        if (fd >= 0)
            close(fd);
        if (pid != 1 && pid != me && got > 0)
            n++;
    }
    closedir(d);
    return n;
}

/* The watch loop (the same logic as guest/agent/src/watch.rs, which explains it and has the unit
 * tests; guest/c/tests/watch-race.c runs the same cases against this file).
 * A restore bumps GENERATION and posts a TIME_SYNC request before the guest runs again, but the
 * snapshot may have frozen this loop between any two register accesses, so a round can see one
 * without the other. A round therefore settles first: it takes every pending request and re-reads
 * GENERATION until it reads the same before and after; one sync then answers all of them, and it
 * keeps HOST_TIME only if GENERATION did not move while it was asked. */
#define WATCH_TRIES 8

struct watch {
    uint32_t generation; /* the last GENERATION seen */
    unsigned long rounds;
    int sync_owed;       /* start-up, a time-sync request or a new generation */
};

/* Take every pending request: returns the kind of a power request (its code in *code) at once,
 * else 0; a time-sync request makes a sync owed. */
static int take_requests(struct watch *w, uint32_t *code)
{
    uint32_t r[4];
    while (rd(R_PENDING) != 0) {
        /* NONE: nothing after all (or the answer was lost to a restore: settle re-reads). */
        if (hc(NR_REQUEST, 0, 0, 0, r) || r[0] == REQ_NONE)
            break;
        switch (r[0]) {
        case REQ_POWER_OFF:
        case REQ_REBOOT:
            *code = r[1];
            return (int)r[0];
        case REQ_TIME_SYNC:
            w->sync_owed = 1;
            break;
        default:
            fprintf(stderr, "plainvm-guest: ignoring unknown host request %u\n", r[0]);
        }
    }
    return 0;
}

/* Take the requests and re-read GENERATION until it reads the same before and after; that
 * generation goes to *gen. Returns a power request's kind, or 0. */
static int settle(struct watch *w, uint32_t *gen, uint32_t *code)
{
    uint32_t g = rd(R_GENERATION);
    for (int i = 0; i < WATCH_TRIES; i++) {
        if (g != w->generation) {
            printf("plainvm-guest: generation %u -> %u: resyncing the clock\n", w->generation, g);
            fflush(stdout);
            w->generation = g;
            w->sync_owed = 1;
        }
        int stop = take_requests(w, code);
        if (stop)
            return stop;
        uint32_t again = rd(R_GENERATION);
        if (again == g)
            break;
        g = again;
    }
    *gen = g;
    return 0;
}

/* One round: heartbeat, memory hint (every 30 rounds), requests and generation, clock sync.
 * Returns 0, or the kind of a power request (its code in *code). */
static int watch_round(struct watch *w, uint32_t beat, uint32_t *code)
{
    hc(NR_HEARTBEAT, beat, 0, 0, NULL);
    if (w->rounds++ % 30 == 0) {
        uint64_t kib = free_kib();
        if (kib)
            hc(NR_MEM_HINT, (uint32_t)kib, (uint32_t)(kib >> 32), 0, NULL);
    }
    for (int i = 0; i < WATCH_TRIES; i++) {
        uint32_t g;
        int stop = settle(w, &g, code);
        if (stop)
            return stop;
        if (!w->sync_owed)
            return 0;
        struct timespec host;
        int lost = host_time(&host);
        if (lost < 0) {
            w->sync_owed = 0; /* reported; the next reason to sync tries again */
            return 0;
        }
        if (!lost && rd(R_GENERATION) == g) {
            set_clock(&host);
            w->sync_owed = 0;
            return 0;
        }
        /* GENERATION moved while we asked (or the answer was lost to a restore): settle again. */
    }
    return 0;
}

static int do_watch(uint32_t interval_ms)
{
    if (interval_ms < 20 || interval_ms > 60000) {
        fprintf(stderr, "plainvm-guest: watch: --interval must be 20..60000 ms\n");
        return 1;
    }
    uint32_t r[4];
    uint32_t s = hc(NR_AGENT_HELLO, AGENT_POWER | AGENT_TIME_SYNC, 0, 0, r);
    if (s)
        return fail("watch: announce", s);
    struct watch w = { .generation = r[0], .sync_owed = 1 };
    printf("plainvm-guest: watching (generation %u, every %u ms)\n", w.generation, interval_ms);
    fflush(stdout);
    /* The VMM reports us when we are silent for 5 polls (at least 1 s). */
    uint32_t beat = interval_ms * 5 < 1000 ? 1000 : interval_ms * 5;
    for (;;) {
        uint32_t code = 0;
        int stop = watch_round(&w, beat, &code);
        if (stop)
            return graceful(stop == REQ_REBOOT, code);
        sleep_ms(interval_ms);
    }
}

static int usage(void)
{
    fprintf(stderr,
            "usage: plainvm-guest mark <stage> | poweroff [--code N] | reboot [--code N] | time-sync |\n"
            "       watch [--interval MS] | log <text...> | heartbeat [--interval MS] | version\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage();
    const char *cmd = argv[1];
    uint32_t val;
    if (strcmp(cmd, "mark") == 0) {
        if (argc != 3)
            return usage();
        open_device();
        return do_mark(argv[2]);
    }
    if (strcmp(cmd, "poweroff") == 0 || strcmp(cmd, "reboot") == 0) {
        val = 0;
        if (option(argc, argv, "--code", &val))
            return 2;
        open_device();
        return do_power(cmd[0] == 'r', val);
    }
    if (strcmp(cmd, "time-sync") == 0 && argc == 2) {
        open_device();
        return do_time_sync();
    }
    if (strcmp(cmd, "watch") == 0) {
        val = 1000;
        if (option(argc, argv, "--interval", &val))
            return 2;
        open_device();
        return do_watch(val);
    }
    if (strcmp(cmd, "log") == 0) {
        open_device();
        return do_log(argc, argv);
    }
    if (strcmp(cmd, "heartbeat") == 0) {
        val = 10000;
        if (option(argc, argv, "--interval", &val))
            return 2;
        open_device();
        uint32_t s = hc(NR_HEARTBEAT, val, 0, 0, NULL);
        return s ? fail("heartbeat", s) : 0;
    }
    if (strcmp(cmd, "version") == 0 && argc == 2) {
        open_device();
        uint32_t r[4];
        uint32_t s = hc(NR_VERSION, 0, 0, 0, r);
        if (s)
            return fail("version", s);
        printf("plainvm hypercall interface version %u, calls %#x\n", r[0], r[1]);
        return 0;
    }
    return usage();
}
