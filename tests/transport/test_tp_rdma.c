/* test_tp_rdma.c — what only TP_KIND_RDMA has (tp_tcp.c's handshake with
 * queue pair endpoints, tp_rdma.c's frames and credits), against a real
 * verbs device: soft-RoCE inside tests/vm (label rdma).
 *  - mode: a tcp node (tp_test.c's raw peer speaks the tcp kind's
 *    handshake) is refused by an rdma node, which says why;
 *  - credits: a receiver far slower than its sender, with rings of 16
 *    frames, loses nothing, reorders nothing, never fails a queue pair
 *    (no receiver-not-ready error), and the sender sees -EAGAIN, never a
 *    block, once its own frames are full.
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "tp_test.h"

static void mode_tcp_peer_refused(void **st)
{
	struct cluster c;
	struct rawtcp r;
	(void)st;

	cluster_init(&c, 2, false);
	node_open(&c, 0);
	/* Node 1's key, the tcp kind's handshake: a member, wrong kind. */
	int rc = rawtcp_open(&r, &c, 1, c.sec[1], 0);
	assert_true(rc > 0); /* refused, with a status */
	pump(&c, 200, never, NULL);
	if (!strstr(c.rec[0].all_reasons, "mode mismatch") ||
	    !strstr(c.rec[0].all_reasons, "this node: rdma"))
		fail_msg("refusal reasons: %s", c.rec[0].all_reasons);
	assert_false(c.rec[0].up[1]);
	rawtcp_close(&r);
	cluster_close(&c);
}

static bool got_all(struct cluster *c, void *arg)
{
	return c->rec[1].msgs >= *(uint64_t *)arg;
}

static void credits_slow_receiver(void **st)
{
	enum { N = 20000, PAYLOAD = 4096 };
	struct cluster c;
	uint8_t *page = malloc(PAYLOAD);
	uint64_t sent = 0, eagain = 0, worst_us = 0;
	(void)st;

	assert_non_null(page);
	cluster_init(&c, 2, false);
	for (int i = 0; i < 2; i++) {
		c.cfg[i].queue_limit = 16; /* 16 frames each way */
		c.cfg[i].max_payload = PAYLOAD;
		c.cfg[i].dead_after_ms = 20000;
		c.cfg[i].heartbeat_ms = 1000;
	}
	cluster_open(&c);
	c.rec[1].fifo = true;
	assert_true(pump(&c, 10000, all_up, NULL));

	/* Node 0 sends as fast as it may; node 1 polls only every few
	 * rounds, and then with a pause: its frames stay full, credits come
	 * back late, and node 0's own frames fill behind them. */
	unsigned round = 0;
	while (sent < N) {
		size_t len = fifo_len(sent, PAYLOAD);
		uint8_t hdr[16];
		memcpy(hdr, &sent, 8);
		memcpy(hdr + 8, "\0\0\0\0\0\0\0\0", 8);
		for (size_t i = 0; i < len; i++)
			page[i] = fifo_byte(sent, i);
		struct timespec a, b;
		clock_gettime(CLOCK_MONOTONIC, &a);
		int rc = tp_send(c.rec[0].tp, 1, hdr, 16, len ? page : NULL, len);
		clock_gettime(CLOCK_MONOTONIC, &b);
		uint64_t us = (uint64_t)(b.tv_sec - a.tv_sec) * 1000000u +
		              (uint64_t)(b.tv_nsec - a.tv_nsec) / 1000;
		if (us > worst_us)
			worst_us = us;
		if (rc == 0) {
			sent++;
			continue;
		}
		assert_int_equal(rc, -EAGAIN);
		eagain++;
		pump_mask(&c, 1u << 0, 1, NULL, NULL);
		if (++round % 4 == 0) {
			usleep(2000);
			pump_mask(&c, 1u << 1, 1, NULL, NULL);
		}
	}
	assert_true(pump(&c, 60000, got_all, &sent));
	print_message("%llu messages, %llu refusals with -EAGAIN, slowest "
	              "tp_send %llu us\n", (unsigned long long)sent,
	              (unsigned long long)eagain,
	              (unsigned long long)worst_us);
	assert_int_equal(c.rec[1].msgs, N);
	assert_false(c.rec[1].fifo_broken);
	assert_true(eagain > 0);
	assert_int_equal(c.rec[0].downs[1] + c.rec[1].downs[0], 0);
	struct tp_stats s0, s1;
	tp_stats(c.rec[0].tp, &s0);
	tp_stats(c.rec[1].tp, &s1);
	assert_int_equal(s0.auth_failures + s1.auth_failures, 0); /* no QP failed */
	assert_int_equal(s1.drop_malformed + s1.broken, 0);
	cluster_close(&c);
	free(page);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(mode_tcp_peer_refused),
		cmocka_unit_test(credits_slow_receiver),
	};
	signal(SIGPIPE, SIG_IGN);
	tp_test_kind = TP_KIND_RDMA;
	if (argc > 1)
		cmocka_set_test_filter(argv[1]);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
