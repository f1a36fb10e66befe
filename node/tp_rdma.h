/* tp_rdma.h — the verbs data path of TP_KIND_RDMA (tp_rdma.c), used by
 * tp_tcp.c: the TCP connections and their keyed handshake stay the
 * control channel (who is who, the exchange of queue pair numbers, and
 * liveness: a closed connection destroys its queue pair), and every data
 * message and heartbeat of a connection that finished its handshake moves
 * over a reliable-connected queue pair instead of the socket.
 *
 * One direction per connection, as the TCP topology has it: node i dials
 * node j, and its outgoing queue pair (an "out" QP) writes i's messages
 * into a ring of registered receive frames that j keeps for i; j's QP of
 * that connection (an "in" QP) only sends credits back. So each ordered
 * pair of nodes has one RC queue pair on each side, and each message is
 * one RDMA WRITE WITH IMMEDIATE (body in the frame, its length in the
 * immediate): the receiver's CPU copies nothing, and on_msg is handed the
 * bytes where the network put them.
 *
 * Flow control is by credits (no receiver-not-ready error under load):
 * the sender may have at most `slots` messages that the receiver has not
 * yet consumed; the receiver returns the count it consumed, mod 2^32, in
 * the immediate of a zero-length SEND on the same queue pair, at most once
 * per tp_poll and with at most VX_CREDIT_INFLIGHT of them unacknowledged.
 * Each in QP keeps `slots` receive requests posted, each out QP
 * VX_CREDIT_RECVS, so no write and no credit ever finds its receive queue
 * empty.
 *
 * Every buffer is allocated and registered once, by vx_open: per peer, a
 * ring of `slots` receive frames and a ring of `tx_slots` send frames
 * (the send queue: a message waits there while credits lack); queue
 * pairs are created per connection and destroyed with it. Names are vx_
 * (verbs exchange); internal to capdsm_transport.
 */
#ifndef CAPDSM_NODE_TP_RDMA_H
#define CAPDSM_NODE_TP_RDMA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define VX_EP_LEN 48u          /* an endpoint on the wire */
#define VX_CREDIT_RECVS 16u    /* receive requests an out QP keeps posted */
#define VX_CREDIT_INFLIGHT 8u  /* credit SENDs an in QP may have unacked */

/* What one side of a connection tells the other (inside the keyed
 * handshake's hello records): its queue pair, and for the receiving side
 * the ring the sender writes into. Little-endian on the wire:
 *   0 qpn (4)  4 psn (4)  8 gid (16)  24 ring address (8)  32 rkey (4)
 *   36 slots (4)  40 slot size (4)  44 mtu code (4: enum ibv_mtu) */
struct vx_ep {
	uint32_t qpn, psn;
	uint8_t gid[16];
	uint64_t addr;
	uint32_t rkey, slots, slot_size, mtu;
};

void vx_ep_put(uint8_t *b, const struct vx_ep *e);
void vx_ep_get(const uint8_t *b, struct vx_ep *e);

struct vx;

struct vx_config {
	const char *device;   /* "" or NULL: the first device found */
	int gid_index;        /* < 0: the first IPv4-mapped GID, else any */
	uint32_t npeers;      /* ids 0..npeers-1 */
	uint32_t nin;         /* accepted-connection slots */
	uint32_t slots;       /* receive frames per peer (its credits) */
	uint32_t tx_slots;    /* send frames per peer (>= slots): the send
	                         queue of tp_send (queue_limit) */
	size_t max_body;      /* largest message body */
};

/* Opens the device, allocates and registers every ring. Returns 0, or
 * -ENODEV (no device, or not the one named: one line in err says which
 * exist), -ENOMEM, or another negative errno from the verbs library. */
int vx_open(struct vx **out, const struct vx_config *cfg, char *err,
            size_t errlen);
void vx_close(struct vx *v);
/* The completion channel's descriptor (non-blocking): readable when a
 * completion arrived after vx_poll last found its queues empty. */
int vx_fd(const struct vx *v);
/* "rxe0 port 1 gid 1 mtu 1024": what vx_open chose, for the log. */
const char *vx_describe(const struct vx *v);
/* The GID this side's queue pairs use, and its index. */
void vx_local_gid(const struct vx *v, uint8_t gid[16], int *index);

/* The sending side of peer i's outgoing connection. begin creates its QP
 * (INIT, credit receives posted) and fills *mine; connect takes the
 * receiver's endpoint to RTR and RTS, and starts the credit count; end
 * destroys the QP (the ring stays). 0 or -errno. */
int vx_out_begin(struct vx *v, uint32_t i, uint16_t gen, struct vx_ep *mine);
int vx_out_connect(struct vx *v, uint32_t i, const struct vx_ep *theirs);
void vx_out_end(struct vx *v, uint32_t i);
/* Whether one more message fits in i's send frames now. */
bool vx_out_room(const struct vx *v, uint32_t i);
/* Queues one message: the 32-byte transport header, the caller's header
 * length, header and payload, gathered into i's next send frame, posted
 * at once if a credit allows, else when credits come back (vx_poll).
 * Returns 0, -EAGAIN without a free send frame, or -EIO if a post failed
 * (the connection is then broken: the caller closes it). */
int vx_out_send(struct vx *v, uint32_t i, const uint8_t *wire,
                const void *hdr, size_t hdrlen, const void *payload,
                size_t plen);

/* The receiving side of accepted-connection slot k, claimed by node peer
 * (proven only later: its QP stays in INIT, where nothing can reach the
 * ring, until vx_in_connect). begin creates the QP and posts a receive for
 * every frame; connect moves it to RTR and RTS against the dialler's
 * endpoint and starts reading peer's ring from frame 0. 0 or -errno. */
int vx_in_begin(struct vx *v, uint32_t k, uint16_t gen, uint32_t peer,
                struct vx_ep *mine);
int vx_in_connect(struct vx *v, uint32_t k, const struct vx_ep *theirs);
void vx_in_end(struct vx *v, uint32_t k);

/* What vx_poll reports to tp_tcp.c. */
struct vx_sink {
	void *ctx;
	/* A message of connection k: body (len bytes) in its frame, valid
	 * during the call. Returns false if the connection was closed. */
	bool (*on_body)(void *ctx, uint32_t k, const uint8_t *body,
	                size_t len);
	/* Connection failed (a completion error or a malformed immediate):
	 * out == true for peer i's outgoing one, else slot i. */
	void (*on_fail)(void *ctx, bool out, uint32_t i, const char *why);
	/* Room that comes back (credits, send frames) needs no callback:
	 * tp__poll_end asks vx_out_room for every peer that waits. */
};

/* Reaps completions: up to *budget messages (decremented), every credit
 * and send completion. `event`: vx_fd was reported readable (its events
 * are taken and the queues re-armed once they run dry; otherwise an armed
 * channel is left as it is, so a spinning caller pays no system call).
 * Returns 0, or -errno if the verbs library failed. *more is set if
 * messages may remain (budget spent). */
int vx_poll(struct vx *v, const struct vx_sink *s, uint32_t *budget,
            bool event, bool *more);
/* Returns consumed frames to the senders of every connection that
 * consumed any since its last credit (one SEND each, at most
 * VX_CREDIT_INFLIGHT in flight). */
void vx_credit_flush(struct vx *v);

#endif
