/* jacobi.c — the demo workload: a Jacobi solve of the heat equation on a
 * grid kept in one capdsm data object, shared by worker processes that each
 * map it and update their own band of rows; a barrier between sweeps is a
 * counter in the object under a capdsm exclusive lock. The parent then runs
 * the same sweeps serially in plain memory and compares bit for bit: every
 * cell is computed by the same expression in the same order, so any lost or
 * stale store shows up as a difference.
 *
 * usage: capdsm-jacobi --socket PATH [--socket PATH ...] [--workers P]
 *                      [--size N] [--iters K]
 * Workers are spread round-robin over the given node sockets. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "capdsm.h"

#define PAGE 4096u
#define MAX_NODES 16

struct ctrl {
	uint64_t arrived;
	uint64_t generation;
};

static size_t grid_bytes(unsigned n)
{
	return (size_t)n * n * sizeof(double);
}

static size_t round_page(size_t x)
{
	return (x + PAGE - 1) / PAGE * PAGE;
}

static void init_grid(double *g, unsigned n)
{
	memset(g, 0, grid_bytes(n));
	for (unsigned j = 0; j < n; j++)
		g[j] = 100.0; /* the hot edge */
}

static void sweep(const double *src, double *dst, unsigned n, unsigned r0,
                  unsigned r1)
{
	for (unsigned i = r0; i < r1; i++) {
		if (i == 0 || i == n - 1) {
			memcpy(&dst[(size_t)i * n], &src[(size_t)i * n],
			       n * sizeof(double));
			continue;
		}
		dst[(size_t)i * n] = src[(size_t)i * n];
		for (unsigned j = 1; j < n - 1; j++)
			dst[(size_t)i * n + j] =
				0.25 * (src[(size_t)(i - 1) * n + j] +
				        src[(size_t)(i + 1) * n + j] +
				        src[(size_t)i * n + j - 1] +
				        src[(size_t)i * n + j + 1]);
		dst[(size_t)i * n + n - 1] = src[(size_t)i * n + n - 1];
	}
}

static int barrier(struct capdsm *c, uint32_t obj, volatile struct ctrl *ct,
                   unsigned workers)
{
	uint64_t gen;
	int rc = capdsm_lock(c, obj, 0, sizeof *ct, CAPDSM_LOCK_EXCLUSIVE);

	if (rc)
		return rc;
	gen = ct->generation;
	if (++ct->arrived == workers) {
		ct->arrived = 0;
		ct->generation = gen + 1;
	}
	rc = capdsm_unlock(c, obj, 0, sizeof *ct);
	if (rc)
		return rc;
	while (ct->generation == gen)
		sched_yield();
	return 0;
}

static int worker(const char *sock, const char *ref, unsigned id,
                  unsigned workers, unsigned n, unsigned iters)
{
	struct capdsm *c;
	uint32_t obj;
	void *base;
	size_t gb = round_page(grid_bytes(n));
	int rc = capdsm_connect(sock, NULL, &c);

	if (rc) {
		fprintf(stderr, "worker %u: connect %s: %s\n", id, sock,
		        capdsm_strerror(NULL));
		return 1;
	}
	rc = capdsm_import(c, ref, &obj);
	if (!rc)
		rc = capdsm_map(c, capdsm_self(c), obj, 0, PAGE + 2 * gb,
		                CAPDSM_R_READ | CAPDSM_R_WRITE, &base);
	if (rc) {
		fprintf(stderr, "worker %u: %s\n", id, capdsm_strerror(c));
		capdsm_close(c);
		return 1;
	}
	volatile struct ctrl *ct = base;
	double *g[2] = { (double *)((char *)base + PAGE),
	                 (double *)((char *)base + PAGE + gb) };
	unsigned r0 = n * id / workers, r1 = n * (id + 1) / workers;

	for (unsigned it = 0; it < iters && !rc; it++) {
		sweep(g[it & 1], g[(it + 1) & 1], n, r0, r1);
		rc = barrier(c, obj, ct, workers);
	}
	if (rc)
		fprintf(stderr, "worker %u: barrier: %s\n", id, capdsm_strerror(c));
	capdsm_close(c);
	return rc ? 1 : 0;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "workers", required_argument, NULL, 'w' },
		{ "size", required_argument, NULL, 'n' },
		{ "iters", required_argument, NULL, 'i' },
		{ 0 },
	};
	const char *socks[MAX_NODES];
	unsigned nsocks = 0, workers = 4, n = 256, iters = 100;
	int o;

	while ((o = getopt_long(argc, argv, "s:w:n:i:", opts, NULL)) != -1) {
		switch (o) {
		case 's':
			if (nsocks == MAX_NODES) {
				fprintf(stderr, "capdsm-jacobi: at most %d sockets\n",
				        MAX_NODES);
				return 2;
			}
			socks[nsocks++] = optarg;
			break;
		case 'w': workers = (unsigned)strtoul(optarg, NULL, 10); break;
		case 'n': n = (unsigned)strtoul(optarg, NULL, 10); break;
		case 'i': iters = (unsigned)strtoul(optarg, NULL, 10); break;
		default:
			fprintf(stderr, "usage: capdsm-jacobi --socket PATH [...] "
			                "[--workers P] [--size N] [--iters K]\n");
			return 2;
		}
	}
	if (!nsocks || workers < 1 || workers > 64 || n < 3 || n > 4096 ||
	    iters < 1) {
		fprintf(stderr, "capdsm-jacobi: need --socket, 1..64 workers, "
		                "size 3..4096, iters >= 1\n");
		return 2;
	}

	struct capdsm *c;
	uint32_t obj;
	char ref[CAPDSM_REF_MAX];
	size_t gb = round_page(grid_bytes(n));
	double *init = malloc(grid_bytes(n));
	int rc = capdsm_connect(socks[0], NULL, &c);

	if (rc) {
		fprintf(stderr, "capdsm-jacobi: connect %s: %s\n", socks[0],
		        capdsm_strerror(NULL));
		return 1;
	}
	if (!init)
		return 1;
	init_grid(init, n);
	rc = capdsm_object_create(c, CAPDSM_SESSION_BANK, PAGE + 2 * gb, &obj);
	if (!rc)
		rc = capdsm_write(c, obj, PAGE, init, grid_bytes(n));
	if (!rc)
		rc = capdsm_write(c, obj, PAGE + gb, init, grid_bytes(n));
	if (!rc)
		rc = capdsm_export(c, obj, ref, sizeof ref);
	if (rc) {
		fprintf(stderr, "capdsm-jacobi: set-up: %s\n", capdsm_strerror(c));
		return 1;
	}

	double t0 = now();
	pid_t pids[64];
	for (unsigned w = 0; w < workers; w++) {
		pids[w] = fork();
		if (pids[w] == 0)
			_exit(worker(socks[w % nsocks], ref, w, workers, n, iters));
		if (pids[w] < 0) {
			perror("fork");
			return 1;
		}
	}
	/* A worker that fails leaves the others waiting at a barrier for
	 * ever: the first failure stops them all. */
	int failed = 0;
	for (unsigned done = 0; done < workers; done++) {
		int st;
		pid_t p = wait(&st);
		if (p < 0)
			break;
		if ((!WIFEXITED(st) || WEXITSTATUS(st) != 0) && !failed++)
			for (unsigned w = 0; w < workers; w++)
				if (pids[w] != p)
					kill(pids[w], SIGKILL);
	}
	double t1 = now();
	if (failed) {
		fprintf(stderr, "capdsm-jacobi: a worker failed; the others were "
		        "stopped\n");
		capdsm_object_destroy(c, obj);
		capdsm_close(c);
		free(init);
		return 1;
	}

	/* The serial answer, and the shared one read back explicitly. */
	double *a = malloc(grid_bytes(n)), *b = malloc(grid_bytes(n));
	double *got = malloc(grid_bytes(n));
	if (!a || !b || !got)
		return 1;
	memcpy(a, init, grid_bytes(n));
	memcpy(b, init, grid_bytes(n));
	double *g[2] = { a, b };
	for (unsigned it = 0; it < iters; it++)
		sweep(g[it & 1], g[(it + 1) & 1], n, 0, n);
	double t2 = now();
	rc = capdsm_read(c, obj, PAGE + (iters & 1 ? gb : 0), got, grid_bytes(n));
	if (rc) {
		fprintf(stderr, "capdsm-jacobi: read back: %s\n", capdsm_strerror(c));
		return 1;
	}
	const double *want = g[iters & 1];
	size_t diff = 0;
	double sum = 0;
	for (size_t k = 0; k < (size_t)n * n; k++) {
		if (memcmp(&got[k], &want[k], sizeof(double)) != 0)
			diff++;
		sum += got[k];
	}
	printf("capdsm-jacobi: grid %ux%u, %u sweeps, %u workers on %u node(s): "
	       "%.3f s shared, %.3f s serial, checksum %.6f, %zu cells differ "
	       "from the serial run\n", n, n, iters, workers, nsocks, t1 - t0,
	       t2 - t1, sum, diff);
	rc = capdsm_object_destroy(c, obj); /* its frames go back to the bank */
	if (rc)
		fprintf(stderr, "capdsm-jacobi: destroy: %s\n", capdsm_strerror(c));
	capdsm_close(c);
	free(init);
	free(a);
	free(b);
	free(got);
	return diff ? 1 : 0;
}
