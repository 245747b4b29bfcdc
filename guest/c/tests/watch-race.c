/* Unit test of plainvm-guest.c's watch loop (the cases of guest/agent/src/watch/tests.rs): a fake
 * hypercall device that can snapshot + restore the "VM" right after any register access, the way
 * `plainvm restore` does it (new device with reset registers, GENERATION + 1, one TIME_SYNC
 * request posted, the host clock moved on), and a fake clock that records every set.
 * Built and run by resources/build-guest-bins.sh:
 *   gcc -m32 -mno-80387 -Wall -Werror -o watch-race guest/c/tests/watch-race.c && ./watch-race */
#define PLAINVM_GUEST_TEST
#include "../plainvm-guest.c"
#undef main

#define HOST_SEC 1800000000u
#define STEP 100u

static struct {
    uint32_t args[4], ret[4], status, generation, queue[16], nq, host_sec, next_id;
} dev;
static unsigned long accesses, restore_at;
static int restored, failures;
static struct { long long sec; int after_restore; } sets[64];
static int nsets;

static void reset(void)
{
    memset(&dev, 0, sizeof dev);
    dev.host_sec = HOST_SEC;
    accesses = restore_at = 0;
    restored = nsets = 0;
}

static void restore(void)
{
    uint32_t g = dev.generation, t = dev.host_sec;
    memset(&dev, 0, sizeof dev);
    dev.generation = g + 1;
    dev.queue[dev.nq++] = REQ_TIME_SYNC;
    dev.host_sec = t + STEP;
    restored = 1;
}

static void accessed(void)
{
    if (++accesses == restore_at)
        restore();
}

static void run_call(uint32_t nr)
{
    memset(dev.ret, 0, sizeof dev.ret);
    dev.status = 0;
    switch (nr) {
    case NR_HEARTBEAT:
    case NR_MEM_HINT:
        break;
    case NR_HOST_TIME:
        dev.ret[0] = dev.host_sec;
        dev.ret[2] = 250000000;
        break;
    case NR_AGENT_HELLO:
        dev.ret[0] = dev.generation;
        break;
    case NR_REQUEST:
        if (dev.nq) {
            dev.ret[0] = dev.queue[0];
            dev.ret[2] = ++dev.next_id;
            memmove(dev.queue, dev.queue + 1, --dev.nq * sizeof dev.queue[0]);
        }
        break;
    default:
        dev.status = 1;
    }
}

static uint32_t rd(unsigned off)
{
    uint32_t v = 0;
    if (off == R_STATUS)
        v = dev.status;
    else if (off == R_GENERATION)
        v = dev.generation;
    else if (off == R_PENDING)
        v = dev.nq;
    else if (off >= R_RET0 && off < R_RET0 + 16)
        v = dev.ret[(off - R_RET0) / 4];
    accessed();
    return v;
}

static void wr(unsigned off, uint32_t v)
{
    if (off >= R_ARG0 && off < R_ARG0 + 16)
        dev.args[(off - R_ARG0) / 4] = v;
    else if (off == R_CALL)
        run_call(v);
    accessed();
}

static int set_realtime(const struct timespec *t)
{
    if (nsets < 64)
        sets[nsets++].sec = t->tv_sec, sets[nsets - 1].after_restore = restored;
    return 0;
}

#define CHECK(cond, k)                                                                          \
    do {                                                                                        \
        if (!(cond)) {                                                                          \
            fprintf(stderr, "watch-race: %s: restore after access %lu: %s\n", __func__, k, #cond); \
            failures++;                                                                         \
        }                                                                                       \
    } while (0)

/* Rounds until the armed restore happened, then three more. */
static void run_past_restore(struct watch *w, unsigned long k)
{
    uint32_t code;
    for (int n = 0; n < 100 && !restored; n++)
        CHECK(watch_round(w, 1000, &code) == 0, k);
    for (int n = 0; n < 3; n++)
        CHECK(watch_round(w, 1000, &code) == 0, k);
}

static int sets_after_restore(long long *first, long long *second)
{
    int n = 0;
    for (int i = 0; i < nsets; i++)
        if (sets[i].after_restore)
            *(n++ ? second : first) = sets[i].sec;
    return n;
}

/* The race of issue 12: frozen right after reading the old GENERATION, the agent used to take
 * the posted request (sync), then see the new generation next round (sync again). */
static void restore_anywhere_in_a_round_gives_one_sync(void)
{
    for (unsigned long k = 0; k < 40; k++) {
        reset();
        struct watch w = { 0 };
        uint32_t code;
        watch_round(&w, 1000, &code);
        restore_at = accesses + k + 1;
        run_past_restore(&w, k);
        long long a = 0, b = 0;
        CHECK(sets_after_restore(&a, &b) == 1 && a == HOST_SEC + STEP, k);
        CHECK(w.generation == 1 && dev.nq == 0, k);
    }
}

/* Frozen in the middle of a sync (the start-up one): never a lost answer (0), the last set is the
 * restored host's time, and a second sync after the restore only follows a stale first one
 * (the one window between the last register read and clock_settime). */
static void restore_during_a_sync_ends_on_the_new_time(void)
{
    int stale = 0;
    for (unsigned long k = 0; k < 60; k++) {
        reset();
        struct watch w = { .generation = 0, .sync_owed = 1 };
        restore_at = k + 1;
        run_past_restore(&w, k);
        for (int i = 0; i < nsets; i++)
            CHECK(sets[i].sec != 0, k);
        CHECK(nsets > 0 && sets[nsets - 1].sec == HOST_SEC + STEP, k);
        long long a = 0, b = 0;
        int n = sets_after_restore(&a, &b);
        if (n == 2 && a == HOST_SEC && b == HOST_SEC + STEP)
            stale++;
        else
            CHECK(n == 1 && a == HOST_SEC + STEP, k);
        CHECK(w.generation == 1 && !w.sync_owed && dev.nq == 0, k);
    }
    CHECK(stale == 1, 0ul);
}

/* Requests are obeyed: a posted time sync is done once, a power-off ends the round. */
static void requests_are_obeyed(void)
{
    reset();
    struct watch w = { 0 };
    uint32_t code = 0;
    dev.queue[dev.nq++] = REQ_TIME_SYNC;
    dev.queue[dev.nq++] = REQ_TIME_SYNC;
    CHECK(watch_round(&w, 1000, &code) == 0 && nsets == 1, 0ul);
    dev.queue[dev.nq++] = REQ_POWER_OFF;
    CHECK(watch_round(&w, 1000, &code) == REQ_POWER_OFF, 0ul);
}

int main(void)
{
    /* The agent's own lines would drown the result. */
    if (!freopen("/dev/null", "w", stdout))
        return 2;
    restore_anywhere_in_a_round_gives_one_sync();
    restore_during_a_sync_ends_on_the_new_time();
    requests_are_obeyed();
    if (failures) {
        fprintf(stderr, "watch-race: %d failures\n", failures);
        return 1;
    }
    fprintf(stderr, "watch-race: ok\n");
    return 0;
}
