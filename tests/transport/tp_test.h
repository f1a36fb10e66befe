/* tp_test.h — the harness of the transport tests: nodes on 127.0.0.1 with
 * ports picked free by the kernel, callbacks that record what each node
 * saw, bounded pumping loops, forked nodes, and raw peers that speak the
 * wire formats of tp_zmq.c and tp_tcp.c (written from their comments, not
 * from their code). tp_test_kind says which transport a test binary runs.
 */
#ifndef CAPDSM_TESTS_TP_TEST_H
#define CAPDSM_TESTS_TP_TEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <sodium.h>

#include "transport.h"

#define MAXN 5

extern enum tp_kind tp_test_kind;

/* What one node's callbacks saw. */
struct rec {
	struct tp *tp;
	uint64_t msgs, bytes;
	uint64_t from[MAXN];     /* messages per sender */
	uint64_t next[MAXN];     /* next counter expected per sender */
	bool fifo;               /* check headers as (counter, sender) */
	bool fifo_broken;
	bool echo;               /* send every message back (forked nodes) */
	bool up[MAXN];
	uint64_t inc[MAXN];
	int ups[MAXN], downs[MAXN];
	enum tp_down_reason why[MAXN];
	int auth;
	char auth_reason[256];
	char all_reasons[2048];
	int writable[MAXN];
	uint32_t last_from;
	uint8_t last_hdr[TP_MAX_HDR];
	size_t last_hdrlen, last_plen;
	uint8_t *last_payload;   /* payload_cap bytes */
	size_t payload_cap;
};

extern const struct tp_handlers H;

/* A cluster on loopback; cfg[i] is node i's config (tp_test_kind). */
struct cluster {
	uint32_t n;
	struct tp_peer_cfg peers[MAXN];
	char sec[MAXN][TP_KEY_LEN + 1];
	struct tp_config cfg[MAXN];
	struct rec rec[MAXN];
};

uint64_t now_ms(void);
size_t fifo_len(uint64_t counter, size_t max);
uint8_t fifo_byte(uint64_t counter, size_t i);

void free_ports(uint16_t *ports, uint32_t n);
void cluster_init(struct cluster *c, uint32_t n, bool plaintext);
void node_open(struct cluster *c, uint32_t i);
void cluster_open(struct cluster *c);
void cluster_close(struct cluster *c);

typedef bool (*cond_fn)(struct cluster *c, void *arg);
/* Polls every open node of c (those in `mask`, all if 0) until cond holds
 * or timeout_ms pass; sleeps on the nodes' tp_fd between rounds. */
bool pump_mask(struct cluster *c, uint32_t mask, int timeout_ms, cond_fn cond,
               void *arg);
bool pump(struct cluster *c, int timeout_ms, cond_fn cond, void *arg);

bool all_up(struct cluster *c, void *arg);
bool never(struct cluster *c, void *arg);
struct want {
	uint32_t node;
	uint64_t msgs;
};
bool got_msgs(struct cluster *c, void *arg);
bool up1(struct cluster *c, void *arg);   /* node 0 saw node 1 UP n times */
bool down1(struct cluster *c, void *arg); /* node 0 saw node 1 DOWN n times */

/* The 32-byte transport header, as tp_internal.h documents it. */
size_t wire(uint8_t *b, uint8_t version, uint8_t type, uint8_t flags,
            uint32_t src, uint64_t src_inc, uint64_t dst_inc, uint64_t seq);

/* Forks node `id` of c: it echoes every message, exits 3 when a peer
 * evicts it, and lives at most 30 s. */
pid_t spawn(struct cluster *c, uint32_t id);

/* ---- a raw peer of tp_tcp.c ---- */

struct rawtcp {
	int fd;
	bool keyed;
	crypto_secretstream_xchacha20poly1305_state tx;
	uint8_t sent[128];       /* the handshake it sent (msg1, msg3) */
	size_t nsent;
	uint8_t status;          /* msg2's status */
};

/* Dials node `to` of c as node `as`, with secret key `sec` (Z85; NULL for
 * plaintext), pumping c while it waits. Returns 0 once the handshake is
 * done, the refusal's status (> 0), -1 if the connection closed, -2 if
 * the node's hello did not authenticate (msg3 was sent all the same). */
int rawtcp_open(struct rawtcp *r, struct cluster *c, uint32_t as,
                const char *sec, uint32_t to);
/* Connects to node `to` and sends nothing. Returns the descriptor. */
int rawtcp_connect(const struct cluster *c, uint32_t to);
/* Sends a record with this body (sealed if keyed). */
void rawtcp_record(struct rawtcp *r, const void *body, size_t blen);
/* Sends a message: w is a 32-byte header, then the caller's header and
 * payload, framed as tp_tcp.c's body. */
void rawtcp_msg(struct rawtcp *r, const uint8_t *w, const void *hdr,
                size_t hdrlen, const void *payload, size_t plen);
/* Seals a record into out (length field included) without sending it;
 * returns its length. */
size_t rawtcp_seal(struct rawtcp *r, uint8_t *out, const void *body,
                   size_t blen);
void rawtcp_bytes(struct rawtcp *r, const void *b, size_t n);
void rawtcp_close(struct rawtcp *r);
/* true once node `to` closed the raw connection (reads what is left). */
bool rawtcp_closed(struct rawtcp *r);

#endif
