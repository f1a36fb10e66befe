/* bench.c — clock, medians and the report format shared by the capdsm
 * benchmarks (bench.h). The JSON line holds only numbers and fixed names,
 * so it is written by hand; names are checked to need no escaping. */
#include "bench.h"

#include <errno.h>
#include <math.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

uint64_t bench_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

double bench_median(const double *v, int n)
{
	double tmp[256];
	double m;

	if (n <= 0 || n > (int)(sizeof tmp / sizeof tmp[0]))
		bench_die("median of %d values", n);
	memcpy(tmp, v, (size_t)n * sizeof *v);
	qsort(tmp, (size_t)n, sizeof *tmp, cmp_double);
	m = n % 2 ? tmp[n / 2] : (tmp[n / 2 - 1] + tmp[n / 2]) / 2;
	return m;
}

void bench_die(const char *fmt, ...)
{
	va_list ap;

	fflush(stdout);
	fputs("bench: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

long bench_arg_long(const char *opt, const char *v, long lo, long hi)
{
	char *end;
	long x;

	errno = 0;
	x = strtol(v, &end, 0);
	if (errno || !*v || *end || x < lo || x > hi)
		bench_die("%s: '%s' is not a number in [%ld, %ld]", opt, v, lo, hi);
	return x;
}

const char *bench_placement(int client_cpu, int server_cpu, char *text,
                            size_t len)
{
	if (client_cpu < 0 || server_cpu < 0) {
		snprintf(text, len, "unpinned");
		return "";
	}
	if (client_cpu == server_cpu) {
		snprintf(text, len, "same core: client and server on cpu %d",
		         client_cpu);
		return "_samecore";
	}
	snprintf(text, len, "split cores: client on cpu %d, server on cpu %d",
	         client_cpu, server_cpu);
	return "_splitcore";
}

void bench_pin(int cpu)
{
	cpu_set_t set;

	if (cpu < 0)
		return;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof set, &set) != 0)
		bench_die("pin to cpu %d: %s", cpu, strerror(errno));
}

void *bench_alloc_touched(size_t len)
{
	unsigned char *p = malloc(len);

	if (!p)
		bench_die("out of memory (%zu bytes)", len);
	for (size_t i = 0; i < len; i += BENCH_PAGE)
		p[i] = 1;
	return p;
}

void bench_send_all(int fd, const void *buf, size_t n)
{
	const char *p = buf;

	while (n > 0) {
		ssize_t r = send(fd, p, n, MSG_NOSIGNAL);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			bench_die("send: %s", strerror(errno));
		}
		p += r;
		n -= (size_t)r;
	}
}

int bench_recv_all(int fd, void *buf, size_t n)
{
	char *p = buf;
	size_t got = 0;

	while (got < n) {
		ssize_t r = recv(fd, p + got, n - got, 0);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			bench_die("recv: %s", strerror(errno));
		}
		if (r == 0) {
			if (got == 0)
				return 1;
			bench_die("recv: end of stream inside a message");
		}
		got += (size_t)r;
	}
	return 0;
}

/* A name goes into JSON unescaped: refuse anything that would need it. */
static const char *plain(const char *s)
{
	if (!s)
		return "";
	for (const char *p = s; *p; p++)
		if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20)
			bench_die("name needs escaping: %s", s);
	return s;
}

/* JSON has no NaN or infinity: a figure that is not finite is null. */
static void json_num(const char *key, double v)
{
	if (isfinite(v))
		printf(",\"%s\":%.6g", key, v);
	else
		printf(",\"%s\":null", key);
}

static void json_array(const char *key, const double *v, int n)
{
	printf(",\"%s\":[", key);
	for (int i = 0; i < n; i++) {
		if (isfinite(v[i]))
			printf("%s%.6g", i ? "," : "", v[i]);
		else
			printf("%snull", i ? "," : "");
	}
	printf("]");
}

int bench_report(const struct bench_result *r)
{
	double value = bench_median(r->values, r->runs);
	double limit = bench_median(r->limits, r->runs);
	double ratio = limit > 0 ? value / limit : NAN;
	bool higher = r->dir == BENCH_HIGHER_IS_BETTER;
	int met = higher ? ratio >= r->target : ratio <= r->target;
	double lo = INFINITY, hi = -INFINITY;
	char mode[64] = "";

	/* The spread of the ratio over the interleaved pairs says how much of
	 * it is noise. */
	for (int i = 0; i < r->runs; i++) {
		double q = r->limits[i] > 0 ? r->values[i] / r->limits[i] : NAN;
		if (q < lo)
			lo = q;
		if (q > hi)
			hi = q;
	}
	if (r->mode)
		snprintf(mode, sizeof mode, " [%s]", r->mode);
	printf("%s%s\n", r->bench, mode);
	if (r->placement)
		printf("  placement: %s\n", r->placement);
	printf("  value  %12.3f %-6s (median of %d runs: %s)\n", value, r->unit,
	       r->runs, r->median_of);
	printf("  limit  %12.3f %-6s %s\n", limit, r->unit, r->limit_name);
	for (int i = 0; i < BENCH_ALSO && r->also[i].name; i++) {
		double a = bench_median(r->also[i].values, r->runs);
		printf("  (also) %12.3f %-6s %s; value/this %.3f, not judged\n", a,
		       r->unit, r->also[i].name, a > 0 ? value / a : NAN);
	}
	printf("  ratio  %12.3f        target %s %.2f  %s   (pairs %.3f..%.3f)\n",
	       ratio, higher ? ">=" : "<=", r->target, met ? "MET" : "MISSED", lo,
	       hi);

	printf("{\"bench\":\"%s\",\"unit\":\"%s\"", plain(r->bench),
	       plain(r->unit));
	json_num("value", value);
	json_num("limit", limit);
	printf(",\"limit_name\":\"%s\"", plain(r->limit_name));
	json_num("ratio", ratio);
	json_num("target", r->target);
	printf(",\"target_cmp\":\"%s\",\"met\":%s,\"runs\":%d,"
	       "\"median_of\":\"%s\"", higher ? ">=" : "<=",
	       met ? "true" : "false", r->runs, plain(r->median_of));
	if (r->mode)
		printf(",\"mode\":\"%s\"", plain(r->mode));
	if (r->placement)
		printf(",\"placement\":\"%s\"", plain(r->placement));
	json_num("pair_ratio_min", lo);
	json_num("pair_ratio_max", hi);
	json_array("values", r->values, r->runs);
	json_array("limits", r->limits, r->runs);
	printf(",\"also\":[");
	for (int i = 0; i < BENCH_ALSO && r->also[i].name; i++) {
		double a = bench_median(r->also[i].values, r->runs);
		printf("%s{\"name\":\"%s\"", i ? "," : "", plain(r->also[i].name));
		json_num("value", a);
		json_num("ratio", a > 0 ? value / a : NAN);
		json_array("values", r->also[i].values, r->runs);
		printf("}");
	}
	printf("]}\n");
	fflush(stdout);
	return met;
}
