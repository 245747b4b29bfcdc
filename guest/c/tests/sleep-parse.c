/* Unit test of sleep.c's argument parsing (integer-only, saturating): included with
 * PLAINVM_GUEST_TEST, run by resources/build-guest-bins.sh. */
#define PLAINVM_GUEST_TEST
#include "../sleep.c"
#undef main

static int failures;

static void expect(const char *arg, int ok, unsigned long long want)
{
    unsigned long long ns = 12345;
    int r = parse_duration(arg, &ns);
    if ((r == 0) != ok || (ok && ns != want)) {
        fprintf(stderr, "sleep-parse: '%s': got %d/%llu, want %s/%llu\n", arg, r, ns,
                ok ? "ok" : "error", want);
        failures++;
    }
}

int main(void)
{
    expect("1", 1, NS);
    expect("0", 1, 0);
    expect("1.5", 1, 1500000000ULL);
    expect(".25", 1, 250000000ULL);
    expect("3.", 1, 3 * NS);
    expect("0.0000000019", 1, 1);
    expect("2m", 1, 120 * NS);
    expect("1.5h", 1, 5400 * NS);
    expect("1d", 1, 86400 * NS);
    expect("7s", 1, 7 * NS);
    expect("inf", 1, FOREVER);
    expect("infinity", 1, FOREVER);
    expect("99999999999999999999999", 1, FOREVER);
    expect("300000000000d", 1, FOREVER);
    expect("", 0, 0);
    expect(".", 0, 0);
    expect("s", 0, 0);
    expect("-1", 0, 0);
    expect("1x", 0, 0);
    expect("1ss", 0, 0);
    expect("1.2.3", 0, 0);
    expect("abc", 0, 0);

    unsigned long long total;
    char *sum[] = { "sleep", "1", "0.5", "1m", NULL };
    if (total_duration(4, sum, &total) != 0 || total != 61500000000ULL) {
        fprintf(stderr, "sleep-parse: 1 0.5 1m: got %llu\n", total);
        failures++;
    }
    char *big[] = { "sleep", "inf", "1", NULL };
    if (total_duration(3, big, &total) != 0 || total != FOREVER) {
        fprintf(stderr, "sleep-parse: inf 1: got %llu\n", total);
        failures++;
    }
    char *bad[] = { "sleep", "1", "x", NULL };
    if (total_duration(3, bad, &total) == 0) {
        fprintf(stderr, "sleep-parse: 1 x accepted\n");
        failures++;
    }
    if (failures) {
        fprintf(stderr, "sleep-parse: %d failures\n", failures);
        return 1;
    }
    fprintf(stderr, "sleep-parse: ok\n");
    return 0;
}
