/* bench_mapped.c — mapped memory after its first fault against plain memory.
 *
 * Maps an object (256 MiB) through capdsm_map, writes every word once (so
 * every page's fault is taken and served by the daemon before timing), then
 * times a sequential uint64_t sum over it. The limit is the same sum, by the
 * same function, over malloc'd memory written the same way. Memory
 * bandwidth here drifts by a third from one moment to the next, so a run
 * walks the buffers in rotating segments (8 MiB: far past the caches, long
 * enough to stream) and adds up the time of each buffer's segments. A third
 * buffer, a memfd mapped MAP_SHARED without userfaultfd, is summed too, to
 * tell a cost of shared memory itself from one of capdsm.
 * Once a page is mapped nothing of capdsm is on the path, so the target is
 * near parity (throughput ratio >= 0.95). */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bench.h"
#include "capdsm.h"

#define MAX_RUNS 64

/* The one loop both buffers go through; noinline so both get the same code. */
static __attribute__((noinline)) uint64_t sum_u64(const uint64_t *p, size_t n)
{
	uint64_t s = 0;

	for (size_t i = 0; i < n; i++)
		s += p[i];
	return s;
}

static void fill(uint64_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		p[i] = i * 0x9e3779b97f4a7c15ull;
}

#define SEGMENT (((size_t)8 << 20) / sizeof(uint64_t)) /* words */

/* One run: the buffers summed in rotating segments; stores the MiB/s of
 * each. The sums are checked so no pass can be skipped. */
static void one_run(const uint64_t *const *bufs, int nb, size_t n,
                    uint64_t expect, long r, double *mibs)
{
	uint64_t ns[4] = { 0 }, sum[4] = { 0 };

	for (size_t off = 0, i = 0; off < n; off += SEGMENT, i++) {
		size_t k = n - off < SEGMENT ? n - off : SEGMENT;
		for (int j = 0; j < nb; j++) {
			int b = (int)((i + (size_t)r + (size_t)j) % (size_t)nb);
			uint64_t t0 = bench_now_ns();
			sum[b] += sum_u64(bufs[b] + off, k);
			ns[b] += bench_now_ns() - t0;
		}
	}
	for (int b = 0; b < nb; b++) {
		if (sum[b] != expect)
			bench_die("sum mismatch: %" PRIu64 " != %" PRIu64, sum[b],
			          expect);
		mibs[b] = ((double)n * 8 / (1 << 20)) / ((double)ns[b] / 1e9);
	}
}

static void usage(void)
{
	fprintf(stderr, "usage: bench_mapped --socket PATH [--mib N] [--runs N] "
	        "[--client-cpu N] [--quick]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "mib", required_argument, NULL, 'm' },
		{ "runs", required_argument, NULL, 'r' },
		{ "client-cpu", required_argument, NULL, 'C' },
		{ "quick", no_argument, NULL, 'q' },
		{ 0 },
	};
	const char *sock = NULL;
	long mib = 0, runs = 0;
	bool quick = false;
	int o, client_cpu = -1;

	while ((o = getopt_long(argc, argv, "s:m:r:C:q", opts, NULL)) != -1) {
		switch (o) {
		case 's': sock = optarg; break;
		case 'm': mib = bench_arg_long("--mib", optarg, 1, 16384); break;
		case 'r': runs = bench_arg_long("--runs", optarg, 1, MAX_RUNS); break;
		case 'C':
			client_cpu = (int)bench_arg_long("--client-cpu", optarg, 0, 1023);
			break;
		case 'q': quick = true; break;
		default: usage();
		}
	}
	if (!sock || optind != argc)
		usage();
	if (!mib)
		mib = quick ? 64 : 256;
	if (!runs)
		runs = quick ? 5 : 11;

	size_t len = (size_t)mib << 20, n = len / 8;
	struct capdsm *c;
	uint32_t bank, obj;
	void *addr;
	int rc;

	bench_pin(client_cpu);
	rc = capdsm_connect(sock, NULL, &c);
	if (rc)
		bench_die("connect: %s", capdsm_strerror(NULL));
	/* A bank of its own, so destroying it at the end frees the object. */
	rc = capdsm_bank_create(c, CAPDSM_SESSION_BANK, 0, 0, &bank);
	if (rc)
		bench_die("bank create: %s", capdsm_strerror(c));
	rc = capdsm_object_create(c, bank, len, &obj);
	if (rc)
		bench_die("object create (%ld MiB): %s", mib, capdsm_strerror(c));
	rc = capdsm_map(c, capdsm_self(c), obj, 0, len,
	                CAPDSM_R_READ | CAPDSM_R_WRITE, &addr);
	if (rc)
		bench_die("map: %s", capdsm_strerror(c));

	uint64_t *mapped = addr;
	uint64_t *plain = malloc(len);
	if (!plain)
		bench_die("out of memory");
	/* For scale: a memfd mapped MAP_SHARED with no userfaultfd, the same
	 * kind of memory as an object's, to tell a cost of shared memory from
	 * one of capdsm. */
	int shfd = memfd_create("capdsm-bench-shm", MFD_CLOEXEC);
	if (shfd < 0 || ftruncate(shfd, (off_t)len) != 0)
		bench_die("memfd: %s", strerror(errno));
	uint64_t *shm = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED,
	                     shfd, 0);
	if (shm == MAP_FAILED)
		bench_die("mmap: %s", strerror(errno));
	fill(shm, n);

	/* First touch: every page of the mapping faults to the daemon once. */
	uint64_t t0 = bench_now_ns();
	fill(mapped, n);
	uint64_t t1 = bench_now_ns();
	fill(plain, n);
	uint64_t t2 = bench_now_ns();
	uint64_t expect = sum_u64(plain, n);
	if (sum_u64(mapped, n) != expect)
		bench_die("mapped memory does not hold what was written");
	printf("# mapped: %ld MiB, first touch of %zu pages took %.1f ms through "
	       "the daemon (%.2f us/page), %.1f ms for plain memory\n", mib,
	       len / BENCH_PAGE, (double)(t1 - t0) / 1e6,
	       (double)(t1 - t0) / 1e3 / (double)(len / BENCH_PAGE),
	       (double)(t2 - t1) / 1e6);

	double v[MAX_RUNS], l[MAX_RUNS], sh[MAX_RUNS];
	const uint64_t *bufs[3] = { mapped, plain, shm };
	for (long r = 0; r < runs; r++) {
		double m[3];
		one_run(bufs, 3, n, expect, r, m);
		v[r] = m[0];
		l[r] = m[1];
		sh[r] = m[2];
	}

	char what[128];
	snprintf(what, sizeof what, "a sequential uint64 sum over %ld MiB, in "
	         "8 MiB segments rotating with the limit's", mib);
	struct bench_result res = {
		.bench = "mapped_sum_throughput",
		.unit = "MiB/s",
		.limit_name = "same sum over malloc'd, touched memory",
		.median_of = what,
		.dir = BENCH_HIGHER_IS_BETTER,
		.target = 0.95,
		.runs = (int)runs,
		.values = v,
		.limits = l,
		.also = { { "same sum over a memfd mapped MAP_SHARED, no "
		            "userfaultfd (shared memory without capdsm)", sh } },
	};
	bench_report(&res);

	munmap(shm, len);
	close(shfd);
	free(plain);
	capdsm_unmap(c, addr);
	capdsm_bank_destroy(c, bank);
	capdsm_close(c);
	return 0;
}
