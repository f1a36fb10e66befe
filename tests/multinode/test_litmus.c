/* test_litmus.c — litmus tests between real daemons over mapped memory:
 * MP, SB, LB, IRIW and 2+2W, each with its processes on different nodes of
 * a 4-node cluster (the object's home is node 0), each at least 10,000
 * iterations, and each in two layouts: x and y on different pages (so
 * every access that races crosses the coherence protocol for its own
 * page) and on the same page (different cache lines). Every outcome is
 * recorded and counted; any outcome that sequential consistency forbids
 * fails the test, as does a value that no store of the iteration wrote.
 *
 * Iterations: iteration i (1, 2, ...) writes the value i (2+2W: 4i+1 and
 * 4i+2), so nothing is reset between iterations: at the start of
 * iteration i every variable holds what iteration i-1 wrote, and a load
 * returns either that ("old") or this iteration's store ("new"). A barrier
 * made of pipes (one inbox per process, each arrival a byte naming its
 * sender) starts every iteration; it is outside the DSM, so it adds no
 * ordering of its own to the shared memory. In one iteration out of four
 * a process sleeps a varying while after the barrier (jitter() below) so
 * that the racing accesses meet in many different orders.
 *
 * Accesses are volatile loads and stores of aligned 64-bit words with
 * compiler barriers between them, and no fence: across nodes it is the
 * DSM that must make them sequentially consistent. On one node the
 * processes share physical pages and the x86 hardware model (TSO) holds:
 * SB's forbidden outcome (r0 = r1 = old) can then happen, because each
 * store may still sit in its CPU's store buffer when the other's load
 * executes — a same-node SB would need an mfence between the store and
 * the load. That is why every test here puts its processes on different
 * nodes: that is what the DSM promises to make sequentially consistent.
 * (MP, LB, IRIW and 2+2W are forbidden under TSO as well.)
 *
 * The pipes are part of the program, so the program as a whole (memory
 * and pipes) must behave sequentially consistently: a store that has
 * completed before its process writes to a pipe is seen by every load
 * that follows the read of that byte. The write-invalidate protocol
 * promises exactly that (a node gets a page for writing only once every
 * other copy is gone, Ivy's guarantee); without it the barrier would not
 * separate iterations. The checks that lean on it: a load in iteration i
 * returns a value of iteration i-1 or i (never older), and 2+2W's final
 * values are read after a second barrier — by both of its processes,
 * which must agree.
 *
 * The five tests of one layout run at the same time, each with its own
 * object, processes and barrier: they mostly wait for daemons to wake up,
 * so side by side they take little longer than the slowest alone (2+2W,
 * with two barriers per iteration).
 *
 * For runs by hand: CAPDSM_LITMUS_ITERS raises the iteration count (never
 * below 10,000; inside tests/vm's VM, where CAPDSM_VM=1 and every
 * instruction is emulated, never below 1,000, so that the rdma runs fit
 * CI's time), CAPDSM_LITMUS_ONLY="MP SB" picks tests by name,
 * CAPDSM_LITMUS_SERIAL runs them one after the other (to measure each
 * alone), CAPDSM_LITMUS_POLL_US sets the daemons' node.poll_us. */
#include "mn.h"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>

#define MIN_ITERS 10000u
#define MIN_ITERS_VM 1000u
#define MAXP 4
#define CBAR() __asm__ volatile("" ::: "memory")

static unsigned iters = MIN_ITERS;

/* ---- the pipe barrier ---- */

struct bar {
	unsigned n, self;
	int in;          /* this process's inbox (read end, non-blocking) */
	int out[MAXP];   /* every inbox's write end */
	uint32_t got[MAXP];
	uint32_t round;
};

static void bar_wait(struct bar *b)
{
	char me = (char)b->self;
	unsigned spins = 0;

	b->round++;
	for (unsigned j = 0; j < b->n; j++)
		if (j != b->self)
			TH_CHILD_CHECK(write(b->out[j], &me, 1) == 1, 40);
	for (;;) {
		bool done = true;
		for (unsigned j = 0; j < b->n; j++)
			if (j != b->self && b->got[j] < b->round)
				done = false;
		if (done)
			return;
		char buf[64];
		ssize_t r = read(b->in, buf, sizeof buf);
		if (r > 0) {
			for (ssize_t k = 0; k < r; k++) {
				TH_CHILD_CHECK((unsigned char)buf[k] < b->n, 41);
				b->got[(unsigned char)buf[k]]++;
			}
			continue;
		}
		TH_CHILD_CHECK(r < 0 && (errno == EAGAIN || errno == EINTR), 42);
		if (spins++ < 50) {
			sched_yield();
			continue;
		}
		struct pollfd pf = { .fd = b->in, .events = POLLIN };
		int pr = poll(&pf, 1, 10000);
		TH_CHILD_CHECK(pr >= 0 || errno == EINTR, 43);
		TH_CHILD_CHECK(pr != 0, 44); /* 10 s without the others */
	}
}

/* ---- the tests ---- */

/* What one process does in iteration i; r[0], r[1] are its loads. */
struct proc_ctx {
	volatile uint64_t *x, *y;
	uint64_t r[2];
};
typedef void (*body_fn)(struct proc_ctx *p, uint64_t i);

struct litmus {
	const char *name;
	unsigned nprocs;
	unsigned node[MAXP];    /* where each process runs */
	body_fn body[MAXP];     /* before the (optional) second barrier */
	body_fn post[MAXP];     /* after it; NULL entries do nothing */
	/* Outcome of iteration i from every process's loads: a code in
	 * 0..15 (one bit per load, set when it read the new value), -1 for
	 * a value no store of the iteration (or the one before) wrote, -2
	 * when two processes read different final values. */
	int (*classify)(uint64_t i, uint64_t r[MAXP][2]);
	uint16_t forbidden;     /* bit c: outcome code c is forbidden */
	const char *bits;       /* what each bit of a code means */
};

/* 0 old, 1 new, -1 neither. */
static int nv(uint64_t v, uint64_t oldv, uint64_t newv)
{
	return v == newv ? 1 : v == oldv ? 0 : -1;
}

static int combine(int a, int b, int c, int d)
{
	if (a < 0 || b < 0 || c < 0 || d < 0)
		return -1;
	return a | b << 1 | c << 2 | d << 3;
}

/* MP: P0 x=1; y=1 || P1 r0=y; r1=x. Forbidden: r0=1, r1=0. */
static void mp_w(struct proc_ctx *p, uint64_t i)
{
	*p->x = i;
	CBAR();
	*p->y = i;
}
static void mp_r(struct proc_ctx *p, uint64_t i)
{
	(void)i;
	p->r[0] = *p->y;
	CBAR();
	p->r[1] = *p->x;
}
static int mp_class(uint64_t i, uint64_t r[MAXP][2])
{
	return combine(nv(r[1][0], i - 1, i), nv(r[1][1], i - 1, i), 0, 0);
}

/* SB: P0 x=1; r0=y || P1 y=1; r1=x. Forbidden: r0=0, r1=0. */
static void sb_0(struct proc_ctx *p, uint64_t i)
{
	*p->x = i;
	CBAR();
	p->r[0] = *p->y;
}
static void sb_1(struct proc_ctx *p, uint64_t i)
{
	*p->y = i;
	CBAR();
	p->r[0] = *p->x;
}
static int sb_class(uint64_t i, uint64_t r[MAXP][2])
{
	return combine(nv(r[0][0], i - 1, i), nv(r[1][0], i - 1, i), 0, 0);
}

/* LB: P0 r0=x; y=1 || P1 r1=y; x=1. Forbidden: r0=1, r1=1. */
static void lb_0(struct proc_ctx *p, uint64_t i)
{
	p->r[0] = *p->x;
	CBAR();
	*p->y = i;
}
static void lb_1(struct proc_ctx *p, uint64_t i)
{
	p->r[0] = *p->y;
	CBAR();
	*p->x = i;
}
static int lb_class(uint64_t i, uint64_t r[MAXP][2])
{
	return combine(nv(r[0][0], i - 1, i), nv(r[1][0], i - 1, i), 0, 0);
}

/* IRIW: P0 x=1 || P1 y=1 || P2 r0=x; r1=y || P3 r2=y; r3=x.
 * Forbidden: r0=1, r1=0, r2=1, r3=0 (the readers disagree on the order
 * of the two independent writes). */
static void iriw_wx(struct proc_ctx *p, uint64_t i)
{
	*p->x = i;
}
static void iriw_wy(struct proc_ctx *p, uint64_t i)
{
	*p->y = i;
}
static void iriw_rxy(struct proc_ctx *p, uint64_t i)
{
	(void)i;
	p->r[0] = *p->x;
	CBAR();
	p->r[1] = *p->y;
}
static void iriw_ryx(struct proc_ctx *p, uint64_t i)
{
	(void)i;
	p->r[0] = *p->y;
	CBAR();
	p->r[1] = *p->x;
}
static int iriw_class(uint64_t i, uint64_t r[MAXP][2])
{
	return combine(nv(r[2][0], i - 1, i), nv(r[2][1], i - 1, i),
	               nv(r[3][0], i - 1, i), nv(r[3][1], i - 1, i));
}

/* 2+2W: P0 x=1; y=2 || P1 y=1; x=2, then (after a barrier) both read the
 * final x and y. Forbidden: x=1 and y=1 (each first store came last).
 * Iteration i writes 4i+1 for "1" and 4i+2 for "2". A code's bit 0 is
 * "x is P0's x=1", bit 1 "y is P1's y=1". */
static void w22_0(struct proc_ctx *p, uint64_t i)
{
	*p->x = 4 * i + 1;
	CBAR();
	*p->y = 4 * i + 2;
}
static void w22_1(struct proc_ctx *p, uint64_t i)
{
	*p->y = 4 * i + 1;
	CBAR();
	*p->x = 4 * i + 2;
}
static void w22_check(struct proc_ctx *p, uint64_t i)
{
	(void)i;
	p->r[0] = *p->x;
	CBAR();
	p->r[1] = *p->y;
}
static int w22_class(uint64_t i, uint64_t r[MAXP][2])
{
	/* Both read the final values with no store in between: they must
	 * agree (coherence), whatever the order of the stores was. */
	if (r[0][0] != r[1][0] || r[0][1] != r[1][1])
		return -2;
	int x = nv(r[0][0], 4 * i + 2, 4 * i + 1);
	int y = nv(r[0][1], 4 * i + 2, 4 * i + 1);
	return combine(x, y, 0, 0);
}

static const struct litmus LT_MP = {
	"MP", 2, { 1, 2 }, { mp_w, mp_r }, { 0 }, mp_class, 1u << 1,
	"bit0 r0=y new, bit1 r1=x new"
};
static const struct litmus LT_SB = {
	"SB", 2, { 0, 3 }, { sb_0, sb_1 }, { 0 }, sb_class, 1u << 0,
	"bit0 P0 read y new, bit1 P1 read x new"
};
static const struct litmus LT_LB = {
	"LB", 2, { 2, 3 }, { lb_0, lb_1 }, { 0 }, lb_class, 1u << 3,
	"bit0 P0 read x new, bit1 P1 read y new"
};
static const struct litmus LT_IRIW = {
	"IRIW", 4, { 0, 1, 2, 3 }, { iriw_wx, iriw_wy, iriw_rxy, iriw_ryx },
	{ 0 }, iriw_class, 1u << 5,
	"bit0 P2 x new, bit1 P2 y new, bit2 P3 y new, bit3 P3 x new"
};
static const struct litmus LT_22W = {
	"2+2W", 2, { 1, 3 }, { w22_0, w22_1 }, { w22_check, w22_check }, w22_class,
	1u << 3, "bit0 final x is P0's first store, bit1 final y is P1's first"
};

/* ---- running them ---- */

/* Delays this process after the barrier in one iteration out of four, by
 * 0 to 960 us, differently per process and iteration (a fixed hash, so
 * runs repeat): a page fault here takes some 100-500 us, and without a
 * delay of that size the state of the pages decides the race — whoever
 * needs no fault wins — and the racing accesses meet in the same order
 * almost every time. The delay sleeps rather than spins: on two cores a
 * spinning process takes the CPU the daemons need to serve the others. */
static void jitter(unsigned proc, uint64_t i)
{
	uint64_t h = (i + 1) * 0x9e3779b97f4a7c15ull ^
	             ((uint64_t)proc + 1) * 0xc2b2ae3d27d4eb4full;
	h ^= h >> 29;
	h *= 0xbf58476d1ce4e5b9ull;
	h ^= h >> 32;
	unsigned units = (unsigned)(h % 64);
	if (units < 48)
		return;
	struct timespec ts = { 0, (long)(units - 48) * 64000L };
	nanosleep(&ts, NULL);
}

/* One litmus test under way: its object, processes and results. The
 * results and end times live in memory shared with the children (mapped
 * before they fork). */
struct run {
	const struct litmus *t;
	bool same_page;
	uint64_t (*res)[MAXP][2]; /* [iteration][process][load] */
	int64_t *end_us;          /* [process]: when it finished */
	int inbox[MAXP][2];
	pid_t kid[MAXP];
	uint32_t obj;
	char ref[CAPDSM_REF_MAX];
	int64_t t0;
};

static void child(struct run *r, unsigned me, struct bar *b)
{
	const struct litmus *t = r->t;
	struct capdsm *c = mn_child_connect(t->node[me]);
	uint32_t s = mn_child_import(c, r->ref);
	uint8_t *base = mn_child_map(c, s, 2 * PAGE);
	struct proc_ctx p = {
		.x = (volatile uint64_t *)base,
		.y = (volatile uint64_t *)(base + (r->same_page ? 64 : PAGE)),
	};
	bool two = false;

	for (unsigned k = 0; k < t->nprocs; k++)
		if (t->post[k])
			two = true;
	int fl = fcntl(b->in, F_GETFL);
	TH_CHILD_CHECK(fl >= 0 && fcntl(b->in, F_SETFL, fl | O_NONBLOCK) == 0, 20);
	bar_wait(b); /* everyone is mapped */
	for (uint64_t i = 1; i <= iters; i++) {
		bar_wait(b);
		jitter(me, i);
		p.r[0] = p.r[1] = UINT64_MAX;
		t->body[me](&p, i);
		if (two) {
			bar_wait(b);
			if (t->post[me])
				t->post[me](&p, i);
		}
		r->res[i - 1][me][0] = p.r[0];
		r->res[i - 1][me][1] = p.r[1];
	}
	bar_wait(b);
	r->end_us[me] = mn_now_us();
	capdsm_close(c);
	_exit(0);
}

static void run_start(struct run *r, struct capdsm *c0)
{
	const struct litmus *t = r->t;

	r->obj = mn_object(c0, 2 * PAGE, r->ref);
	memset(r->res, 0xff, (size_t)iters * sizeof *r->res);
	for (unsigned k = 0; k < t->nprocs; k++)
		assert_int_equal(pipe2(r->inbox[k], O_CLOEXEC), 0);
	r->t0 = mn_now_us();
	for (unsigned k = 0; k < t->nprocs; k++) {
		r->end_us[k] = 0;
		r->kid[k] = th_fork(mn_guard_seconds);
		assert_true(r->kid[k] >= 0);
		if (r->kid[k] == 0) {
			struct bar b = { .n = t->nprocs, .self = k,
				             .in = r->inbox[k][0] };
			for (unsigned j = 0; j < t->nprocs; j++)
				b.out[j] = r->inbox[j][1];
			child(r, k, &b);
		}
	}
}

/* Prints what every process loaded in iteration i (2+2W in hex). */
static void print_iteration(const struct run *r, uint64_t i, int code)
{
	print_message("%s: iteration %llu: %s; loads:", r->t->name,
	              (unsigned long long)i,
	              code == -1   ? "a value no store of it wrote"
	              : code == -2 ? "the processes disagree on a final value"
	                           : "forbidden outcome");
	for (unsigned k = 0; k < r->t->nprocs; k++)
		for (unsigned j = 0; j < 2; j++)
			if (r->res[i - 1][k][j] != UINT64_MAX)
				print_message(" P%u.r%u=%#llx", k, j,
				              (unsigned long long)r->res[i - 1][k][j]);
	print_message(" (iteration %#llx)\n", (unsigned long long)i);
}

/* Waits for the run's processes, counts and prints its outcomes. Returns
 * the number of problems: a process that failed, iterations with a
 * forbidden outcome or a value nobody wrote. */
static unsigned run_finish(struct run *r, struct capdsm *c0)
{
	const struct litmus *t = r->t;
	uint64_t count[16] = { 0 };
	unsigned bad = 0, strange = 0, disagree = 0, failed = 0;
	int64_t end = r->t0;

	for (unsigned k = 0; k < t->nprocs; k++) {
		int rc = th_wait_exit(r->kid[k], (int)mn_guard_seconds * 1000);
		if (rc != 0) {
			print_message("%s %s: process %u (node %u) ended with %d\n",
			              t->name, r->same_page ? "same page" : "two pages",
			              k, t->node[k], rc);
			failed++;
		}
		if (r->end_us[k] > end)
			end = r->end_us[k];
	}
	for (unsigned k = 0; k < t->nprocs; k++) {
		close(r->inbox[k][0]);
		close(r->inbox[k][1]);
	}
	if (failed)
		return failed;
	for (uint64_t i = 1; i <= iters; i++) {
		int code = t->classify(i, r->res[i - 1]);
		bool show = false;

		if (code == -1) {
			show = strange++ < 5;
		} else if (code < 0) {
			show = disagree++ < 5;
		} else {
			count[code]++;
			if (t->forbidden & (1u << code))
				show = bad++ < 5;
		}
		if (show)
			print_iteration(r, i, code);
	}
	print_message("%-4s %-9s nodes", t->name,
	              r->same_page ? "same page" : "two pages");
	for (unsigned k = 0; k < t->nprocs; k++)
		print_message(" %u", t->node[k]);
	print_message(": %u iterations in %.2f s (%.0f us each); outcomes (%s):",
	              iters, (end - r->t0) / 1e6, (double)(end - r->t0) / iters,
	              t->bits);
	for (unsigned code = 0; code < 16; code++)
		if (count[code] || (t->forbidden & (1u << code)))
			print_message(" %x%s=%llu", code,
			              (t->forbidden & (1u << code)) ? "(forbidden)" : "",
			              (unsigned long long)count[code]);
	print_message("\n");
	if (bad || strange || disagree)
		print_message("%s %s: FAILED: %u iterations with a forbidden "
		              "outcome, %u with a value no store of the iteration "
		              "wrote, %u where the processes disagree on a final "
		              "value\n", t->name,
		              r->same_page ? "same page" : "two pages", bad,
		              strange, disagree);
	MN_OK(c0, capdsm_object_destroy(c0, r->obj));
	return bad + strange + disagree;
}

static const struct litmus *const all_tests[] = { &LT_MP, &LT_SB, &LT_LB,
	                                              &LT_IRIW, &LT_22W };
#define NTESTS (sizeof all_tests / sizeof all_tests[0])
static struct run runs[NTESTS];
static bool serial; /* CAPDSM_LITMUS_SERIAL: one test after the other */
static const char *only; /* CAPDSM_LITMUS_ONLY: names of the tests to run */

/* The five tests in one layout, at the same time on the one cluster (each
 * with its own object, processes and barrier): what they wait for is
 * mostly the daemons waking up, so running them side by side costs little
 * more than the slowest alone. */
static void run_layout(bool same_page)
{
	struct capdsm *c0 = mn_connect(0);
	unsigned problems = 0, started = 0;
	int64_t t0 = mn_now_us();

	for (unsigned k = 0; k < NTESTS; k++) {
		runs[k].t = all_tests[k];
		runs[k].same_page = same_page;
		runs[k].kid[0] = 0;
		if (only && !strstr(only, all_tests[k]->name))
			continue;
		run_start(&runs[k], c0);
		started |= 1u << k;
		if (serial)
			problems += run_finish(&runs[k], c0);
	}
	for (unsigned k = 0; !serial && k < NTESTS; k++)
		if (started & (1u << k))
			problems += run_finish(&runs[k], c0);
	print_message("%s: all in %.1f s\n", same_page ? "same page" : "two pages",
	              (mn_now_us() - t0) / 1e6);
	mn_close(c0);
	assert_int_equal(problems, 0);
}

static void test_litmus_two_pages(void **s)
{
	(void)s;
	run_layout(false);
}

static void test_litmus_same_page(void **s)
{
	(void)s;
	run_layout(true);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest all[] = {
		MN_TEST(test_litmus_two_pages),
		MN_TEST(test_litmus_same_page),
	};
	const char *e = getenv("CAPDSM_LITMUS_ITERS");

	if (argc > 1) /* a pattern of test names: ctest runs the two layouts
	               * as two tests, "*two_pages" and "*same_page" */
		cmocka_set_test_filter(argv[1]);
	unsigned floor = getenv("CAPDSM_VM") ? MIN_ITERS_VM : MIN_ITERS;
	if (e && strtoul(e, NULL, 10) >= floor && strtoul(e, NULL, 10) <= 10000000)
		iters = (unsigned)strtoul(e, NULL, 10);
	serial = getenv("CAPDSM_LITMUS_SERIAL") != NULL;
	only = getenv("CAPDSM_LITMUS_ONLY");
	for (unsigned k = 0; k < NTESTS; k++) {
		size_t len = (size_t)iters * sizeof *runs[k].res + PAGE;
		void *m = mmap(NULL, len, PROT_READ | PROT_WRITE,
		               MAP_SHARED | MAP_ANONYMOUS, -1, 0);
		if (m == MAP_FAILED) {
			perror("mmap");
			return 1;
		}
		runs[k].end_us = m;
		runs[k].res = (void *)((char *)m + PAGE);
	}
	e = getenv("CAPDSM_LITMUS_POLL_US");
	if (e)
		mn_opts.poll_us = (uint32_t)strtoul(e, NULL, 10);
	mn_nodes = 4;
	mn_guard_seconds = 300;
	return MN_RUN("multinode.litmus", all, true);
}
