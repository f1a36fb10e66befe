/* bench_fault.c — a first-touch page fault served by the daemon against a
 * bare userfaultfd fault served by a handler thread of this program.
 *
 * Daemon side: a fresh object (in a bank of its own, destroyed afterwards)
 * mapped through capdsm_map; N fresh pages are touched (one store each) and
 * each faults to the daemon, which answers with UFFDIO_ZEROPAGE.
 * Limit: a fresh memfd mapped MAP_SHARED and registered MISSING on this
 * program's own userfaultfd; a handler thread answers each fault with
 * UFFDIO_ZEROPAGE. Same memory, same kernel path, no daemon.
 *
 * Both run in the same waiting mode, given by --mode, which must match how
 * the daemon behind --socket was configured:
 *   blocking  daemon poll_us = 0; the handler thread sleeps in poll()
 *   polling   daemon poll_us > 0; the handler spins. Two handlers are
 *             measured: one spinning on a non-blocking read(), one spinning
 *             on poll() with a zero timeout and reading when it says so (as
 *             the daemon spins on epoll_wait). Hammering read() contends
 *             with the faulting thread on the userfaultfd's wait-queue
 *             locks, so neither is always faster here; the limit is the
 *             one with the lower median, and both are shown.
 * Per-fault latency = time to touch N pages / N. Within a run the N pages
 * are touched in short segments alternating between the two sides: the
 * cost of a wake-up here swings by several times with where the scheduler
 * puts the woken thread, and fine interleaving makes both sides see the
 * same swings. Target: <= 1.5x the bare fault.
 *
 * For scale, the first touch of a fresh memfd page with no userfaultfd at
 * all (the kernel alone) is measured in the same segments, not judged. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sched.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "bench.h"
#include "capdsm.h"

#define MAX_RUNS 64

#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

/* Nanoseconds to store one byte into each of n pages from p. */
static uint64_t touch_pages(uint8_t *p, size_t n)
{
	uint64_t t0 = bench_now_ns();

	for (size_t i = 0; i < n; i++)
		((volatile uint8_t *)p)[i * BENCH_PAGE] = 1;
	return bench_now_ns() - t0;
}

/* ---- the daemon side ---- */

static void on_counter(const char *name, uint64_t value, void *arg)
{
	if (strcmp(name, "faults_missing") == 0)
		*(uint64_t *)arg = value;
}

static uint64_t daemon_missing(struct capdsm *c)
{
	uint64_t missing = 0;

	if (capdsm_stats(c, on_counter, &missing) != 0)
		bench_die("stats: %s", capdsm_strerror(c));
	return missing;
}

/* A fresh object in a bank of its own, mapped read-write. */
struct dside {
	uint32_t bank;
	uint8_t *p;
	size_t pages;
	uint64_t missing_before;
};

static void dside_open(struct capdsm *c, struct dside *d, size_t pages)
{
	size_t len = pages * BENCH_PAGE;
	uint32_t obj;
	void *addr;

	if (capdsm_bank_create(c, CAPDSM_SESSION_BANK, 0, 0, &d->bank) ||
	    capdsm_object_create(c, d->bank, len, &obj) ||
	    capdsm_map(c, capdsm_self(c), obj, 0, len,
	               CAPDSM_R_READ | CAPDSM_R_WRITE, &addr))
		bench_die("fresh object: %s", capdsm_strerror(c));
	d->p = addr;
	d->pages = pages;
	d->missing_before = daemon_missing(c);
}

static void dside_close(struct capdsm *c, struct dside *d)
{
	/* Every touch must have been a fault the daemon served. */
	uint64_t served = daemon_missing(c) - d->missing_before;

	if (served != d->pages)
		bench_die("daemon served %llu missing faults for %zu touches",
		          (unsigned long long)served, d->pages);
	if (capdsm_unmap(c, d->p) || capdsm_bank_destroy(c, d->bank))
		bench_die("releasing the object: %s", capdsm_strerror(c));
}

/* ---- the bare side ---- */

/* How a handler waits for faults. */
enum wait_style {
	WAIT_BLOCK,     /* sleep in poll() on the userfaultfd */
	WAIT_SPIN_READ, /* spin on a non-blocking read() */
	WAIT_SPIN_POLL, /* spin on poll(timeout 0), read() when readable */
};

/* A handler thread lives for the whole program, as the daemon does, with a
 * userfaultfd of its own. Blocking, it always sleeps in poll() on the
 * userfaultfd (and its control eventfd). Spinning, it spins only while one
 * of its segments is active and sleeps on the control eventfd otherwise,
 * so it never competes with the other sides' segments for a core. */
struct handler {
	int uffd;
	int ctlfd; /* eventfd: a segment started, or quit */
	enum wait_style style;
	bool polling; /* style != WAIT_BLOCK */
	atomic_bool active, quit;
	atomic_ullong faults;
	pthread_t th;
};

static void resolve(int uffd, uint64_t addr)
{
	struct uffdio_zeropage z = {
		.range = { .start = addr & ~(uint64_t)(BENCH_PAGE - 1),
		           .len = BENCH_PAGE },
	};

	if (ioctl(uffd, UFFDIO_ZEROPAGE, &z) == 0)
		return;
	if (errno == EEXIST) {
		struct uffdio_range r = z.range;
		if (ioctl(uffd, UFFDIO_WAKE, &r) == 0)
			return;
	}
	bench_die("UFFDIO_ZEROPAGE: %s", strerror(errno));
}

/* Sleeps in poll() on the control eventfd, and on the userfaultfd too if
 * `uffd_too`; consumes a control event. */
static void handler_wait(struct handler *h, bool uffd_too)
{
	struct pollfd pf[2] = {
		{ .fd = h->ctlfd, .events = POLLIN },
		{ .fd = h->uffd, .events = POLLIN },
	};

	if (poll(pf, uffd_too ? 2 : 1, -1) < 0) {
		if (errno == EINTR)
			return;
		bench_die("poll: %s", strerror(errno));
	}
	if (pf[0].revents) {
		uint64_t x;
		if (read(h->ctlfd, &x, sizeof x) < 0 && errno != EAGAIN)
			bench_die("eventfd read: %s", strerror(errno));
	}
}

static int server_cpu = -1; /* --server-cpu: where handler threads run */

static void *handler_main(void *arg)
{
	struct handler *h = arg;
	struct uffd_msg msgs[32];

	bench_pin(server_cpu);

	while (!atomic_load(&h->quit)) {
		if (!h->polling)
			handler_wait(h, true);
		else if (!atomic_load_explicit(&h->active, memory_order_relaxed)) {
			handler_wait(h, false);
			continue;
		} else if (h->style == WAIT_SPIN_POLL) {
			struct pollfd pf = { .fd = h->uffd, .events = POLLIN };
			if (poll(&pf, 1, 0) <= 0)
				continue;
		}
		ssize_t r = read(h->uffd, msgs, sizeof msgs);
		if (r < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			bench_die("userfaultfd read: %s", strerror(errno));
		}
		for (size_t i = 0; i < (size_t)r / sizeof msgs[0]; i++)
			if (msgs[i].event == UFFD_EVENT_PAGEFAULT) {
				/* Counted first: once resolved, the toucher may
				 * read the count. */
				atomic_fetch_add(&h->faults, 1);
				resolve(h->uffd, msgs[i].arg.pagefault.address);
			}
	}
	return NULL;
}

static int bare_uffd(void)
{
	/* The features the client library asks for, so messages and fault
	 * paths are the same as under the daemon. */
	struct uffdio_api api = {
		.api = UFFD_API,
		.features = UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_MINOR_SHMEM |
		            UFFD_FEATURE_WP_HUGETLBFS_SHMEM | UFFD_FEATURE_THREAD_ID,
	};
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

	if (fd < 0 && (errno == EPERM || errno == EACCES))
		fd = (int)syscall(SYS_userfaultfd,
		                  O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
	if (fd < 0)
		bench_die("userfaultfd: %s", strerror(errno));
	if (ioctl(fd, UFFDIO_API, &api) != 0)
		bench_die("UFFDIO_API: %s", strerror(errno));
	return fd;
}

static void handler_kick(struct handler *h)
{
	uint64_t one = 1;

	if (write(h->ctlfd, &one, sizeof one) != (ssize_t)sizeof one)
		bench_die("eventfd write: %s", strerror(errno));
}

static void handler_start(struct handler *h, enum wait_style style)
{
	*h = (struct handler){ .uffd = bare_uffd(), .style = style,
	                       .polling = style != WAIT_BLOCK };
	h->ctlfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (h->ctlfd < 0)
		bench_die("eventfd: %s", strerror(errno));
	if (pthread_create(&h->th, NULL, handler_main, h) != 0)
		bench_die("pthread_create failed");
}

static void handler_stop(struct handler *h)
{
	atomic_store(&h->quit, true);
	handler_kick(h);
	pthread_join(h->th, NULL);
	close(h->ctlfd);
	close(h->uffd);
}

/* A fresh memfd mapped MAP_SHARED; registered MISSING on the handler's
 * userfaultfd, or with h == NULL on none (then the kernel alone serves its
 * first touches). */
struct bside {
	struct handler *h;
	int memfd;
	uint8_t *p;
	size_t pages;
	uint64_t faults_before;
};

static void bside_open(struct bside *b, struct handler *h, size_t pages)
{
	size_t len = pages * BENCH_PAGE;

	*b = (struct bside){ .h = h, .pages = pages };
	b->memfd = memfd_create("capdsm-bench-bare", MFD_CLOEXEC);
	if (b->memfd < 0 || ftruncate(b->memfd, (off_t)len) != 0)
		bench_die("memfd: %s", strerror(errno));
	b->p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, b->memfd, 0);
	if (b->p == MAP_FAILED)
		bench_die("mmap: %s", strerror(errno));
	if (!h)
		return;
	b->faults_before = atomic_load(&h->faults);
	struct uffdio_register reg = {
		.range = { .start = (uint64_t)(uintptr_t)b->p, .len = len },
		.mode = UFFDIO_REGISTER_MODE_MISSING,
	};
	if (ioctl(h->uffd, UFFDIO_REGISTER, &reg) != 0)
		bench_die("UFFDIO_REGISTER: %s", strerror(errno));
}

/* Nanoseconds to touch pages [from, from + n). A polling handler is woken
 * for the segment and not waited for: the daemon too may be asleep when a
 * segment starts. */
static uint64_t bside_touch(struct bside *b, size_t from, size_t n)
{
	struct handler *h = b->h;
	uint64_t ns;

	if (!h || !h->polling)
		return touch_pages(b->p + from * BENCH_PAGE, n);
	atomic_store(&h->active, true);
	handler_kick(h);
	ns = touch_pages(b->p + from * BENCH_PAGE, n);
	atomic_store(&h->active, false);
	return ns;
}

static void bside_close(struct bside *b)
{
	if (b->h) {
		uint64_t served = atomic_load(&b->h->faults) - b->faults_before;
		if (served != b->pages)
			bench_die("handler served %llu faults for %zu touches",
			          (unsigned long long)served, b->pages);
	}
	munmap(b->p, b->pages * BENCH_PAGE); /* unregisters the range */
	close(b->memfd);
}

/* ---- runs ---- */

/* One run: `pages` fresh pages on each side, touched in segments of `seg`
 * pages that rotate between the daemon and the bare handlers, each segment
 * followed by the kernel-only touch. Stores microseconds per fault of the
 * daemon (dv), of each bare handler (bv[i]) and of the kernel alone (kv). */
static void one_run(struct capdsm *c, struct handler *hs, int nh,
                    size_t pages, size_t seg, long r, double *dv, double *bv,
                    double *kv)
{
	struct dside d;
	struct bside b[2], k;
	uint64_t dns = 0, bns[2] = { 0, 0 }, kns = 0;

	dside_open(c, &d, pages);
	for (int j = 0; j < nh; j++)
		bside_open(&b[j], &hs[j], pages);
	bside_open(&k, NULL, pages);
	for (size_t from = 0, i = 0; from < pages; from += seg, i++) {
		size_t n = pages - from < seg ? pages - from : seg;
		for (int j = 0; j <= nh; j++) {
			int who = (int)((i + (size_t)r + (size_t)j) % (size_t)(nh + 1));
			if (who == nh)
				dns += touch_pages(d.p + from * BENCH_PAGE, n);
			else
				bns[who] += bside_touch(&b[who], from, n);
		}
		kns += bside_touch(&k, from, n);
	}
	dside_close(c, &d);
	for (int j = 0; j < nh; j++)
		bside_close(&b[j]);
	bside_close(&k);
	*dv = (double)dns / 1e3 / (double)pages;
	for (int j = 0; j < nh; j++)
		bv[j] = (double)bns[j] / 1e3 / (double)pages;
	*kv = (double)kns / 1e3 / (double)pages;
}

static void usage(void)
{
	fprintf(stderr, "usage: bench_fault --socket PATH --mode blocking|polling "
	        "[--pages N] [--segment PAGES] [--runs N]\n"
	        "                   [--client-cpu N] [--server-cpu N] [--quick]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "mode", required_argument, NULL, 'M' },
		{ "pages", required_argument, NULL, 'p' },
		{ "segment", required_argument, NULL, 'S' },
		{ "client-cpu", required_argument, NULL, 'C' },
		{ "server-cpu", required_argument, NULL, 'D' },
		{ "runs", required_argument, NULL, 'r' },
		{ "quick", no_argument, NULL, 'q' },
		{ 0 },
	};
	const char *sock = NULL, *mode = NULL;
	long pages = 0, runs = 0, seg = 256, client_cpu = -1;
	bool quick = false, polling;
	int o;

	while ((o = getopt_long(argc, argv, "s:M:p:S:C:D:r:q", opts, NULL)) != -1) {
		switch (o) {
		case 's': sock = optarg; break;
		case 'M': mode = optarg; break;
		case 'p': pages = bench_arg_long("--pages", optarg, 1, 1 << 20); break;
		case 'S': seg = bench_arg_long("--segment", optarg, 1, 1 << 20); break;
		case 'C':
			client_cpu = bench_arg_long("--client-cpu", optarg, 0,
			                            CPU_SETSIZE - 1);
			break;
		case 'D':
			server_cpu = (int)bench_arg_long("--server-cpu", optarg, 0,
			                                 CPU_SETSIZE - 1);
			break;
		case 'r': runs = bench_arg_long("--runs", optarg, 1, MAX_RUNS); break;
		case 'q': quick = true; break;
		default: usage();
		}
	}
	if (!sock || !mode || optind != argc)
		usage();
	if (strcmp(mode, "polling") == 0)
		polling = true;
	else if (strcmp(mode, "blocking") == 0)
		polling = false;
	else
		usage();
	if (!pages)
		pages = quick ? 1024 : 4096;
	if (!runs)
		runs = quick ? 3 : 11;

	bench_pin((int)client_cpu);
	struct capdsm *c;
	if (capdsm_connect(sock, NULL, &c) != 0)
		bench_die("connect: %s", capdsm_strerror(NULL));
	struct handler hs[2];
	int nh = polling ? 2 : 1;
	if (polling) {
		handler_start(&hs[0], WAIT_SPIN_READ);
		handler_start(&hs[1], WAIT_SPIN_POLL);
	} else {
		handler_start(&hs[0], WAIT_BLOCK);
	}

	double v[MAX_RUNS], l[MAX_RUNS], k[MAX_RUNS], bv[2][MAX_RUNS];
	double junk, junkv[2];

	one_run(c, hs, nh, 256, 64, 0, &junk, junkv, &junk); /* warm-up */
	for (long r = 0; r < runs; r++) {
		double b[2];
		one_run(c, hs, nh, (size_t)pages, (size_t)seg, r, &v[r], b, &k[r]);
		for (int j = 0; j < nh; j++)
			bv[j][r] = b[j];
	}
	/* The limit is the spinning style with the lower median; taking the
	 * faster of two noisy samples run by run would bias it low. */
	int best = 0;
	if (nh == 2 &&
	    bench_median(bv[1], (int)runs) < bench_median(bv[0], (int)runs))
		best = 1;
	memcpy(l, bv[best], (size_t)runs * sizeof l[0]);
	for (int j = 0; j < nh; j++)
		handler_stop(&hs[j]);

	char what[128], where[96], name[64];
	snprintf(what, sizeof what, "time to touch %ld fresh pages / %ld, in "
	         "alternating segments of %ld", pages, pages, seg);
	snprintf(name, sizeof name, "fault_first_touch_%s%s", mode,
	         bench_placement((int)client_cpu, server_cpu, where, sizeof where));
	struct bench_result res = {
		.bench = name,
		.placement = where,
		.unit = "us",
		.limit_name = !polling
			? "bare userfaultfd MISSING fault, UFFDIO_ZEROPAGE, handler "
			  "thread blocking in poll"
			: best == 0
			? "bare userfaultfd MISSING fault, UFFDIO_ZEROPAGE, handler "
			  "thread spinning on non-blocking read (the lower median of "
			  "the two spinning handlers)"
			: "bare userfaultfd MISSING fault, UFFDIO_ZEROPAGE, handler "
			  "thread spinning on poll(0) then read (the lower median of "
			  "the two spinning handlers)",
		.mode = polling ? "polling" : "blocking",
		.median_of = what,
		.dir = BENCH_LOWER_IS_BETTER,
		.target = 1.5,
		.runs = (int)runs,
		.values = v,
		.limits = l,
		.also = {
			{ "first touch of a fresh memfd page, no userfaultfd "
			  "(kernel only)", k },
			{ polling ? "bare fault, handler spinning on non-blocking read"
			          : NULL, bv[0] },
			{ polling ? "bare fault, handler spinning on poll(0) then read"
			          : NULL, bv[1] },
		},
	};
	bench_report(&res);
	capdsm_close(c);
	return 0;
}
