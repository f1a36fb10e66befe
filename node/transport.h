/* transport.h — node-to-node transport: reliable FIFO channels between the
 * daemons of a static cluster, with a failure detector.
 *
 * One logical channel per ordered pair of nodes carries framed messages: a
 * small header (up to TP_MAX_HDR bytes, typically a protobuf-c control
 * message) and an optional payload beside it (a page, up to max_payload
 * bytes), never copied into the caller's header. Two implementations,
 * picked at tp_open by tp_config.kind:
 *  - TP_KIND_ZMQ (tp_zmq.c): ZeroMQ with CURVE. Messages cross ZeroMQ's
 *    I/O thread in each process: about four thread wake-ups per round trip.
 *  - TP_KIND_TCP (tp_tcp.c): plain TCP sockets driven from the caller's
 *    loop (no thread), a Noise-KK-style handshake over the same X25519
 *    keys and libsodium's secretstream (XChaCha20-Poly1305) per direction.
 *    Same contract; a round trip costs raw TCP plus the cipher (measured
 *    on the 2-core machines, 64 B / 4 KiB busy-polled: about 2x raw TCP
 *    keyed, 1.3x plaintext, where ZeroMQ costs about 10x).
 *  - TP_KIND_RDMA (tp_tcp.c + tp_rdma.c): the TCP kind's connections and
 *    keyed handshake as the control channel, whose hello records also
 *    carry each side's queue pair endpoint; every data message and
 *    heartbeat then goes over a reliable-connected queue pair as one RDMA
 *    WRITE WITH IMMEDIATE into a ring of frames the receiver registered
 *    once at tp_open, with credit-based flow control; a closed control
 *    connection destroys its queue pair. What RDMA carries is not
 *    encrypted (the fabric is trusted, as with every RDMA system):
 *    T2's origin holds because a queue pair accepts packets only from
 *    the one remote queue pair its handshake proved, and each peer's
 *    frames sit in a protection domain of their own, so no member can
 *    write another's; "learns nothing" holds for a node that is not on
 *    the fabric.
 * All share the wire header, the incarnations and the failure detector
 * (tp_common.c). Nodes of one cluster must all use the same kind.
 *
 * Contract (the numbers are cited by tp_common.c, tp_zmq.c, tp_tcp.c and
 * tests/transport):
 *  T1. FIFO, no silent loss: between two incarnations (see below) the
 *      receiver delivers data messages exactly in the order they were
 *      accepted by tp_send, with no gap and no duplicate. A lost message
 *      is detected (per-channel sequence numbers) and turns the peer DOWN
 *      (TP_DOWN_BROKEN); it is never skipped silently.
 *  T2. Authenticated origin: with keys (the default) `from` in on_msg is
 *      the node whose secret key completed the handshake, checked against
 *      the static membership (ZeroMQ: by the ZAP handler; TCP: by the
 *      handshake itself) — never a claim inside the message. A node
 *      without a member key cannot connect, and learns nothing: every
 *      message is encrypted.
 *  T3. Crash-stop failure detection: every incarnation of a peer is
 *      reported UP at most once and DOWN at most once, in that order. A
 *      DOWN incarnation never comes back; a restarted peer (a new process,
 *      hence a strictly greater incarnation number) is reported UP as a new
 *      incarnation once it has heard from us. UP needs both directions to
 *      work. Sends to a DOWN peer return -EHOSTDOWN at once. The model is
 *      crash-stop with incarnation numbers as in SWIM (Das, Gupta and
 *      Motivala, 2002); the detector is a heartbeat timeout, "eventually
 *      perfect" only as far as dead_after_ms is longer than any stall.
 *  T4. Bounded and non-blocking: at most queue_limit messages wait per
 *      peer and direction inside the transport (plus the kernel's socket
 *      buffers; TCP: also at most send_buffer bytes). tp_send never blocks
 *      and never drops a data message: it queues it (0) or refuses it with
 *      an error the caller can act on.
 *  T5. tp_fd is level-triggered for the caller: it is readable whenever
 *      tp_poll has work (a message, a handshake to authorise, a heartbeat
 *      or a failure-detector deadline), and tp_poll clears it.
 *
 * Threads: a struct tp is used by one thread at a time (the daemon's event
 * loop); it starts no thread of its own besides ZeroMQ's I/O thread (none
 * with TP_KIND_TCP). It is not fork-safe: a child must not touch its
 * parent's struct tp.
 */
#ifndef CAPDSM_NODE_TRANSPORT_H
#define CAPDSM_NODE_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TP_MAX_HDR 256u             /* bytes of header per message */
#define TP_DEFAULT_PAYLOAD 65536u   /* default and usual max_payload */
#define TP_MAX_PAYLOAD (16u << 20)  /* the largest max_payload accepted */
#define TP_MAX_PEERS 256u           /* nodes in one membership */
#define TP_KEY_LEN 40u              /* a CURVE key in Z85, without NUL */
#define TP_ADDR_LEN 128u

/* Which implementation tp_open builds. Zero is ZeroMQ, so a config that
 * does not say keeps the original transport. */
enum tp_kind {
	TP_KIND_ZMQ = 0, /* tp_zmq.c: ZeroMQ + CURVE */
	TP_KIND_TCP = 1, /* tp_tcp.c: TCP + libsodium, no thread */
	TP_KIND_RDMA = 2, /* tp_tcp.c's handshake + tp_rdma.c's queue pairs */
};

/* One member of the static membership. */
struct tp_peer_cfg {
	uint32_t id;                 /* 0..npeers-1, each exactly once */
	/* "tcp://A.B.C.D:PORT" or "tcp://[v6]:PORT" with a numeric address
	 * (loopback or a network namespace's): never "*" nor a host name,
	 * so no program picks an interface or resolves a name by itself. */
	char address[TP_ADDR_LEN];
	char public_key[TP_KEY_LEN + 1]; /* Z85; may be "" only if plaintext */
};

/* What tp_open needs. Zero fields take the default in brackets. */
struct tp_config {
	enum tp_kind kind;                /* [TP_KIND_ZMQ] */
	uint32_t self;                    /* this node's id */
	uint32_t npeers;                  /* members, self included, <= TP_MAX_PEERS */
	const struct tp_peer_cfg *peers;  /* npeers entries, any order */
	/* This node's CURVE secret key (Z85): an X25519 secret, used by both
	 * kinds. Its public key is derived from it and must equal
	 * peers[self].public_key. Required unless plaintext: a daemon without
	 * a cluster key is refused. */
	char secret_key[TP_KEY_LEN + 1];
	/* Explicit opt-out for benchmarks: no encryption, no authentication
	 * (origin is then a claim: the header's with ZeroMQ, the handshake's
	 * with TCP). Both ends must set it; a keyed node and a plaintext
	 * node never connect. */
	bool plaintext;
	/* This process's incarnation: must grow across restarts of a node
	 * (T3). [CLOCK_REALTIME in microseconds at tp_open] — a daemon that
	 * cannot trust its clock may pass a counter it persists. */
	uint64_t incarnation;
	uint32_t heartbeat_ms;   /* heartbeat period to each peer [100] */
	uint32_t dead_after_ms;  /* silence that makes a peer DOWN [1000];
	                            at least 2 * heartbeat_ms */
	uint32_t max_payload;    /* bytes per payload [65536], both ends alike */
	uint32_t queue_limit;    /* messages queued per peer and direction [1024] */
	uint32_t poll_budget;    /* messages one tp_poll handles at most [256] */
	/* TP_KIND_TCP only: bytes of encrypted records that may wait per
	 * peer for the socket [1 MiB], at most 1 GiB. The ring actually
	 * allocated is the smaller of this and queue_limit largest records,
	 * but never less than one largest record (max_payload + TP_MAX_HDR +
	 * 57 bytes of framing), so every legal message fits. Allocated at
	 * tp_open: the transport never grows under load. */
	uint32_t send_buffer;
	/* TP_KIND_RDMA only: the verbs device ("" or NULL-terminated empty:
	 * the first one found) and the GID index on its port 1 (unless
	 * rdma_gid_set: the first RoCE v2 IPv4-mapped GID). Registered
	 * frames, per peer: to receive, as many largest messages as
	 * send_buffer holds (within 16..1024 and queue_limit); to send,
	 * queue_limit of them, within 32 MiB (the send queue). Each frame is
	 * the largest message rounded up to 64 bytes (4416 bytes for a 4 KiB
	 * payload: with the daemon's queue_limit of 4096, about 19 MiB per
	 * peer). */
	char rdma_device[64];
	bool rdma_gid_set;
	uint32_t rdma_gid_index;
};

/* Why a peer went DOWN (on_peer with up == false). */
enum tp_down_reason {
	TP_DOWN_NONE = 0,
	TP_DOWN_TIMEOUT,   /* nothing arrived for dead_after_ms */
	TP_DOWN_RESTARTED, /* a newer incarnation spoke: the old one is gone;
	                      the new one is JOINING, and UP once it has
	                      heard from this node (one heartbeat exchange) */
	TP_DOWN_EVICTED,   /* it says this node's incarnation is dead to it
	                      (we were too slow); the channel cannot resume */
	TP_DOWN_BROKEN,    /* a sequence gap: a data message was lost */
};

enum tp_peer_state {
	/* No incarnation of it is UP: not heard from yet, or heard from but
	 * it has not heard us yet, or a newer incarnation is joining. Sends
	 * return -ENOTCONN. */
	TP_PEER_JOINING = 0,
	/* A message of it named our incarnation, so both directions work
	 * (a one-way link never comes UP). Sends are queued. */
	TP_PEER_UP,
	/* Its incarnation crash-stopped (T3). Sends return -EHOSTDOWN. */
	TP_PEER_DOWN,
};

/* Callbacks of tp_poll; any may be NULL. They may call tp_send (also to
 * the peer being reported), tp_stats and tp_peer_info, but not tp_poll,
 * tp_run or tp_close. Pointers are valid only during the call, with no
 * alignment guarantee: copy or decode before returning. */
struct tp_handlers {
	/* A data message from `from` (T1, T2). payload is NULL iff plen 0. */
	void (*on_msg)(void *ctx, uint32_t from, const void *hdr,
	               size_t hdrlen, const void *payload, size_t plen);
	/* The failure detector's view changed (T3). On down, `why` says why
	 * and `incarnation` is the incarnation that died. */
	void (*on_peer)(void *ctx, uint32_t peer, bool up, uint64_t incarnation,
	                enum tp_down_reason why);
	/* A connection was refused or failed its handshake: an unknown key, a
	 * wrong server key, plaintext against keys, a client that does not
	 * hold the key of the node it claims to be. One line for the log;
	 * the same reason is repeated at most once a second (every refusal
	 * is still counted in tp_stats). */
	void (*on_auth_fail)(void *ctx, const char *reason);
	/* tp_send to `peer` returned -EAGAIN and its queue has room again. */
	void (*on_writable)(void *ctx, uint32_t peer);
};

struct tp_stats {
	uint64_t msgs_sent, bytes_sent;   /* data messages accepted by tp_send;
	                                     bytes = header + payload */
	uint64_t msgs_recv, bytes_recv;   /* data messages delivered to on_msg */
	uint64_t hb_sent, hb_recv;
	uint64_t hb_dropped;    /* heartbeats not queued: the peer's queue full */
	uint64_t send_full;     /* tp_send calls that returned -EAGAIN */
	uint64_t peers_up, peers_down;    /* on_peer calls of each kind */
	uint64_t broken;        /* channels DOWN for a sequence gap */
	uint64_t auth_failures; /* refused keys and failed handshakes, both ways */
	uint64_t drop_malformed; /* bad frame count, version, type, size, ids;
	                            TCP: also a record that fails to decrypt */
	uint64_t drop_oversize;  /* header > TP_MAX_HDR or payload > max_payload;
	                            TCP: also a record length beyond them */
	uint64_t drop_spoofed;   /* claimed origin differs from the key's */
	uint64_t drop_stale;     /* from a dead incarnation, or to our former one */
	uint64_t stalls;         /* tp_poll gaps > 2 heartbeats: this node
	                            stalled, and judged no one's silence */
	char last_auth_failure[192]; /* the latest reason, "" if none */
};

struct tp_peer_info {
	enum tp_peer_state state;
	uint64_t incarnation;    /* UP/DOWN: that incarnation; JOINING: the
	                            newest heard of, 0 if none */
	uint64_t silent_ms;      /* since anything arrived from it; 0 if never */
	bool connected;          /* our outgoing connection finished a handshake */
	uint64_t sent, received; /* data messages in the current channel */
};

struct tp; /* opaque: one per node, per process */

/* Generates a CURVE key pair as Z85 strings (40 characters and a NUL).
 * Returns 0, or -ENOTSUP if libzmq was built without CURVE. Wraps
 * zmq_curve_keypair (Curve25519 via libsodium; CurveZMQ, ZeroMQ RFC 26). */
int tp_keypair(char pub[TP_KEY_LEN + 1], char sec[TP_KEY_LEN + 1]);

/* Checks cfg, binds peers[self].address and connects to every other member
 * with the implementation cfg->kind names (connections complete in the
 * background; each peer comes UP through on_peer once a heartbeat has gone
 * both ways, typically milliseconds). On success *out owns every resource
 * and tp_close releases them. Returns 0 or a negative errno with one line in
 * err (may be NULL):
 *  -EINVAL  bad kind, membership, address, key or timing; in particular a
 *           missing or malformed key without plaintext ("a daemon without
 *           a cluster key is refused"), or a secret key that is not this
 *           node's;
 *  -ENOTSUP CURVE wanted but libzmq lacks it (TP_KIND_ZMQ), or libsodium
 *           cannot start (TP_KIND_TCP);
 *  -EADDRINUSE / -EADDRNOTAVAIL and other bind errors; -ENOMEM; -EMFILE.
 * The caller's cfg and peers array may be freed after the call. Checks
 * everything before creating anything (seL4's decode-then-act). ZeroMQ:
 * sets up its "Ironhouse" pattern, CURVE both ways, plus a ZAP handler
 * (RFC 27) that admits only the membership's client keys. TCP: allocates
 * every buffer here (rings, receive buffers, connection slots). */
int tp_open(struct tp **out, const struct tp_config *cfg, char *err,
            size_t errlen);

/* Closes every socket without lingering: messages still queued are dropped,
 * which peers see as this incarnation's crash. NULL is allowed. */
void tp_close(struct tp *t);

/* The one descriptor to watch for EPOLLIN, level-triggered (T5). It is an
 * epoll instance gathering the transport's descriptors (ZeroMQ's ZMQ_FD
 * descriptors; or the TCP listening socket and every connection), a
 * timerfd for heartbeats and deadlines, and an eventfd tp_poll raises when
 * it stopped at poll_budget with messages left. ZMQ_FD alone is edge-like (it
 * signals a state change, not "a message is queued": after a wake-up
 * every message must be drained until EAGAIN, and a zmq_send on the socket
 * may consume the signal); tp_poll hides that by always draining or
 * raising the eventfd. Owned by t: do not close it. The one-fd-plus-a-
 * process-call shape is c-ares' (ares_fds/ares_process) and libcurl's
 * multi interface, turned level-triggered so any epoll loop can use it. */
int tp_fd(struct tp *t);

/* Does all pending work without blocking: authorises handshakes (ZAP),
 * receives up to poll_budget messages and calls h->on_msg for each, reports
 * failure-detector changes, handshake refusals and regained room, sends
 * heartbeats when due. Returns the number of callbacks made (0: nothing
 * happened), or a negative errno if ZeroMQ or the system failed (-ETERM,
 * -EFAULT...). A single TCP connection's failure is no error: it is
 * closed, counted and redialled.
 * Must run at least every heartbeat_ms — tp_fd makes sure the caller
 * wakes — and never stall longer than dead_after_ms - heartbeat_ms, or the
 * peers will evict this node (TP_DOWN_EVICTED on their side). A gap of
 * more than 2 * heartbeat_ms between two calls counts as this node's own
 * stall (tp_stats.stalls): silence observed across it declares no peer
 * dead — their dead_after_ms window starts again.
 *
 * Adaptive polling (../shared/notes/machine.md: waking a sleeping thread
 * costs tens of microseconds, a spin costs a core): a daemon awaiting a
 * reply keeps calling epoll_wait(epfd, ..., 0) — which sees tp_fd — and
 * tp_poll for up to poll_us after the last event, then sleeps in
 * epoll_wait(-1); capdsmd's loop does that while it awaits an answer
 * (and after its own clients' events), not after serving a peer. The spin
 * must call sched_yield() between empty polls: with ZeroMQ, messages move
 * through its own I/O thread in each process, which a spin that never
 * yields keeps off a core (on the 2-core machines, median round trips got
 * no better and p99 grew to 8-12 ms); with TCP, the peer that must answer
 * may share the spinner's core. tp_run below is that loop for programs
 * without an event loop. */
int tp_poll(struct tp *t, const struct tp_handlers *h, void *ctx);

/* Milliseconds until tp_poll has timed work (a heartbeat, a failure
 * deadline, a redial), 0 if it has work now. Cannot fail. For callers that
 * compute their own epoll timeout instead of relying on tp_fd's timerfd
 * (as curl_multi_timeout serves libcurl's callers). */
int tp_next_timeout_ms(struct tp *t);

/* A poll-then-sleep helper for tests and benchmarks: calls tp_poll in a
 * loop (yielding between polls) for up to spin_us microseconds, then
 * sleeps on tp_fd; returns as soon as a tp_poll made callbacks (their
 * count), 0 after timeout_ms (-1: no limit) without any, or a negative
 * errno. Spin-then-block is the adaptive waiting of adaptive mutexes and
 * of Linux's busy-poll sockets. */
int tp_run(struct tp *t, const struct tp_handlers *h, void *ctx,
           int timeout_ms, uint32_t spin_us);

/* Queues one data message for `peer`: hdr (hdrlen <= TP_MAX_HDR) and an
 * optional payload (plen <= max_payload; NULL iff 0), both copied before
 * return, in two frames (the payload is not copied into the header). The
 * error model is send(2)'s with MSG_DONTWAIT: never block, say -EAGAIN. 0 means queued, not delivered: if the peer dies first, on_peer
 * says so (T1, T3). Errors, after which nothing was queued:
 *  -EAGAIN     its queue holds queue_limit messages (TCP: or its ring
 *              lacks the bytes, or the connection is being redialled):
 *              retry after on_writable (or any later tp_poll);
 *  -EHOSTDOWN  the peer is DOWN (its current incarnation crashed);
 *  -ENOTCONN   the peer has not been UP yet (JOINING);
 *  -EMSGSIZE   hdrlen or plen too large;
 *  -EINVAL     no such peer, the peer is self, or payload NULL with plen;
 *  other       a ZeroMQ failure (e.g. -ETERM).
 * TCP: a message is encrypted and written at once when nothing waits
 * before it (latency first); the rest of a partial write waits in the
 * peer's ring for the socket. */
int tp_send(struct tp *t, uint32_t peer, const void *hdr, size_t hdrlen,
            const void *payload, size_t plen);

/* Corks (on) and uncorks (off) this node's sends, as TCP_CORK does a
 * socket: between the two, tp_send queues messages and the last uncork
 * writes them, one write per peer, so a burst of small messages (a reader
 * asking for its next pages) costs one system call, not one each. Calls
 * nest (a count); tp_poll corks around its callbacks by itself. A cork
 * that would overflow a peer's queue is written out first, so tp_send
 * fails no more often than without it. With ZeroMQ, whose I/O thread
 * batches by itself, it does nothing. Cannot fail. */
void tp_cork(struct tp *t, bool on);

/* true iff the peer is UP (its current incarnation, both directions
 * proven). Cannot fail: false for an unknown id and for self. */
bool tp_peer_alive(struct tp *t, uint32_t peer);

/* Fills *out with the peer's state (self reads as UP, with our own
 * incarnation), for `capdsm status`. Returns 0 or -EINVAL (no such peer
 * or out NULL). */
int tp_peer_info(struct tp *t, uint32_t peer, struct tp_peer_info *out);

/* This process's incarnation number (cfg.incarnation, or the
 * CLOCK_REALTIME microseconds tp_open took). Cannot fail. */
uint64_t tp_incarnation(struct tp *t);

/* One line for the log on what tp_open chose: the kind's name, and for
 * rdma the device, port, GID index, MTU and frame rings ("rdma: rxe0 port
 * 1 gid 1 mtu 1024, frames of 4416 bytes per peer: 237 to receive, 948 to
 * send"). Owned by t. Cannot fail. */
const char *tp_describe(struct tp *t);

/* Copies the counters (monotonic since tp_open). Cannot fail. */
void tp_stats(struct tp *t, struct tp_stats *out);

/* A short constant name for a down reason ("timeout", ...). */
const char *tp_down_reason_str(enum tp_down_reason why);

/* "zmq" or "tcp" ("?" for anything else). */
const char *tp_kind_str(enum tp_kind kind);

/* Parses "zmq" or "tcp" (as tp_kind_str writes them) into *out. Returns 0,
 * or -EINVAL for anything else (*out untouched). */
int tp_kind_parse(const char *s, enum tp_kind *out);

#ifdef __cplusplus
}
#endif

#endif
