/* bench_lock.c — an uncontended lock or unlock against one raw AF_UNIX
 * round trip.
 *
 * Daemon side: capdsm_lock (exclusive) + capdsm_unlock of one range of an
 * object nobody else touches: two round trips per iteration; the figure is
 * per operation (one lock or one unlock) = time / (2 x iterations).
 * Limit: one 64-byte request and 64-byte reply over an AF_UNIX stream
 * socketpair to a forked process that echoes, blocking read on both sides
 * (as the daemon with poll_us = 0). Batches of each alternate run by run.
 * Target: <= 1.2x the raw round trip. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "capdsm.h"

#define MAX_RUNS 64
#define MSG 64

static void echo_main(int fd)
{
	uint8_t buf[MSG];

	while (bench_recv_all(fd, buf, sizeof buf) == 0)
		bench_send_all(fd, buf, sizeof buf);
	_exit(0);
}

/* Microseconds per operation. */
static double lock_batch(struct capdsm *c, uint32_t obj, long iters)
{
	uint64_t t0 = bench_now_ns();

	for (long i = 0; i < iters; i++) {
		if (capdsm_lock(c, obj, 0, BENCH_PAGE, CAPDSM_LOCK_EXCLUSIVE) ||
		    capdsm_unlock(c, obj, 0, BENCH_PAGE))
			bench_die("lock/unlock: %s", capdsm_strerror(c));
	}
	return (double)(bench_now_ns() - t0) / 1e3 / (double)(2 * iters);
}

/* Microseconds per round trip. */
static double echo_batch(int fd, long trips)
{
	uint8_t out[MSG] = { 1 }, in[MSG];
	uint64_t t0 = bench_now_ns();

	for (long i = 0; i < trips; i++) {
		bench_send_all(fd, out, sizeof out);
		if (bench_recv_all(fd, in, sizeof in))
			bench_die("echo peer went away");
	}
	return (double)(bench_now_ns() - t0) / 1e3 / (double)trips;
}

static void usage(void)
{
	fprintf(stderr, "usage: bench_lock --socket PATH [--iters N] [--runs N] "
	        "[--client-cpu N] [--server-cpu N] [--quick]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "iters", required_argument, NULL, 'i' },
		{ "runs", required_argument, NULL, 'r' },
		{ "client-cpu", required_argument, NULL, 'C' },
		{ "server-cpu", required_argument, NULL, 'D' },
		{ "quick", no_argument, NULL, 'q' },
		{ 0 },
	};
	const char *sock = NULL;
	long iters = 0, runs = 0;
	bool quick = false;
	int o, client_cpu = -1, server_cpu = -1;

	while ((o = getopt_long(argc, argv, "s:i:r:C:D:q", opts, NULL)) != -1) {
		switch (o) {
		case 's': sock = optarg; break;
		case 'i': iters = bench_arg_long("--iters", optarg, 1, 10000000); break;
		case 'r': runs = bench_arg_long("--runs", optarg, 1, MAX_RUNS); break;
		case 'C':
			client_cpu = (int)bench_arg_long("--client-cpu", optarg, 0, 1023);
			break;
		case 'D':
			server_cpu = (int)bench_arg_long("--server-cpu", optarg, 0, 1023);
			break;
		case 'q': quick = true; break;
		default: usage();
		}
	}
	if (!sock || optind != argc)
		usage();
	if (!iters)
		iters = quick ? 500 : 2000;
	if (!runs)
		runs = quick ? 5 : 15;

	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
		bench_die("socketpair: %s", strerror(errno));
	fflush(stdout);
	pid_t pid = fork();
	if (pid < 0)
		bench_die("fork: %s", strerror(errno));
	if (pid == 0) {
		close(sv[0]);
		bench_pin(server_cpu);
		echo_main(sv[1]);
	}
	close(sv[1]);
	bench_pin(client_cpu);

	struct capdsm *c;
	uint32_t bank, obj;
	if (capdsm_connect(sock, NULL, &c) != 0)
		bench_die("connect: %s", capdsm_strerror(NULL));
	if (capdsm_bank_create(c, CAPDSM_SESSION_BANK, 0, 0, &bank) ||
	    capdsm_object_create(c, bank, BENCH_PAGE, &obj))
		bench_die("object: %s", capdsm_strerror(c));

	/* Warm-up, not counted. */
	lock_batch(c, obj, iters / 10 + 1);
	echo_batch(sv[0], iters / 5 + 1);

	double v[MAX_RUNS], l[MAX_RUNS];
	for (long r = 0; r < runs; r++) {
		/* The same number of round trips on both sides. */
		if (r % 2 == 0) {
			v[r] = lock_batch(c, obj, iters);
			l[r] = echo_batch(sv[0], 2 * iters);
		} else {
			l[r] = echo_batch(sv[0], 2 * iters);
			v[r] = lock_batch(c, obj, iters);
		}
	}

	char what[96], where[96], name[64];
	snprintf(what, sizeof what, "%ld exclusive lock+unlock pairs / %ld ops",
	         iters, 2 * iters);
	snprintf(name, sizeof name, "lock_unlock_per_op%s",
	         bench_placement(client_cpu, server_cpu, where, sizeof where));
	struct bench_result res = {
		.bench = name,
		.placement = where,
		.unit = "us",
		.limit_name = "AF_UNIX round trip, 64 B request / 64 B reply, forked "
		              "echo process, blocking read on both sides",
		.mode = "blocking",
		.median_of = what,
		.dir = BENCH_LOWER_IS_BETTER,
		.target = 1.2,
		.runs = (int)runs,
		.values = v,
		.limits = l,
	};
	bench_report(&res);

	capdsm_bank_destroy(c, bank);
	capdsm_close(c);
	close(sv[0]);
	waitpid(pid, NULL, 0);
	return 0;
}
