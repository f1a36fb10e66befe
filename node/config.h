/* config.h — capdsmd's settings: an ini file (read with inih) and flags that
 * override it. Every pool the daemon will ever use is sized here. */
#ifndef CAPDSM_NODE_CONFIG_H
#define CAPDSM_NODE_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "log.h"

#define CFG_MAX_NODES 256
#define CFG_KEY_LEN 40   /* a CURVE key in Z85 */
#define CFG_ADDR_LEN 128

struct node_peer {
	bool set;
	char address[CFG_ADDR_LEN];        /* tcp://A.B.C.D:PORT */
	char public_key[CFG_KEY_LEN + 1];  /* Z85 */
};

struct node_config {
	uint32_t node_id;
	char socket[108];      /* Unix socket path (sun_path size) */
	char dir[512];         /* the node's state folder */
	char group[64];        /* group allowed on the socket; "" = owner only */
	enum log_level log_level;
	uint32_t poll_us;      /* spin this long for events before sleeping */
	uint32_t max_payload;  /* bytes of data in one frame */
	/* pools */
	uint32_t objects, caps, clients, slots_per_client, mappings, locks;
	uint32_t sturdy, frames; /* frames: 4 KiB page frames */
	/* root bank */
	uint64_t bank_limit_bytes, bank_limit_objects;
	/* cluster: nodes 0..nodes-1, each a [peer.K] section; nodes = 1 and
	 * no peers is a cluster of one */
	uint32_t nodes;
	char transport[16];     /* "zmq" (ZeroMQ + CURVE), "tcp" (TCP +
	                           libsodium, in the daemon's own loop) or
	                           "rdma" (that handshake, then RC queue
	                           pairs through libibverbs) */
	char rdma_device[64];   /* rdma: verbs device, "" = the first */
	int32_t rdma_gid_index; /* rdma: GID index, -1 = the first RoCE v2
	                           IPv4-mapped one */
	char secret_key_file[512]; /* this node's CURVE secret key, Z85 */
	char secret_key[CFG_KEY_LEN + 1]; /* read from the file at check */
	bool plaintext;         /* explicit: no CURVE (benchmarks only) */
	uint32_t heartbeat_ms, dead_after_ms;
	uint32_t remote_frames; /* frames for pages cached from other homes */
	/* Read-ahead on sequential access to another home's pages: how many
	 * pages ahead a sequential read fault or explicit request asks for
	 * at most (0: none); a mapping's window starts at 16 and doubles up to
	 * it. At most 128 (half of the requests a node has in flight); a
	 * quarter of remote_frames if that is less (read-ahead must not evict
	 * what it just brought). */
	uint32_t prefetch_pages;
	struct node_peer peers[CFG_MAX_NODES];
};

/* The fewest remote frames a cluster node runs with: below a handful,
 * make_room evicts pages that requests in flight still need. */
#define CFG_MIN_REMOTE_FRAMES 16u

/* Fills defaults. */
void config_defaults(struct node_config *c);
/* Reads an ini file over the current values. Returns 0, -ENOENT, or -EINVAL
 * with a one-line reason (file:line: what) in `err`. */
int config_load(struct node_config *c, const char *path, char *err,
                unsigned errlen);
/* Checks ranges after everything is set; -EINVAL with a reason in err. */
int config_check(const struct node_config *c, char *err, unsigned errlen);

#endif
