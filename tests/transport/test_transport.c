/* test_transport.c — the contract tests of node/transport.h (T1-T5), run
 * against either implementation: argv[1] is "zmq" or "tcp", argv[2] a
 * cmocka name filter ("fifo_*"). Real sockets on 127.0.0.1 with ports
 * picked free by the kernel, real keys, several nodes in one process, and
 * forked nodes where a crash or a stall matters. Every wait is bounded.
 *
 * What they show: T1 (FIFO without loss, 100k messages under load, all to
 * all), T2 (unknown keys, wrong server keys and spoofed ids never deliver;
 * refusals are reported), T3 (SIGKILL is reported within dead_after +
 * heartbeat, a restart is a new incarnation, a stalled node is evicted),
 * T4 (a full queue is -EAGAIN, never a block or a loss), and, for ZeroMQ,
 * that malformed frames from a keyed peer are counted and dropped (the
 * TCP transport's records have their own tests in test_tp_tcp.c). Where
 * the two differ in what they can say (ZeroMQ's ZAP handler sees the
 * client's key, a KK handshake only sees that it does not match), the
 * assertion on the reason's words is per kind. */
#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <zmq.h>

#include "tp_test.h"

#define ZMQ_ONLY (tp_test_kind == TP_KIND_ZMQ)

/* ---- config: refusals before anything is opened ---- */

static void expect_open_fails(const struct tp_config *cfg, int code,
                              const char *needle)
{
	struct tp *tp = NULL;
	char err[256] = "";
	int rc = tp_open(&tp, cfg, err, sizeof err);
	if (rc != code || (needle && !strstr(err, needle)))
		fail_msg("tp_open: want %d \"%s\", got %d \"%s\"", code,
		         needle ? needle : "", rc, err);
	assert_null(tp);
}

static void config_refusals(void **st)
{
	struct cluster c;
	struct tp_config cfg;
	struct tp_peer_cfg peers[MAXN];
	(void)st;

	cluster_init(&c, 3, false);

	/* A daemon without a cluster key is refused. */
	cfg = c.cfg[0];
	memset(cfg.secret_key, 0, sizeof cfg.secret_key);
	expect_open_fails(&cfg, -EINVAL, "without a cluster key is refused");
	/* Malformed: right length, characters outside Z85. */
	memset(cfg.secret_key, '~', TP_KEY_LEN);
	expect_open_fails(&cfg, -EINVAL, "cluster key");
	/* Too short. */
	memcpy(cfg.secret_key, c.sec[0], sizeof cfg.secret_key);
	cfg.secret_key[39] = 0;
	expect_open_fails(&cfg, -EINVAL, "cluster key");
	/* Another node's secret key. */
	memcpy(cfg.secret_key, c.sec[1], sizeof cfg.secret_key);
	expect_open_fails(&cfg, -EINVAL, "does not belong to node 0");

	/* A member without a public key. */
	memcpy(peers, c.peers, sizeof peers);
	cfg = c.cfg[0];
	cfg.peers = peers;
	peers[2].public_key[0] = 0;
	expect_open_fails(&cfg, -EINVAL, "node 2: public key");
	/* Two members with one key. */
	memcpy(peers[2].public_key, peers[1].public_key, TP_KEY_LEN + 1);
	expect_open_fails(&cfg, -EINVAL, "share a public key");

	/* Addresses: numeric tcp only, never "*" or a name. */
	static const char *bad[] = {
		"tcp://*:5555", "tcp://localhost:5555", "ipc:///tmp/x",
		"tcp://127.0.0.1", "tcp://127.0.0.1:0", "tcp://127.0.0.1:70000",
		"tcp://127.0.0.1:55x", "tcp://eth0:5555", "",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		memcpy(peers, c.peers, sizeof peers);
		snprintf(peers[1].address, sizeof peers[1].address, "%s", bad[i]);
		expect_open_fails(&cfg, -EINVAL, "not tcp://NUMERIC-IP:PORT");
	}
	memcpy(peers, c.peers, sizeof peers);
	memcpy(peers[1].address, peers[2].address, TP_ADDR_LEN);
	expect_open_fails(&cfg, -EINVAL, "share address");

	/* Membership. */
	memcpy(peers, c.peers, sizeof peers);
	peers[2].id = 1;
	expect_open_fails(&cfg, -EINVAL, "each once");
	memcpy(peers, c.peers, sizeof peers);
	cfg.self = 3;
	expect_open_fails(&cfg, -EINVAL, "self id 3");
	cfg = c.cfg[0];
	cfg.dead_after_ms = 60; /* < 2 * 50 */
	expect_open_fails(&cfg, -EINVAL, "twice heartbeat_ms");
	cfg = c.cfg[0];
	cfg.send_buffer = (1u << 30) + 1;
	expect_open_fails(&cfg, -EINVAL, "out of range");
	cfg = c.cfg[0];
	cfg.kind = (enum tp_kind)7;
	expect_open_fails(&cfg, -EINVAL, "unknown transport kind");
	/* RDMA on a device that is not there: a clear refusal (with no
	 * device at all, or none of that name). */
	cfg = c.cfg[0];
	cfg.kind = TP_KIND_RDMA;
	snprintf(cfg.rdma_device, sizeof cfg.rdma_device, "nosuch0");
	expect_open_fails(&cfg, -ENODEV, "no RDMA device");

	/* The kind's names. */
	enum tp_kind k = TP_KIND_TCP;
	assert_int_equal(tp_kind_parse("zmq", &k), 0);
	assert_int_equal(k, TP_KIND_ZMQ);
	assert_int_equal(tp_kind_parse("rdma", &k), 0);
	assert_int_equal(k, TP_KIND_RDMA);
	assert_int_equal(tp_kind_parse("tcp", &k), 0);
	assert_int_equal(k, TP_KIND_TCP);
	assert_int_equal(tp_kind_parse("TCP", &k), -EINVAL);
	assert_int_equal(tp_kind_parse("", &k), -EINVAL);
	assert_int_equal(tp_kind_parse(NULL, &k), -EINVAL);
	assert_int_equal(k, TP_KIND_TCP);
	assert_string_equal(tp_kind_str(TP_KIND_ZMQ), "zmq");
	assert_string_equal(tp_kind_str(TP_KIND_TCP), "tcp");
	assert_string_equal(tp_kind_str(TP_KIND_RDMA), "rdma");
	assert_string_equal(tp_kind_str((enum tp_kind)7), "?");

	/* Plaintext only by the explicit setting, then keys are not needed. */
	cluster_init(&c, 2, true);
	node_open(&c, 0);
	/* The same address twice. */
	expect_open_fails(&c.cfg[0], -EADDRINUSE, "bind");
	/* Sends before the peer is UP, to self, too large. */
	uint8_t b[8] = { 0 };
	assert_int_equal(tp_send(c.rec[0].tp, 1, b, 8, NULL, 0), -ENOTCONN);
	assert_int_equal(tp_send(c.rec[0].tp, 0, b, 8, NULL, 0), -EINVAL);
	assert_int_equal(tp_send(c.rec[0].tp, 7, b, 8, NULL, 0), -EINVAL);
	assert_int_equal(tp_send(c.rec[0].tp, 1, b, TP_MAX_HDR + 1, NULL, 0),
	                 -EMSGSIZE);
	assert_false(tp_peer_alive(c.rec[0].tp, 1));
	cluster_close(&c);
}

/* ---- basic: keys by default, headers and payloads ---- */

static void basic_send_recv(void **st)
{
	struct cluster c;
	struct tp_stats s0, s1;
	struct tp_peer_info pi;
	uint8_t *big = malloc(TP_DEFAULT_PAYLOAD + 1);
	uint8_t hdr[TP_MAX_HDR + 1];
	(void)st;

	assert_non_null(big);
	for (size_t i = 0; i <= TP_DEFAULT_PAYLOAD; i++)
		big[i] = (uint8_t)(i * 7 + 3);
	for (size_t i = 0; i <= TP_MAX_HDR; i++)
		hdr[i] = (uint8_t)(255 - i);

	cluster_init(&c, 2, false);
	cluster_open(&c);
	uint64_t t0 = now_ms();
	assert_true(pump(&c, 3000, all_up, NULL));
	uint64_t up_ms = now_ms() - t0;
	assert_true(up_ms < (getenv("CAPDSM_VM") ? 10000u : 1000u));
	assert_int_equal(c.rec[0].inc[1], tp_incarnation(c.rec[1].tp));
	assert_int_equal(c.rec[1].inc[0], tp_incarnation(c.rec[0].tp));
	assert_true(tp_peer_alive(c.rec[0].tp, 1));

	/* Header only. */
	struct want w = { 1, 1 };
	assert_int_equal(tp_send(c.rec[0].tp, 1, "hello, node 1", 13, NULL, 0), 0);
	assert_true(pump(&c, 2000, got_msgs, &w));
	assert_int_equal(c.rec[1].last_from, 0);
	assert_int_equal(c.rec[1].last_hdrlen, 13);
	assert_memory_equal(c.rec[1].last_hdr, "hello, node 1", 13);
	assert_int_equal(c.rec[1].last_plen, 0);

	/* A page beside a header, the other way. */
	w = (struct want){ 0, 1 };
	assert_int_equal(tp_send(c.rec[1].tp, 0, hdr, 64, big, 4096), 0);
	assert_true(pump(&c, 2000, got_msgs, &w));
	assert_int_equal(c.rec[0].last_hdrlen, 64);
	assert_memory_equal(c.rec[0].last_hdr, hdr, 64);
	assert_int_equal(c.rec[0].last_plen, 4096);
	assert_memory_equal(c.rec[0].last_payload, big, 4096);

	/* No header, largest payload; largest header and payload. */
	w = (struct want){ 1, 3 };
	assert_int_equal(tp_send(c.rec[0].tp, 1, NULL, 0, big,
	                         TP_DEFAULT_PAYLOAD), 0);
	assert_int_equal(tp_send(c.rec[0].tp, 1, hdr, TP_MAX_HDR, big + 1,
	                         TP_DEFAULT_PAYLOAD), 0);
	assert_true(pump(&c, 2000, got_msgs, &w));
	assert_int_equal(c.rec[1].last_hdrlen, TP_MAX_HDR);
	assert_memory_equal(c.rec[1].last_hdr, hdr, TP_MAX_HDR);
	assert_int_equal(c.rec[1].last_plen, TP_DEFAULT_PAYLOAD);
	assert_memory_equal(c.rec[1].last_payload, big + 1, TP_DEFAULT_PAYLOAD);

	/* Too large is refused at the sender, nothing queued. */
	assert_int_equal(tp_send(c.rec[0].tp, 1, hdr, TP_MAX_HDR + 1, NULL, 0),
	                 -EMSGSIZE);
	assert_int_equal(tp_send(c.rec[0].tp, 1, hdr, 8, big,
	                         TP_DEFAULT_PAYLOAD + 1), -EMSGSIZE);
	assert_int_equal(tp_send(c.rec[0].tp, 1, hdr, 8, NULL, 5), -EINVAL);

	/* tp_fd wakes a sleeping receiver. */
	pump(&c, 100, NULL, NULL);
	assert_int_equal(tp_send(c.rec[0].tp, 1, "x", 1, NULL, 0), 0);
	struct pollfd pfd = { .fd = tp_fd(c.rec[1].tp), .events = POLLIN };
	assert_int_equal(poll(&pfd, 1, 1000), 1);
	w = (struct want){ 1, 4 };
	assert_true(pump(&c, 2000, got_msgs, &w));
	int to = tp_next_timeout_ms(c.rec[1].tp);
	assert_true(to >= 0 && to <= 50);

	assert_int_equal(tp_peer_info(c.rec[0].tp, 1, &pi), 0);
	assert_int_equal(pi.state, TP_PEER_UP);
	assert_true(pi.connected);
	assert_int_equal(pi.sent, 3 + 1);
	assert_int_equal(pi.received, 1);
	assert_int_equal(tp_peer_info(c.rec[0].tp, 9, &pi), -EINVAL);

	tp_stats(c.rec[0].tp, &s0);
	tp_stats(c.rec[1].tp, &s1);
	assert_int_equal(s0.msgs_sent, 4);
	assert_int_equal(s1.msgs_recv, 4);
	assert_int_equal(s0.bytes_sent, s1.bytes_recv);
	assert_true(s0.hb_sent > 0 && s1.hb_recv > 0);
	assert_int_equal(s0.auth_failures + s1.auth_failures, 0);
	assert_int_equal(s1.drop_malformed + s1.drop_oversize +
	                         s1.drop_spoofed + s1.broken, 0);
	assert_int_equal(c.rec[0].downs[1] + c.rec[1].downs[0], 0);
	cluster_close(&c);
	free(big);
}

/* ---- fifo: 100k messages under load, both directions ---- */

static void fifo_100k_under_load(void **st)
{
	enum { N_AB = 100000, N_BA = 20000 };
	struct cluster c;
	uint8_t *buf = malloc(4096);
	uint64_t sent_ab = 0, sent_ba = 0;
	(void)st;

	cluster_init(&c, 2, false);
	cluster_open(&c);
	c.rec[0].fifo = c.rec[1].fifo = true;
	assert_true(pump(&c, 3000, all_up, NULL));

	uint64_t end = now_ms() + 90000;
	while ((sent_ab < N_AB || sent_ba < N_BA ||
	        c.rec[1].msgs < N_AB || c.rec[0].msgs < N_BA) &&
	       now_ms() < end) {
		/* Send until the queue pushes back, then let both drain. */
		for (int k = 0; k < 512 && sent_ab < N_AB; k++) {
			uint8_t hdr[16];
			size_t plen = fifo_len(sent_ab, 4096);
			memcpy(hdr, &sent_ab, 8);
			memset(hdr + 8, 0, 8);
			for (size_t i = 0; i < plen; i++)
				buf[i] = fifo_byte(sent_ab, i);
			int rc = tp_send(c.rec[0].tp, 1, hdr, 16,
			                 plen ? buf : NULL, plen);
			if (rc == -EAGAIN)
				break;
			assert_int_equal(rc, 0);
			sent_ab++;
		}
		for (int k = 0; k < 128 && sent_ba < N_BA; k++) {
			uint8_t hdr[16];
			size_t plen = fifo_len(sent_ba, 4096);
			memcpy(hdr, &sent_ba, 8);
			memset(hdr + 8, 0, 8);
			for (size_t i = 0; i < plen; i++)
				buf[i] = fifo_byte(sent_ba, i);
			int rc = tp_send(c.rec[1].tp, 0, hdr, 16,
			                 plen ? buf : NULL, plen);
			if (rc == -EAGAIN)
				break;
			assert_int_equal(rc, 0);
			sent_ba++;
		}
		for (uint32_t i = 0; i < 2; i++)
			assert_true(tp_poll(c.rec[i].tp, &H, &c.rec[i]) >= 0);
	}
	assert_int_equal(sent_ab, N_AB);
	assert_int_equal(c.rec[1].msgs, N_AB);
	assert_int_equal(c.rec[0].msgs, N_BA);
	assert_false(c.rec[0].fifo_broken);
	assert_false(c.rec[1].fifo_broken);
	assert_int_equal(c.rec[0].downs[1] + c.rec[1].downs[0], 0);
	struct tp_stats s;
	tp_stats(c.rec[1].tp, &s);
	assert_int_equal(s.broken + s.drop_stale + s.drop_malformed, 0);
	cluster_close(&c);
	free(buf);
}

/* ---- a2a: four nodes, everyone to everyone ---- */

static bool a2a_done(struct cluster *c, void *arg)
{
	uint64_t per = *(uint64_t *)arg;
	for (uint32_t i = 0; i < c->n; i++)
		for (uint32_t j = 0; j < c->n; j++)
			if (i != j && c->rec[i].from[j] < per)
				return false;
	return true;
}

static void a2a_four_nodes(void **st)
{
	enum { PER = 3000 };
	struct cluster c;
	uint64_t sent[MAXN][MAXN] = { { 0 } };
	uint8_t *buf = malloc(4096);
	(void)st;

	cluster_init(&c, 4, false);
	cluster_open(&c);
	for (uint32_t i = 0; i < 4; i++)
		c.rec[i].fifo = true;
	assert_true(pump(&c, 5000, all_up, NULL));

	uint64_t end = now_ms() + 90000, per = PER;
	bool more = true;
	while (more && now_ms() < end) {
		more = false;
		for (uint32_t i = 0; i < 4; i++)
			for (uint32_t j = 0; j < 4; j++) {
				if (i == j)
					continue;
				for (int k = 0; k < 16 && sent[i][j] < PER; k++) {
					uint8_t hdr[16];
					uint64_t n = sent[i][j], s = i;
					size_t plen = fifo_len(n, 4096);
					memcpy(hdr, &n, 8);
					memcpy(hdr + 8, &s, 8);
					for (size_t b = 0; b < plen; b++)
						buf[b] = fifo_byte(n, b);
					int rc = tp_send(c.rec[i].tp, j, hdr, 16,
					                 plen ? buf : NULL, plen);
					if (rc == -EAGAIN)
						break;
					assert_int_equal(rc, 0);
					sent[i][j]++;
				}
				if (sent[i][j] < PER)
					more = true;
			}
		for (uint32_t i = 0; i < 4; i++)
			assert_true(tp_poll(c.rec[i].tp, &H, &c.rec[i]) >= 0);
	}
	assert_false(more);
	assert_true(pump(&c, 30000, a2a_done, &per));
	for (uint32_t i = 0; i < 4; i++) {
		assert_false(c.rec[i].fifo_broken);
		assert_int_equal(c.rec[i].msgs, 3 * PER);
		for (uint32_t j = 0; j < 4; j++)
			assert_int_equal(c.rec[i].downs[j], 0);
	}
	cluster_close(&c);
	free(buf);
}

/* ---- a raw peer holding a member's keys ----
 * ZeroMQ: a PUSH with that member's CURVE keys; TCP: tp_test.c's rawtcp,
 * which speaks tp_tcp.c's handshake. raw_send takes the message as
 * ZeroMQ frames (transport header + caller header, payload). */

struct raw {
	void *ctx, *push;
	struct rawtcp t;
};

static void raw_open(struct raw *r, struct cluster *c, uint32_t as,
                     const char *sec, uint32_t to)
{
	uint8_t k[32];
	int zero = 0, timeout = 2000;
	if (tp_test_kind == TP_KIND_TCP) {
		assert_int_equal(rawtcp_open(&r->t, c, as, sec, to), 0);
		return;
	}
	r->ctx = zmq_ctx_new();
	r->push = zmq_socket(r->ctx, ZMQ_PUSH);
	assert_non_null(r->push);
	zmq_setsockopt(r->push, ZMQ_LINGER, &zero, sizeof zero);
	zmq_setsockopt(r->push, ZMQ_SNDTIMEO, &timeout, sizeof timeout);
	assert_non_null(zmq_z85_decode(k, c->peers[to].public_key));
	assert_int_equal(zmq_setsockopt(r->push, ZMQ_CURVE_SERVERKEY, k, 32), 0);
	assert_non_null(zmq_z85_decode(k, c->peers[as].public_key));
	assert_int_equal(zmq_setsockopt(r->push, ZMQ_CURVE_PUBLICKEY, k, 32), 0);
	assert_non_null(zmq_z85_decode(k, sec));
	assert_int_equal(zmq_setsockopt(r->push, ZMQ_CURVE_SECRETKEY, k, 32), 0);
	assert_int_equal(zmq_connect(r->push, c->peers[to].address), 0);
}

static void raw_close(struct raw *r)
{
	if (tp_test_kind == TP_KIND_TCP) {
		rawtcp_close(&r->t);
		return;
	}
	zmq_close(r->push);
	zmq_ctx_term(r->ctx);
}

static void raw_send(struct raw *r, const void *f0, size_t l0, const void *f1,
                     size_t l1, const void *f2, size_t l2)
{
	if (tp_test_kind == TP_KIND_TCP) {
		assert_true(l0 >= 32 && !f2);
		rawtcp_msg(&r->t, f0, (const uint8_t *)f0 + 32, l0 - 32, f1,
		           f1 ? l1 : 0);
		return;
	}
	int more1 = f1 ? ZMQ_SNDMORE : 0, more2 = f2 ? ZMQ_SNDMORE : 0;
	assert_int_equal(zmq_send(r->push, f0, l0, more1), (int)l0);
	if (f1)
		assert_int_equal(zmq_send(r->push, f1, l1, more2), (int)l1);
	if (f2)
		assert_int_equal(zmq_send(r->push, f2, l2, 0), (int)l2);
}

/* ---- auth: keys, server keys, plaintext ---- */

/* Node 1 holds a key pair the membership does not know. */
static void auth_unknown_key_refused(void **st)
{
	struct cluster c;
	struct tp_peer_cfg rogue[MAXN];
	struct tp_stats s0, s1;
	struct tp_peer_info pi;
	(void)st;

	cluster_init(&c, 2, false);
	memcpy(rogue, c.peers, sizeof rogue);
	assert_int_equal(tp_keypair(rogue[1].public_key, c.cfg[1].secret_key), 0);
	c.cfg[1].peers = rogue;
	cluster_open(&c);

	uint64_t t0 = now_ms();
	pump(&c, 1500, never, NULL);
	uint64_t dt = now_ms() - t0;

	/* Node 1 can deliver nothing, and learns nothing. */
	assert_false(c.rec[0].up[1]);
	assert_false(c.rec[1].up[0]);
	assert_int_equal(c.rec[0].msgs + c.rec[1].msgs, 0);
	assert_int_equal(tp_send(c.rec[1].tp, 0, "x", 1, NULL, 0), -ENOTCONN);
	assert_int_equal(tp_peer_info(c.rec[0].tp, 1, &pi), 0);
	assert_int_equal(pi.state, TP_PEER_JOINING);
	assert_int_equal(pi.incarnation, 0);
	assert_int_equal(tp_peer_info(c.rec[1].tp, 0, &pi), 0);
	assert_int_equal(pi.incarnation, 0);

	/* The refusal is reported, with its reason, and not 10 times a
	 * second although the client retries every 100 ms. */
	tp_stats(c.rec[0].tp, &s0);
	tp_stats(c.rec[1].tp, &s1);
	assert_true(s0.auth_failures >= 3);
	if (ZMQ_ONLY) {
		/* ZAP sees the client's key and names it */
		assert_true(strstr(c.rec[0].all_reasons,
		                   "not a cluster member"));
		assert_true(strstr(s0.last_auth_failure, rogue[1].public_key) ||
		            strstr(c.rec[0].all_reasons, rogue[1].public_key));
	} else {
		/* KK: node 0 only sees that "node 1" lacks node 1's key */
		assert_true(strstr(c.rec[0].all_reasons,
		                   "claiming node 1: its first record does not "
		                   "authenticate"));
	}
	assert_true(c.rec[0].auth >= 1);
	assert_true((uint64_t)c.rec[0].auth < s0.auth_failures);
	assert_true((uint64_t)c.rec[0].auth <= 3 * (dt / 1000 + 1));
	/* And the rogue hears that it was refused. */
	assert_true(s1.auth_failures >= 1);
	assert_true(strstr(c.rec[1].all_reasons,
	                   ZMQ_ONLY ? "refused this node's key"
	                            : "node 0 (tcp://127.0.0.1:"));
	if (!ZMQ_ONLY)
		assert_true(strstr(c.rec[1].all_reasons,
		                   "failed authentication"));
	cluster_close(&c);
}

/* Node 1's membership holds a wrong public key for node 0. That key is
 * both the server key node 1 dials with and the client key it admits, so
 * neither direction works, and each side says why. */
static void auth_wrong_server_key(void **st)
{
	struct cluster c;
	struct tp_peer_cfg bad[MAXN];
	char sec[TP_KEY_LEN + 1];
	struct tp_stats s0, s1;
	(void)st;

	cluster_init(&c, 2, false);
	memcpy(bad, c.peers, sizeof bad);
	assert_int_equal(tp_keypair(bad[0].public_key, sec), 0);
	c.cfg[1].peers = bad;
	cluster_open(&c);
	pump(&c, 1500, never, NULL);

	assert_false(c.rec[0].up[1]);
	assert_false(c.rec[1].up[0]);
	assert_int_equal(c.rec[0].msgs + c.rec[1].msgs, 0);
	assert_int_equal(tp_send(c.rec[0].tp, 1, "x", 1, NULL, 0), -ENOTCONN);
	assert_int_equal(tp_send(c.rec[1].tp, 0, "x", 1, NULL, 0), -ENOTCONN);
	tp_stats(c.rec[0].tp, &s0);
	tp_stats(c.rec[1].tp, &s1);
	assert_true(s0.auth_failures >= 1 && s1.auth_failures >= 1);
	if (ZMQ_ONLY) {
		/* node 1 dialled with the wrong server key */
		assert_true(strstr(c.rec[0].all_reasons, "cryptographic"));
		/* node 0's real key is not in node 1's membership */
		assert_true(strstr(c.rec[1].all_reasons,
		                   "not a cluster member"));
	} else {
		/* each side, as responder and as dialler */
		for (int i = 0; i < 2; i++) {
			assert_true(strstr(c.rec[i].all_reasons,
			                   "its first record does not "
			                   "authenticate"));
			assert_true(strstr(c.rec[i].all_reasons,
			                   "failed authentication"));
		}
	}
	cluster_close(&c);
}

/* A keyed peer that can send but hears nothing back (no one listens at its
 * address): node 0 learns its incarnation, but a one-way link never comes
 * UP — UP needs a message that names node 0's incarnation. */
static void auth_one_way_link_never_up(void **st)
{
	enum { INC0 = 5000, INC1 = 9 };
	struct cluster c;
	struct tp_peer_info pi;
	uint8_t h[32];
	(void)st;

	if (tp_test_kind == TP_KIND_RDMA) {
		/* The raw peer speaks ZeroMQ or tcp records; over RDMA
		 * messages only come through a queue pair its handshake
		 * connected, which the rdma groups' other tests exercise. */
		print_message("not applicable to rdma\n");
		skip();
	}
	cluster_init(&c, 2, false);
	c.cfg[0].incarnation = INC0;
	node_open(&c, 0);
	struct raw raw, *r = &raw;
	raw_open(r, &c, 1, c.sec[1], 0);
	for (int i = 0; i < 10; i++) {
		raw_send(r, h, wire(h, 1, 2, 0, 1, INC1, 0, 0), NULL, 0, NULL, 0);
		pump(&c, 100, never, NULL);
	}
	assert_false(c.rec[0].up[1]);
	assert_int_equal(tp_peer_info(c.rec[0].tp, 1, &pi), 0);
	assert_int_equal(pi.state, TP_PEER_JOINING);
	assert_int_equal(pi.incarnation, INC1);
	assert_int_equal(tp_send(c.rec[0].tp, 1, "x", 1, NULL, 0), -ENOTCONN);
	/* Data that cannot name node 0 is not delivered. */
	raw_send(r, h, wire(h, 1, 1, 0, 1, INC1, 0, 0), NULL, 0, NULL, 0);
	pump(&c, 200, never, NULL);
	assert_int_equal(c.rec[0].msgs, 0);

	/* Once it has heard node 0 (it names INC0), it is UP. */
	raw_send(r, h, wire(h, 1, 2, 0, 1, INC1, INC0, 0), NULL, 0, NULL, 0);
	for (uint64_t end = now_ms() + 3000; !c.rec[0].up[1] && now_ms() < end;)
		pump(&c, 10, NULL, NULL);
	assert_true(c.rec[0].up[1]);
	assert_int_equal(c.rec[0].inc[1], INC1);
	raw_close(r);
	cluster_close(&c);
}

static void auth_plaintext_only_when_both(void **st)
{
	struct cluster c;
	struct tp_stats s0, s1;
	(void)st;

	/* Both plaintext: works, no keys anywhere. */
	cluster_init(&c, 2, true);
	cluster_open(&c);
	assert_true(pump(&c, 3000, all_up, NULL));
	struct want w = { 1, 1 };
	assert_int_equal(tp_send(c.rec[0].tp, 1, "plain", 5, "page", 4), 0);
	assert_true(pump(&c, 2000, got_msgs, &w));
	assert_memory_equal(c.rec[1].last_payload, "page", 4);
	cluster_close(&c);

	/* Node 0 plaintext, node 1 CURVE: nothing passes, both say why. */
	cluster_init(&c, 2, false);
	c.cfg[0].plaintext = true;
	cluster_open(&c);
	pump(&c, 1500, never, NULL);
	assert_false(c.rec[0].up[1]);
	assert_false(c.rec[1].up[0]);
	assert_int_equal(c.rec[0].msgs + c.rec[1].msgs, 0);
	tp_stats(c.rec[0].tp, &s0);
	tp_stats(c.rec[1].tp, &s1);
	assert_true(s0.auth_failures >= 1);
	assert_true(s1.auth_failures >= 1);
	assert_true(strstr(c.rec[0].all_reasons, "mismatch") ||
	            strstr(c.rec[1].all_reasons, "mismatch"));
	cluster_close(&c);
}

/* libzmq 4.3 gives up on a connection whose handshake failed with a
 * protocol error (here: plaintext against CURVE). Once node 1 is fixed
 * and restarted, node 0 must still reach it: tp_zmq.c redials, as
 * tp_tcp.c does after any refusal. */
static void auth_fixed_node_joins_after_refusal(void **st)
{
	struct cluster c;
	struct tp_stats s0;
	(void)st;

	cluster_init(&c, 2, false);
	c.cfg[1].plaintext = true;
	cluster_open(&c);
	pump(&c, 1200, never, NULL);
	assert_false(c.rec[0].up[1]);
	tp_stats(c.rec[0].tp, &s0);
	assert_true(s0.auth_failures >= 1);

	/* Node 1 restarts with the right setting. */
	tp_close(c.rec[1].tp);
	c.rec[1].tp = NULL;
	c.cfg[1].plaintext = false;
	memset(c.rec[1].up, 0, sizeof c.rec[1].up);
	{
		char err[256];
		assert_int_equal(tp_open(&c.rec[1].tp, &c.cfg[1], err,
		                         sizeof err), 0);
	}
	assert_true(pump(&c, 5000, all_up, NULL));
	struct want w = { 1, 1 };
	assert_int_equal(tp_send(c.rec[0].tp, 1, "back", 4, NULL, 0), 0);
	assert_true(pump(&c, 2000, got_msgs, &w));
	cluster_close(&c);
}

/* ---- full: a peer that does not read ---- */

static bool writable_and_drained(struct cluster *c, void *arg)
{
	uint64_t want = *(uint64_t *)arg;
	return c->rec[0].writable[1] > 0 && c->rec[1].msgs >= want;
}

static void full_queue_is_eagain(void **st)
{
	struct cluster c;
	uint8_t *page = calloc(1, TP_DEFAULT_PAYLOAD);
	uint64_t sent = 0, worst_us = 0;
	struct timespec a, b;
	int rc = 0;
	(void)st;

	cluster_init(&c, 2, false);
	for (int i = 0; i < 2; i++) {
		c.cfg[i].queue_limit = 4;
		c.cfg[i].dead_after_ms = 10000;
	}
	cluster_open(&c);
	c.rec[1].fifo = false;
	assert_true(pump(&c, 3000, all_up, NULL));

	/* Node 1 stops reading; node 0 fills its queue, the socket buffers
	 * and node 1's queue. tp_send never blocks: it says -EAGAIN, and
	 * after node 0 has run its loop for a while it still does. */
	uint64_t eagain_since = 0;
	while (sent < 100000) {
		uint64_t n = sent;
		clock_gettime(CLOCK_MONOTONIC, &a);
		rc = tp_send(c.rec[0].tp, 1, &n, 8, page, TP_DEFAULT_PAYLOAD);
		clock_gettime(CLOCK_MONOTONIC, &b);
		uint64_t us = (uint64_t)(b.tv_sec - a.tv_sec) * 1000000u +
		              (uint64_t)(b.tv_nsec - a.tv_nsec) / 1000;
		if (us > worst_us)
			worst_us = us;
		if (rc == 0) {
			sent++;
			eagain_since = 0;
			continue;
		}
		assert_int_equal(rc, -EAGAIN);
		if (!eagain_since)
			eagain_since = now_ms();
		else if (now_ms() - eagain_since > 300)
			break;
		pump_mask(&c, 1u << 0, 5, NULL, NULL); /* node 0 only */
	}
	assert_int_equal(rc, -EAGAIN);
	assert_true(sent >= 4 && sent < 100000);
	print_message("queue full after %llu messages of 64 KiB\n",
	              (unsigned long long)sent);
	/* Never blocked: no call took long (a generous bound; inside
	 * tests/vm every instruction is emulated and a vCPU may be off its
	 * core for long, so there it only rules out waiting on the peer). */
	assert_true(worst_us < (getenv("CAPDSM_VM") ? 2000000u : 100000u));
	assert_int_equal(c.rec[1].msgs, 0);
	uint64_t n = sent;
	assert_int_equal(tp_send(c.rec[0].tp, 1, &n, 8, page, 64), -EAGAIN);
	struct tp_stats s;
	tp_stats(c.rec[0].tp, &s);
	assert_true(s.send_full >= 2);

	/* Node 1 reads again: room comes back (on_writable), and every
	 * message accepted arrives, none lost. */
	assert_true(pump(&c, 10000, writable_and_drained, &sent));
	assert_int_equal(c.rec[1].msgs, sent);
	n = sent;
	/* Room is back, though the drain's own bookkeeping may still be on
	 * its way (rdma: the credits of the last messages): at most a few
	 * more rounds of -EAGAIN, never an error. */
	for (uint64_t end = now_ms() + 2000;
	     (rc = tp_send(c.rec[0].tp, 1, &n, 8, page, 64)) == -EAGAIN &&
	     now_ms() < end;)
		pump(&c, 5, NULL, NULL);
	assert_int_equal(rc, 0);
	struct want w = { 1, sent + 1 };
	assert_true(pump(&c, 5000, got_msgs, &w));
	assert_int_equal(c.rec[0].downs[1] + c.rec[1].downs[0], 0);
	cluster_close(&c);
	free(page);
}

/* ---- malformed: a keyed peer that sends garbage ---- */

static bool stats_seen(struct cluster *c, void *arg)
{
	struct tp_stats s;
	uint64_t want = *(uint64_t *)arg;
	tp_stats(c->rec[0].tp, &s);
	return s.drop_malformed + s.drop_oversize + s.drop_spoofed >= want &&
	       c->rec[0].msgs >= 1;
}

static void malformed_frames_dropped(void **st)
{
	if (!ZMQ_ONLY)
		skip(); /* frames are ZeroMQ's; see test_tp_tcp.c's records */

	enum { INC0 = 1000, INC1 = 77 };
	struct cluster c;
	struct raw r;
	uint8_t h[32 + TP_MAX_HDR + 1];
	uint8_t *big = calloc(1, (1u << 20) + 1);
	struct tp_stats s;
	(void)st;

	cluster_init(&c, 3, false);
	c.cfg[0].incarnation = INC0;
	node_open(&c, 0);
	raw_open(&r, &c, 1, c.sec[1], 0);

	/* A valid heartbeat naming node 0's incarnation: node 1 is UP. */
	raw_send(&r, h, wire(h, 1, 2, 0, 1, INC1, INC0, 0), NULL, 0, NULL, 0);
	for (uint64_t end = now_ms() + 3000; !c.rec[0].up[1] && now_ms() < end;)
		pump(&c, 10, NULL, NULL);
	assert_true(c.rec[0].up[1]);
	assert_int_equal(c.rec[0].inc[1], INC1);

	size_t l = wire(h, 1, 1, 0, 1, INC1, INC0, 0);
	/* malformed: three frames; a short frame; bad version, type, flags,
	 * reserved byte; src self, out of range; src_inc 0; a heartbeat with
	 * a payload or a header */
	raw_send(&r, h, l, "a", 1, "b", 1);
	raw_send(&r, "short", 5, NULL, 0, NULL, 0);
	raw_send(&r, h, wire(h, 9, 1, 0, 1, INC1, INC0, 0), NULL, 0, NULL, 0);
	raw_send(&r, h, wire(h, 1, 7, 0, 1, INC1, INC0, 0), NULL, 0, NULL, 0);
	raw_send(&r, h, wire(h, 1, 1, 4, 1, INC1, INC0, 0), NULL, 0, NULL, 0);
	wire(h, 1, 1, 0, 1, INC1, INC0, 0);
	h[3] = 1;
	raw_send(&r, h, 32, NULL, 0, NULL, 0);
	raw_send(&r, h, wire(h, 1, 1, 0, 0, INC1, INC0, 0), NULL, 0, NULL, 0);
	raw_send(&r, h, wire(h, 1, 1, 0, 9, INC1, INC0, 0), NULL, 0, NULL, 0);
	raw_send(&r, h, wire(h, 1, 1, 0, 1, 0, INC0, 0), NULL, 0, NULL, 0);
	raw_send(&r, h, wire(h, 1, 2, 0, 1, INC1, INC0, 0), "p", 1, NULL, 0);
	raw_send(&r, h, wire(h, 1, 2, 0, 1, INC1, INC0, 0) + 4, NULL, 0, NULL,
	         0);
	uint64_t n_malformed = 11;
	/* spoofed: node 1's key claiming node 2 */
	raw_send(&r, h, wire(h, 1, 1, 0, 2, INC1, INC0, 0), NULL, 0, NULL, 0);
	/* oversize: a header one byte too long, a payload one byte too long */
	raw_send(&r, h, wire(h, 1, 1, 0, 1, INC1, INC0, 0) + TP_MAX_HDR + 1,
	         NULL, 0, NULL, 0);
	raw_send(&r, h, wire(h, 1, 1, 0, 1, INC1, INC0, 0), big,
	         TP_DEFAULT_PAYLOAD + 1, NULL, 0);
	/* and then a good message, which must arrive, as seq 0 */
	wire(h, 1, 1, 0, 1, INC1, INC0, 0);
	memcpy(h + 32, "fine", 4);
	raw_send(&r, h, 36, NULL, 0, NULL, 0);

	uint64_t want = n_malformed + 3;
	assert_true(pump(&c, 5000, stats_seen, &want));
	tp_stats(c.rec[0].tp, &s);
	assert_int_equal(s.drop_malformed, n_malformed);
	assert_int_equal(s.drop_spoofed, 1);
	assert_int_equal(s.drop_oversize, 2);
	assert_int_equal(s.msgs_recv, 1);
	assert_int_equal(c.rec[0].last_hdrlen, 4);
	assert_memory_equal(c.rec[0].last_hdr, "fine", 4);
	assert_int_equal(s.broken, 0);
	assert_int_equal(c.rec[0].downs[1], 0);

	/* A frame beyond ZMQ_MAXMSGSIZE: libzmq drops the connection before
	 * allocating it; the node carries on, and after the reconnect the
	 * next message in sequence still arrives. */
	raw_send(&r, h, wire(h, 1, 1, 0, 1, INC1, INC0, 1), big, 1u << 20,
	         NULL, 0);
	pump(&c, 400, NULL, NULL);
	wire(h, 1, 1, 0, 1, INC1, INC0, 1);
	memcpy(h + 32, "again", 5);
	raw_send(&r, h, 37, NULL, 0, NULL, 0);
	struct want w = { 0, 2 };
	assert_true(pump(&c, 5000, got_msgs, &w));
	assert_memory_equal(c.rec[0].last_hdr, "again", 5);
	tp_stats(c.rec[0].tp, &s);
	assert_int_equal(s.broken, 0);
	assert_int_equal(c.rec[0].downs[1], 0);

	/* A gap in the sequence is a lost message: the channel is BROKEN,
	 * the peer DOWN, and nothing after the gap is delivered. */
	wire(h, 1, 1, 0, 1, INC1, INC0, 5);
	raw_send(&r, h, 32, NULL, 0, NULL, 0);
	for (uint64_t end = now_ms() + 3000;
	     !c.rec[0].downs[1] && now_ms() < end;)
		pump(&c, 10, NULL, NULL);
	assert_int_equal(c.rec[0].downs[1], 1);
	assert_int_equal(c.rec[0].why[1], TP_DOWN_BROKEN);
	assert_int_equal(c.rec[0].msgs, 2);
	assert_int_equal(tp_send(c.rec[0].tp, 1, "x", 1, NULL, 0), -EHOSTDOWN);

	raw_close(&r);
	cluster_close(&c);
	free(big);
}

/* ---- crash: forked nodes, SIGKILL, restart, stall ---- */

static void crash_sigkill_then_restart(void **st)
{
	enum { HB = 50, DEAD = 400 };
	struct cluster c;
	int status, one = 1, two = 2;
	(void)st;

	cluster_init(&c, 2, false);
	for (int i = 0; i < 2; i++) {
		c.cfg[i].heartbeat_ms = HB;
		c.cfg[i].dead_after_ms = DEAD;
	}
	pid_t pid = spawn(&c, 1);
	node_open(&c, 0);
	assert_true(pump(&c, 5000, up1, &one));
	uint64_t inc1 = c.rec[0].inc[1];

	struct want w = { 0, 1 };
	assert_int_equal(tp_send(c.rec[0].tp, 1, "ping", 4, "page", 4), 0);
	assert_true(pump(&c, 3000, got_msgs, &w));
	assert_memory_equal(c.rec[0].last_hdr, "ping", 4);

	/* SIGKILL: reported DOWN within dead_after + heartbeat (+ slack for
	 * this noisy 2-core machine), never before the silence is long. */
	assert_int_equal(kill(pid, SIGKILL), 0);
	uint64_t t0 = now_ms();
	/* Sends meanwhile are queued or refused, never a hang. */
	assert_true(tp_send(c.rec[0].tp, 1, "late", 4, NULL, 0) >= -EAGAIN);
	assert_true(pump(&c, 5000, down1, &one));
	uint64_t dt = now_ms() - t0;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_int_equal(c.rec[0].why[1], TP_DOWN_TIMEOUT);
	assert_int_equal(c.rec[0].inc[1], inc1);
	if (dt > DEAD + HB + 250 || dt + HB < DEAD)
		fail_msg("down after %llu ms, want %u..%u",
		         (unsigned long long)dt, DEAD - HB, DEAD + HB + 250);
	print_message("SIGKILL reported after %llu ms (dead_after %u, "
	              "heartbeat %u)\n", (unsigned long long)dt, DEAD, HB);
	assert_int_equal(tp_send(c.rec[0].tp, 1, "x", 1, NULL, 0), -EHOSTDOWN);
	assert_false(tp_peer_alive(c.rec[0].tp, 1));

	/* A restart is a new incarnation: UP again, and traffic flows. */
	pid = spawn(&c, 1);
	assert_true(pump(&c, 5000, up1, &two));
	assert_true(c.rec[0].inc[1] > inc1);
	assert_int_equal(c.rec[0].downs[1], 1); /* T3: down once */
	w.msgs = 2;
	assert_int_equal(tp_send(c.rec[0].tp, 1, "pong", 4, NULL, 0), 0);
	assert_true(pump(&c, 3000, got_msgs, &w));
	assert_memory_equal(c.rec[0].last_hdr, "pong", 4);

	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	cluster_close(&c);
}

/* A node that stalls past dead_after is DOWN for the others; when it runs
 * again it learns it was evicted (its process exits 3 here), and the
 * others never take the old incarnation back. */
static void crash_stalled_node_evicted(void **st)
{
	enum { HB = 50, DEAD = 300 };
	struct cluster c;
	int status = 0, one = 1;
	struct tp_stats s;
	(void)st;

	cluster_init(&c, 2, false);
	for (int i = 0; i < 2; i++) {
		c.cfg[i].heartbeat_ms = HB;
		c.cfg[i].dead_after_ms = DEAD;
	}
	pid_t pid = spawn(&c, 1);
	node_open(&c, 0);
	assert_true(pump(&c, 5000, up1, &one));

	assert_int_equal(kill(pid, SIGSTOP), 0);
	assert_true(pump(&c, 3000, down1, &one));
	assert_int_equal(c.rec[0].why[1], TP_DOWN_TIMEOUT);
	assert_int_equal(kill(pid, SIGCONT), 0);

	pid_t got = 0;
	for (uint64_t end = now_ms() + 5000; got == 0 && now_ms() < end;) {
		pump(&c, 20, NULL, NULL);
		got = waitpid(pid, &status, WNOHANG);
	}
	if (got != pid) {
		kill(pid, SIGKILL);
		waitpid(pid, &status, 0);
		fail_msg("the stalled node did not learn it was evicted");
	}
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 3);
	assert_int_equal(c.rec[0].ups[1], 1);
	assert_int_equal(c.rec[0].downs[1], 1);
	tp_stats(c.rec[0].tp, &s);
	assert_true(s.drop_stale > 0); /* its heartbeats after resuming */
	cluster_close(&c);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(config_refusals),
		cmocka_unit_test(basic_send_recv),
		cmocka_unit_test(fifo_100k_under_load),
		cmocka_unit_test(a2a_four_nodes),
		cmocka_unit_test(auth_unknown_key_refused),
		cmocka_unit_test(auth_wrong_server_key),
		cmocka_unit_test(auth_one_way_link_never_up),
		cmocka_unit_test(auth_plaintext_only_when_both),
		cmocka_unit_test(auth_fixed_node_joins_after_refusal),
		cmocka_unit_test(full_queue_is_eagain),
		cmocka_unit_test(malformed_frames_dropped),
		cmocka_unit_test(crash_sigkill_then_restart),
		cmocka_unit_test(crash_stalled_node_evicted),
	};
	signal(SIGPIPE, SIG_IGN);
	if (argc < 2 || tp_kind_parse(argv[1], &tp_test_kind)) {
		fprintf(stderr, "usage: %s zmq|tcp|rdma [cmocka filter]\n",
		        argv[0]);
		return 2;
	}
	if (argc > 2)
		cmocka_set_test_filter(argv[2]);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
