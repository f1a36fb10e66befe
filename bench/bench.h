/* bench.h — what every capdsm benchmark shares: a clock, medians, and the
 * one report format (a readable line and one JSON object per line).
 *
 * The rule these enforce: a figure is never printed without the limit it is
 * judged against, measured by the same program in the same run, run for run
 * interleaved with it so both see the same noise; value and limit are the
 * medians of their runs, and the ratio is value / limit. */
#ifndef CAPDSM_BENCH_H
#define CAPDSM_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BENCH_PAGE 4096u
#define BENCH_ALSO 3

/* Whether a larger ratio is better (throughput) or worse (latency). */
enum bench_dir { BENCH_HIGHER_IS_BETTER, BENCH_LOWER_IS_BETTER };

struct bench_result {
	const char *bench;      /* short stable name, used as the JSON key */
	const char *unit;       /* of value and limit: "MiB/s", "us" */
	const char *limit_name; /* what the limit is */
	const char *mode;       /* "blocking", "polling", or NULL */
	const char *placement;  /* where the sides ran (bench_placement), or NULL */
	const char *median_of;  /* what one run measures */
	enum bench_dir dir;
	double target; /* the ratio the figure must reach (>=) or stay under (<=) */
	int runs;
	const double *values; /* `runs` measured figures */
	const double *limits; /* `runs` limit figures, interleaved with them */
	/* Up to BENCH_ALSO more figures measured in the same runs, shown
	 * beside the limit for scale but not judged (name NULL: unused). */
	struct {
		const char *name;
		const double *values; /* `runs` of them, same unit */
	} also[BENCH_ALSO];
};

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t bench_now_ns(void);
/* The median of n values (n > 0); v is left as it was. */
double bench_median(const double *v, int n);
/* Prints the readable lines and the JSON line of a result on stdout.
 * Returns 1 if the target is met, 0 if not. */
int bench_report(const struct bench_result *r);
/* Prints "bench: <message>" on stderr and exits with status 1. */
void bench_die(const char *fmt, ...)
	__attribute__((format(printf, 1, 2), noreturn));
/* Parses a positive integer option value or dies naming the option. */
long bench_arg_long(const char *opt, const char *v, long lo, long hi);
/* Blocking send/receive of exactly n bytes on a stream socket, in a plain
 * loop as the client library does it (no MSG_WAITALL). recv returns 0, or
 * 1 at end of stream before any byte; both die on any error. */
void bench_send_all(int fd, const void *buf, size_t n);
int bench_recv_all(int fd, void *buf, size_t n);
/* Names where a benchmark's two sides run, from its --client-cpu and
 * --server-cpu (< 0: not pinned): writes a description into text and
 * returns the suffix its result names carry: "_samecore", "_splitcore" or
 * "" (unpinned). The daemon's own pinning is run.sh's business. */
const char *bench_placement(int client_cpu, int server_cpu, char *text,
                            size_t len);
/* Pins the calling thread to one CPU; cpu < 0 leaves it alone. Dies if
 * the CPU cannot be used. */
void bench_pin(int cpu);
/* A buffer of `len` bytes from mmap, every page written once (so later
 * loads and stores take no fault); dies if there is no memory. */
void *bench_alloc_touched(size_t len);

#endif /* CAPDSM_BENCH_H */
