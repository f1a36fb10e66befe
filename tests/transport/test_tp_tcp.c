/* test_tp_tcp.c — what only the TCP transport (node/tp_tcp.c) has: its
 * handshake against impostors, plaintext peers, replays and hostile
 * clients; its records against malformed, spoofed, oversize and tampered
 * input (on the wire too, through a byte-flipping proxy); and its rings
 * with large payloads. Real sockets on 127.0.0.1 only, every wait
 * bounded; argv[1] picks a group ("records_*"). The contract (T1-T5,
 * crashes and restarts included) is test_transport.c's, run with "tcp". */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "tp_test.h"

enum { INC0 = 1000, INC1 = 77 };

static void wait_closed(struct cluster *c, struct rawtcp *r)
{
	for (uint64_t end = now_ms() + 3000; now_ms() < end;) {
		pump(c, 5, NULL, NULL);
		if (rawtcp_closed(r))
			return;
	}
	fail_msg("the node did not close the connection");
}

/* A transport header from node 1's incarnation INC1 to node 0's INC0
 * (src may claim another node). */
static const uint8_t *from1(uint8_t *h, uint8_t type, uint32_t src,
                            uint64_t seq)
{
	wire(h, 1, type, 0, src, INC1, INC0, seq);
	return h;
}

/* Node 0 alone (incarnation INC0), and a raw peer playing node 1 that has
 * come UP (its heartbeat named INC0). */
static void up_with_raw(struct cluster *c, uint32_t n, bool plaintext,
                        struct rawtcp *r)
{
	uint8_t h[32];

	cluster_init(c, n, plaintext);
	c->cfg[0].incarnation = INC0;
	node_open(c, 0);
	assert_int_equal(rawtcp_open(r, c, 1, plaintext ? NULL : c->sec[1], 0),
	                 0);
	rawtcp_msg(r, from1(h, 2, 1, 0), NULL, 0,
	           NULL, 0);
	for (uint64_t end = now_ms() + 3000; !c->rec[0].up[1] && now_ms() < end;)
		pump(c, 5, NULL, NULL);
	assert_true(c->rec[0].up[1]);
	assert_int_equal(c->rec[0].inc[1], INC1);
}

/* ---- handshake ---- */

/* A member's key does not make another member: "node 1" holding node 2's
 * key, or a key of no member, is refused, and nothing it sends arrives. */
static void handshake_impostor_refused(void **st)
{
	struct cluster c;
	struct rawtcp r;
	struct tp_stats s;
	struct tp_peer_info pi;
	char pub[TP_KEY_LEN + 1], stranger[TP_KEY_LEN + 1];
	uint8_t h[32];
	(void)st;

	cluster_init(&c, 3, false);
	c.cfg[0].incarnation = INC0;
	node_open(&c, 0);
	assert_int_equal(tp_keypair(pub, stranger), 0);
	const char *wrong[] = { c.sec[2], stranger };
	for (int k = 0; k < 2; k++) {
		assert_int_equal(rawtcp_open(&r, &c, 1, wrong[k], 0), -2);
		/* it goes on as if accepted */
		rawtcp_msg(&r, from1(h, 2, 1, 0), NULL,
		           0, NULL, 0);
		rawtcp_msg(&r, from1(h, 1, 1, 0), "x",
		           1, NULL, 0);
		wait_closed(&c, &r);
		rawtcp_close(&r);
	}
	pump(&c, 100, never, NULL);
	tp_stats(c.rec[0].tp, &s);
	assert_int_equal(s.auth_failures, 2);
	assert_int_equal(c.rec[0].auth, 1); /* the same reason, rate-limited */
	assert_non_null(strstr(c.rec[0].auth_reason,
	                       "claiming node 1: its first record does not "
	                       "authenticate"));
	assert_int_equal(c.rec[0].msgs, 0);
	assert_int_equal(s.hb_recv, 0);
	assert_int_equal(tp_peer_info(c.rec[0].tp, 1, &pi), 0);
	assert_int_equal(pi.state, TP_PEER_JOINING);
	assert_int_equal(pi.incarnation, 0);

	/* The right key is let in. */
	assert_int_equal(rawtcp_open(&r, &c, 1, c.sec[1], 0), 0);
	rawtcp_msg(&r, from1(h, 2, 1, 0), NULL, 0,
	           NULL, 0);
	for (uint64_t end = now_ms() + 3000; !c.rec[0].up[1] && now_ms() < end;)
		pump(&c, 5, NULL, NULL);
	assert_true(c.rec[0].up[1]);
	rawtcp_close(&r);
	cluster_close(&c);
}

/* Plaintext and keys never meet, whichever side dials; the refusal says
 * why on both sides. */
static void handshake_plaintext_vs_keyed(void **st)
{
	struct cluster c;
	struct rawtcp r;
	struct tp_stats s;
	(void)st;

	cluster_init(&c, 2, false);
	node_open(&c, 0);
	assert_int_equal(rawtcp_open(&r, &c, 1, NULL, 0), 1 /* mode */);
	rawtcp_close(&r);
	tp_stats(c.rec[0].tp, &s);
	assert_int_equal(s.auth_failures, 1);
	assert_non_null(strstr(c.rec[0].auth_reason, "mode mismatch"));
	cluster_close(&c);

	cluster_init(&c, 2, true);
	node_open(&c, 0);
	/* A keyed dialler: the plaintext node reads all of msg1 first, so
	 * its refusal arrives rather than a reset. */
	char pub[TP_KEY_LEN + 1], sec[TP_KEY_LEN + 1];
	assert_int_equal(tp_keypair(pub, sec), 0);
	assert_int_equal(rawtcp_open(&r, &c, 1, sec, 0), 1);
	rawtcp_close(&r);
	tp_stats(c.rec[0].tp, &s);
	assert_int_equal(s.auth_failures, 1);

	/* Two real nodes, one of each: never UP, both say why. */
	struct tp_peer_cfg keyed[MAXN];
	memcpy(keyed, c.peers, sizeof keyed);
	assert_int_equal(tp_keypair(keyed[0].public_key, sec), 0);
	assert_int_equal(tp_keypair(keyed[1].public_key, c.cfg[1].secret_key),
	                 0);
	c.cfg[1].peers = keyed;
	c.cfg[1].plaintext = false;
	node_open(&c, 1);
	pump(&c, 1200, never, NULL);
	assert_false(c.rec[0].up[1] || c.rec[1].up[0]);
	for (int i = 0; i < 2; i++) {
		assert_non_null(strstr(c.rec[i].all_reasons, "mode mismatch"));
		assert_int_equal(c.rec[i].msgs, 0);
	}
	cluster_close(&c);
}

/* Claims the membership cannot back: an unknown id, the node's own id,
 * and a dialler whose membership has the wrong address for a node. */
static void handshake_claims_refused(void **st)
{
	struct cluster c;
	struct rawtcp r;
	struct tp_peer_cfg swapped[MAXN];
	(void)st;

	cluster_init(&c, 3, false);
	node_open(&c, 0);
	assert_int_equal(rawtcp_open(&r, &c, 9, c.sec[1], 0), 2);
	rawtcp_close(&r);
	assert_non_null(strstr(c.rec[0].auth_reason,
	                       "claiming node 9: not a cluster member"));
	assert_int_equal(rawtcp_open(&r, &c, 0, c.sec[0], 0), 2);
	rawtcp_close(&r);
	assert_non_null(strstr(c.rec[0].auth_reason, "this node's own id"));
	cluster_close(&c);

	/* Node 1 believes node 0 and node 2 live at each other's address. */
	cluster_init(&c, 3, false);
	memcpy(swapped, c.peers, sizeof swapped);
	memcpy(swapped[0].address, c.peers[2].address, TP_ADDR_LEN);
	memcpy(swapped[2].address, c.peers[0].address, TP_ADDR_LEN);
	c.cfg[1].peers = swapped;
	cluster_open(&c);
	pump(&c, 1200, never, NULL);
	assert_non_null(strstr(c.rec[2].all_reasons,
	                       "it dialled node 0, this is node 2"));
	assert_non_null(strstr(c.rec[1].all_reasons,
	                       "it is not the node this address names"));
	assert_false(c.rec[1].up[0] || c.rec[1].up[2]);
	assert_true(c.rec[0].up[2] && c.rec[2].up[0]); /* they are fine */
	cluster_close(&c);
}

/* A recorded session (handshake and records) replayed byte for byte on a
 * new connection: R's fresh ephemeral makes new keys, so the recorded
 * hello does not authenticate and the recorded records never count. */
static void handshake_replay_refused(void **st)
{
	struct cluster c;
	struct rawtcp r;
	struct tp_stats s;
	uint8_t h[32], rec[256], script[512];
	size_t len, slen;
	(void)st;

	up_with_raw(&c, 2, false, &r);
	memcpy(script, r.sent, r.nsent);
	slen = r.nsent;
	/* the heartbeat of up_with_raw is not recorded: data seq 0 is */
	uint8_t body[64];
	memcpy(body, h, wire(h, 1, 1, 0, 1, INC1, INC0, 0));
	memset(body + 32, 0, 4);
	body[32] = 3;
	memcpy(body + 36, "one", 3);
	len = rawtcp_seal(&r, rec, body, 39);
	rawtcp_bytes(&r, rec, len);
	memcpy(script + slen, rec, len);
	slen += len;
	struct want w = { 0, 1 };
	assert_true(pump(&c, 2000, got_msgs, &w));

	struct rawtcp replay = { .fd = rawtcp_connect(&c, 0) };
	rawtcp_bytes(&replay, script, slen);
	wait_closed(&c, &replay);
	rawtcp_close(&replay);
	tp_stats(c.rec[0].tp, &s);
	assert_int_equal(s.auth_failures, 1);
	assert_non_null(strstr(c.rec[0].auth_reason, "does not authenticate"));
	assert_int_equal(c.rec[0].msgs, 1);

	/* The real connection was not disturbed: seq 1 arrives. */
	rawtcp_msg(&r, from1(h, 1, 1, 1), "two", 3,
	           NULL, 0);
	w.msgs = 2;
	assert_true(pump(&c, 2000, got_msgs, &w));
	assert_memory_equal(c.rec[0].last_hdr, "two", 3);
	assert_int_equal(c.rec[0].downs[1], 0);
	rawtcp_close(&r);
	cluster_close(&c);
}

/* ---- hostile clients ---- */

static bool reason_seen(struct cluster *c, void *arg)
{
	return strstr(c->rec[0].all_reasons, arg) != NULL;
}

/* Garbage, truncated handshakes, silence and a flood of connections, all
 * while nodes 0 and 1 keep talking: every one is counted and closed, none
 * disturbs the real channel. */
static void hostile_clients_counted(void **st)
{
	enum { FLOOD = 12 };
	struct cluster c;
	struct rawtcp g[FLOOD + 4];
	struct tp_stats s;
	uint8_t junk[64], m1[56];
	(void)st;

	cluster_init(&c, 2, false);
	cluster_open(&c);
	assert_true(pump(&c, 3000, all_up, NULL));
	for (size_t i = 0; i < sizeof junk; i++)
		junk[i] = (uint8_t)(i * 37 + 11);

	/* garbage */
	g[0].fd = rawtcp_connect(&c, 0);
	rawtcp_bytes(&g[0], junk, sizeof junk);
	wait_closed(&c, &g[0]);
	assert_true(reason_seen(&c, "not a capdsm tcp handshake"));
	/* a third of a header, then gone */
	g[1].fd = rawtcp_connect(&c, 0);
	rawtcp_bytes(&g[1], "capdsmtp\1\1", 10);
	rawtcp_close(&g[1]);
	assert_true(pump(&c, 2000, reason_seen,
	                 "closed during the handshake"));
	/* a whole msg1 (keyed, "node 1"), then gone before msg3 */
	memset(m1, 0, sizeof m1);
	memcpy(m1, "capdsmtp", 8);
	m1[8] = 1;
	m1[9] = 1;
	m1[12] = 1;
	randombytes_buf(m1 + 24, 32);
	g[2].fd = rawtcp_connect(&c, 0);
	rawtcp_bytes(&g[2], m1, sizeof m1);
	pump(&c, 50, NULL, NULL);
	rawtcp_close(&g[2]);
	/* an all-zero ephemeral key: a low-order point */
	memset(m1 + 24, 0, 32);
	g[3].fd = rawtcp_connect(&c, 0);
	rawtcp_bytes(&g[3], m1, sizeof m1);
	wait_closed(&c, &g[3]);
	assert_true(reason_seen(&c, "low-order"));

	/* a flood of silent connections: the oldest handshakes give way,
	 * and the silent rest time out (hs: dead_after_ms, 1 s here) */
	tp_stats(c.rec[0].tp, &s);
	uint64_t before = s.auth_failures;
	for (int i = 0; i < FLOOD; i++)
		g[4 + i].fd = rawtcp_connect(&c, 0);
	assert_true(pump(&c, 3000, reason_seen, "connections at once"));
	assert_true(pump(&c, 3000, reason_seen, "did not complete its "
	                                        "handshake within 1000 ms"));
	for (int i = 0; i < FLOOD; i++) {
		wait_closed(&c, &g[4 + i]);
		rawtcp_close(&g[4 + i]);
	}
	tp_stats(c.rec[0].tp, &s);
	assert_true(s.auth_failures - before >= FLOOD);
	assert_true(s.auth_failures >= 4 + FLOOD);
	rawtcp_close(&g[0]);
	rawtcp_close(&g[3]);

	/* Nodes 0 and 1 never noticed. */
	struct want w = { 1, 1 };
	assert_int_equal(tp_send(c.rec[0].tp, 1, "still", 5, NULL, 0), 0);
	assert_true(pump(&c, 2000, got_msgs, &w));
	w = (struct want){ 0, 1 };
	assert_int_equal(tp_send(c.rec[1].tp, 0, "here", 4, NULL, 0), 0);
	assert_true(pump(&c, 2000, got_msgs, &w));
	assert_int_equal(c.rec[0].downs[1] + c.rec[1].downs[0], 0);
	assert_int_equal(c.rec[0].ups[1], 1);
	tp_stats(c.rec[1].tp, &s);
	assert_int_equal(s.auth_failures, 0);
	cluster_close(&c);
}

/* ---- records ---- */

static void reopen(struct cluster *c, struct rawtcp *r, const char *sec)
{
	rawtcp_close(r);
	assert_int_equal(rawtcp_open(r, c, 1, sec, 0), 0);
}

/* Every bad record closes its connection (C2) and is counted in its
 * drop counter; the peer stays UP and the next good message is seq 0. */
static void records_malformed_close(void **st)
{
	struct cluster c;
	struct rawtcp r;
	struct tp_stats s;
	uint8_t *b = calloc(1, 36 + TP_DEFAULT_PAYLOAD + 1);
	uint8_t h[32];
	(void)st;

	assert_non_null(b);
	up_with_raw(&c, 3, false, &r);

	/* malformed: a body shorter than a header; a header length past the
	 * body; bad version, type, flags, reserved byte; src self, out of
	 * range; src_inc 0; a heartbeat with a header */
	struct {
		uint8_t ver, type, flags;
		uint32_t src;
		uint64_t inc;
		uint32_t hdrlen, blen;
		bool reserved;
	} bad[] = {
		{ 1, 1, 0, 1, INC1, 0, 10, false },
		{ 1, 1, 0, 1, INC1, 100, 46, false },
		{ 9, 1, 0, 1, INC1, 0, 36, false },
		{ 1, 7, 0, 1, INC1, 0, 36, false },
		{ 1, 1, 4, 1, INC1, 0, 36, false },
		{ 1, 1, 0, 1, INC1, 0, 36, true },
		{ 1, 1, 0, 0, INC1, 0, 36, false },
		{ 1, 1, 0, 9, INC1, 0, 36, false },
		{ 1, 1, 0, 1, 0, 0, 36, false },
		{ 1, 2, 0, 1, INC1, 4, 40, false },
	};
	size_t nbad = sizeof bad / sizeof bad[0];
	for (size_t i = 0; i < nbad; i++) {
		wire(b, bad[i].ver, bad[i].type, bad[i].flags, bad[i].src,
		     bad[i].inc, INC0, 0);
		b[3] = bad[i].reserved;
		memset(b + 32, 0, 4);
		b[32] = (uint8_t)bad[i].hdrlen;
		rawtcp_record(&r, b, bad[i].blen);
		wait_closed(&c, &r);
		reopen(&c, &r, c.sec[1]);
	}
	/* spoofed: node 1's connection claiming node 2 */
	rawtcp_msg(&r, from1(h, 1, 2, 0), NULL, 0,
	           NULL, 0);
	wait_closed(&c, &r);
	reopen(&c, &r, c.sec[1]);
	/* oversize: a header one byte too long, a payload one byte too long,
	 * a length no record can have */
	rawtcp_msg(&r, from1(h, 1, 1, 0), b,
	           TP_MAX_HDR + 1, NULL, 0);
	wait_closed(&c, &r);
	reopen(&c, &r, c.sec[1]);
	rawtcp_msg(&r, from1(h, 1, 1, 0), NULL, 0, b,
	           TP_DEFAULT_PAYLOAD + 1);
	wait_closed(&c, &r);
	reopen(&c, &r, c.sec[1]);
	rawtcp_bytes(&r, "\xff\xff\xff\x7f", 4);
	wait_closed(&c, &r);
	reopen(&c, &r, c.sec[1]);

	/* and then a good message, which must arrive, as seq 0 */
	rawtcp_msg(&r, from1(h, 1, 1, 0), "fine", 4,
	           NULL, 0);
	struct want w = { 0, 1 };
	assert_true(pump(&c, 2000, got_msgs, &w));
	tp_stats(c.rec[0].tp, &s);
	assert_int_equal(s.drop_malformed, nbad);
	assert_int_equal(s.drop_spoofed, 1);
	assert_int_equal(s.drop_oversize, 3);
	assert_int_equal(s.msgs_recv, 1);
	assert_memory_equal(c.rec[0].last_hdr, "fine", 4);
	assert_int_equal(s.broken + s.auth_failures, 0);
	assert_int_equal(c.rec[0].downs[1], 0);
	rawtcp_close(&r);
	cluster_close(&c);
	free(b);
}

/* Plaintext: the same framing without the crypto; origin is still the
 * id the handshake named. */
static void records_plaintext(void **st)
{
	struct cluster c;
	struct rawtcp r;
	struct tp_stats s;
	uint8_t h[32];
	(void)st;

	up_with_raw(&c, 3, true, &r);
	rawtcp_msg(&r, from1(h, 1, 1, 0), "plain", 5,
	           "page", 4);
	struct want w = { 0, 1 };
	assert_true(pump(&c, 2000, got_msgs, &w));
	assert_memory_equal(c.rec[0].last_hdr, "plain", 5);
	assert_memory_equal(c.rec[0].last_payload, "page", 4);
	rawtcp_msg(&r, from1(h, 1, 2, 1), "x", 1,
	           NULL, 0);
	wait_closed(&c, &r);
	tp_stats(c.rec[0].tp, &s);
	assert_int_equal(s.drop_spoofed, 1);
	assert_int_equal(c.rec[0].msgs, 1);
	rawtcp_close(&r);
	cluster_close(&c);
}

/* One changed byte in a record: it fails to decrypt, its connection is
 * closed, it is not delivered, and the loss shows as a sequence gap on
 * the next connection (T1: BROKEN, never a silent skip). */
static void records_tampered_byte(void **st)
{
	struct cluster c;
	struct rawtcp r;
	struct tp_stats s;
	uint8_t h[32], body[64], rec[128];
	(void)st;

	up_with_raw(&c, 2, false, &r);
	rawtcp_msg(&r, from1(h, 1, 1, 0), "zero", 4,
	           NULL, 0);
	struct want w = { 0, 1 };
	assert_true(pump(&c, 2000, got_msgs, &w));

	memcpy(body, h, wire(h, 1, 1, 0, 1, INC1, INC0, 1));
	memset(body + 32, 0, 4);
	body[32] = 8;
	memcpy(body + 36, "tampered", 8);
	size_t len = rawtcp_seal(&r, rec, body, 44);
	rec[4 + 20] ^= 0x01; /* inside the ciphertext of "tampered" */
	rawtcp_bytes(&r, rec, len);
	wait_closed(&c, &r);
	tp_stats(c.rec[0].tp, &s);
	assert_int_equal(s.drop_malformed, 1);
	assert_int_equal(c.rec[0].msgs, 1);
	assert_int_equal(c.rec[0].downs[1], 0);

	/* The sender's next message is seq 2: seq 1 is missing. */
	reopen(&c, &r, c.sec[1]);
	rawtcp_msg(&r, from1(h, 1, 1, 2), "two", 3,
	           NULL, 0);
	int one = 1;
	assert_true(pump(&c, 2000, down1, &one));
	assert_int_equal(c.rec[0].why[1], TP_DOWN_BROKEN);
	assert_int_equal(c.rec[0].msgs, 1);
	assert_memory_equal(c.rec[0].last_hdr, "zero", 4);
	rawtcp_close(&r);
	cluster_close(&c);
}

/* A proxy between node 0 and node 1's address that can flip one byte of
 * what node 0 sends. */
struct proxy {
	int lfd, a, b;
	uint16_t to_port;
	uint64_t a2b;   /* bytes forwarded a -> b on this connection */
	int64_t flip;   /* a -> b offset to flip, -1 none */
	int conns;
};

static void proxy_open(struct proxy *p, uint16_t port, uint16_t to_port)
{
	struct sockaddr_in a = { .sin_family = AF_INET,
		                 .sin_port = htons(port),
		                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int one = 1;
	*p = (struct proxy){ .a = -1, .b = -1, .to_port = to_port, .flip = -1 };
	p->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	setsockopt(p->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	assert_int_equal(bind(p->lfd, (struct sockaddr *)&a, sizeof a), 0);
	assert_int_equal(listen(p->lfd, 4), 0);
}

static void proxy_drop(struct proxy *p)
{
	if (p->a >= 0)
		close(p->a);
	if (p->b >= 0)
		close(p->b);
	p->a = p->b = -1;
}

static bool forward(int from, int to, struct proxy *p, bool a2b)
{
	uint8_t buf[65536];
	ssize_t n = recv(from, buf, sizeof buf, MSG_DONTWAIT);
	if (n < 0)
		return errno == EAGAIN;
	if (n == 0)
		return false;
	if (a2b) {
		if (p->flip >= 0 && (uint64_t)p->flip >= p->a2b &&
		    (uint64_t)p->flip < p->a2b + (uint64_t)n) {
			buf[p->flip - (int64_t)p->a2b] ^= 0x40;
			p->flip = -1;
		}
		p->a2b += (uint64_t)n;
	}
	for (ssize_t off = 0; off < n;) {
		ssize_t w = send(to, buf + off, (size_t)(n - off), MSG_NOSIGNAL);
		if (w <= 0)
			return false;
		off += w;
	}
	return true;
}

static void proxy_pump(struct proxy *p)
{
	int fd = accept(p->lfd, NULL, NULL);
	if (fd >= 0) {
		struct sockaddr_in a = { .sin_family = AF_INET,
			                 .sin_port = htons(p->to_port),
			                 .sin_addr.s_addr =
			                         htonl(INADDR_LOOPBACK) };
		proxy_drop(p);
		p->a = fd;
		p->b = socket(AF_INET, SOCK_STREAM, 0);
		assert_int_equal(connect(p->b, (struct sockaddr *)&a, sizeof a),
		                 0);
		p->a2b = 0;
		p->conns++;
	}
	if (p->a >= 0 && (!forward(p->a, p->b, p, true) ||
	                  !forward(p->b, p->a, p, false)))
		proxy_drop(p);
}

static bool pump_proxy(struct cluster *c, struct proxy *p, int timeout_ms,
                       cond_fn cond, void *arg)
{
	for (uint64_t end = now_ms() + (uint64_t)timeout_ms; now_ms() < end;) {
		proxy_pump(p);
		if (pump(c, 1, cond, arg))
			return true;
	}
	return false;
}

static bool node1_lost_node0(struct cluster *c, void *arg)
{
	(void)arg;
	return c->rec[1].downs[0] > 0 && c->rec[0].downs[1] > 0;
}

/* Two real nodes, node 0's records to node 1 passing a proxy that flips
 * one byte of the message "tampered": node 1 never delivers it, and the
 * loss ends the channel both ways (BROKEN at node 1, which then tells
 * node 0 it is dead to it). */
static void records_tampered_on_the_wire(void **st)
{
	struct cluster c;
	struct tp_peer_cfg via[MAXN];
	struct proxy p;
	struct tp_stats s1;
	uint16_t port[1];
	uint8_t page[4096];
	(void)st;

	cluster_init(&c, 2, false);
	free_ports(port, 1);
	proxy_open(&p, port[0],
	           (uint16_t)atoi(strrchr(c.peers[1].address, ':') + 1));
	memcpy(via, c.peers, sizeof via);
	snprintf(via[1].address, sizeof via[1].address, "tcp://127.0.0.1:%u",
	         port[0]);
	c.cfg[0].peers = via;
	cluster_open(&c);
	assert_true(pump_proxy(&c, &p, 3000, all_up, NULL));

	struct want w = { 1, 1 };
	assert_int_equal(tp_send(c.rec[0].tp, 1, "before", 6, NULL, 0), 0);
	assert_true(pump_proxy(&c, &p, 2000, got_msgs, &w));

	memset(page, 0x5a, sizeof page);
	p.flip = (int64_t)p.a2b + 100; /* inside the next record's bytes */
	assert_int_equal(tp_send(c.rec[0].tp, 1, "tampered", 8, page,
	                         sizeof page), 0);
	assert_true(pump_proxy(&c, &p, 5000, node1_lost_node0, NULL));
	assert_int_equal(p.flip, -1);
	assert_int_equal(c.rec[1].msgs, 1);
	assert_memory_equal(c.rec[1].last_hdr, "before", 6);
	assert_int_equal(c.rec[1].why[0], TP_DOWN_BROKEN);
	assert_int_equal(c.rec[0].why[1], TP_DOWN_EVICTED);
	tp_stats(c.rec[1].tp, &s1);
	assert_int_equal(s1.drop_malformed + s1.drop_oversize, 1);
	assert_true(p.conns >= 2); /* node 0 redialled */
	proxy_drop(&p);
	close(p.lfd);
	cluster_close(&c);
}

/* ---- sizes ---- */

struct stream {
	uint32_t sent, n;
	size_t plen;
	uint8_t *buf;
	bool bad;
};

static uint8_t pat(uint32_t k, size_t i)
{
	return (uint8_t)(k * 131 + i * 7 + (i >> 12));
}

/* Sends messages k = s->sent.. of s->plen bytes until -EAGAIN. */
static void stream_fill(struct cluster *c, struct stream *s)
{
	while (s->sent < s->n) {
		for (size_t i = 0; i < s->plen; i++)
			s->buf[i] = pat(s->sent, i);
		int rc = tp_send(c->rec[0].tp, 1, &s->sent, 4, s->buf, s->plen);
		if (rc == -EAGAIN)
			return;
		assert_int_equal(rc, 0);
		s->sent++;
	}
}

static bool stream_step(struct cluster *c, void *arg)
{
	struct stream *s = arg;
	struct rec *r = &c->rec[1];
	if (r->msgs && r->last_plen == s->plen) {
		uint32_t k;
		memcpy(&k, r->last_hdr, 4);
		if (k + 1 != r->msgs)
			s->bad = true;
		for (size_t i = 0; i < s->plen; i += 4093)
			if (r->last_payload[i] != pat(k, i))
				s->bad = true;
	}
	if (c->rec[0].writable[1])
		stream_fill(c, s);
	return r->msgs == s->n;
}

/* The largest payload a config allows (1 MiB here) with a ring capped far
 * below it: the ring still takes one largest record, a second is -EAGAIN
 * until on_writable, and everything arrives intact and in order. Keyed
 * and plaintext. */
static void sizes_large_payload_small_ring(void **st)
{
	enum { MIB = 1 << 20, N = 24 };
	(void)st;

	for (int plain = 0; plain < 2; plain++) {
		struct cluster c;
		struct stream s = { .n = N, .plen = MIB, .buf = malloc(MIB) };
		struct tp_stats st0, st1;
		assert_non_null(s.buf);
		cluster_init(&c, 2, plain);
		for (int i = 0; i < 2; i++) {
			c.cfg[i].max_payload = MIB;
			c.cfg[i].send_buffer = 65536;
			c.cfg[i].dead_after_ms = 5000;
		}
		cluster_open(&c);
		assert_true(pump(&c, 3000, all_up, NULL));

		/* Node 1 not reading: the kernel and the ring fill. */
		stream_fill(&c, &s);
		assert_true(s.sent < N);
		tp_stats(c.rec[0].tp, &st0);
		assert_int_equal(st0.send_full, 1);

		/* Both run: on_writable refills until all N are through. */
		assert_true(pump(&c, 20000, stream_step, &s));
		assert_false(s.bad);
		assert_int_equal(s.sent, N);
		assert_true(c.rec[0].writable[1] >= 1);
		tp_stats(c.rec[1].tp, &st1);
		assert_int_equal(st1.msgs_recv, N);
		assert_int_equal(st1.bytes_recv, (uint64_t)N * (4 + MIB));
		assert_int_equal(st1.drop_malformed + st1.drop_oversize +
		                         st1.broken, 0);

		/* Just over the limit is refused at the sender. */
		assert_int_equal(tp_send(c.rec[0].tp, 1, NULL, 0, s.buf,
		                         MIB + 1), -EMSGSIZE);
		cluster_close(&c);
		free(s.buf);
	}
}

/* With a large queue_limit, send_buffer is what bounds a peer's ring:
 * -EAGAIN comes, nothing is lost, on_writable follows. */
static void sizes_send_buffer_bounds_queue(void **st)
{
	struct cluster c;
	struct stream s = { .n = 100000, .plen = 4000, .buf = malloc(4000) };
	(void)st;

	assert_non_null(s.buf);
	cluster_init(&c, 2, false);
	for (int i = 0; i < 2; i++) {
		c.cfg[i].max_payload = 4096;
		c.cfg[i].queue_limit = 100000;
		c.cfg[i].send_buffer = 16384;
		c.cfg[i].dead_after_ms = 5000;
	}
	cluster_open(&c);
	assert_true(pump(&c, 3000, all_up, NULL));
	stream_fill(&c, &s);
	print_message("ring and kernel took %u messages of 4000 bytes\n",
	              s.sent);
	assert_true(s.sent < s.n);
	uint32_t first = s.sent;
	s.n = first + 2000;
	assert_true(pump(&c, 20000, stream_step, &s));
	assert_false(s.bad);
	assert_int_equal(c.rec[1].msgs, s.n);
	assert_int_equal(c.rec[0].downs[1] + c.rec[1].downs[0], 0);
	cluster_close(&c);
	free(s.buf);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(handshake_impostor_refused),
		cmocka_unit_test(handshake_plaintext_vs_keyed),
		cmocka_unit_test(handshake_claims_refused),
		cmocka_unit_test(handshake_replay_refused),
		cmocka_unit_test(hostile_clients_counted),
		cmocka_unit_test(records_malformed_close),
		cmocka_unit_test(records_plaintext),
		cmocka_unit_test(records_tampered_byte),
		cmocka_unit_test(records_tampered_on_the_wire),
		cmocka_unit_test(sizes_large_payload_small_ring),
		cmocka_unit_test(sizes_send_buffer_bounds_queue),
	};
	signal(SIGPIPE, SIG_IGN);
	tp_test_kind = TP_KIND_TCP;
	if (argc > 1)
		cmocka_set_test_filter(argv[1]);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
