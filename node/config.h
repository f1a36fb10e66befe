/* config.h — capdsmd's settings: an ini file (read with inih) and flags that
 * override it. Every pool the daemon will ever use is sized here. */
#ifndef CAPDSM_NODE_CONFIG_H
#define CAPDSM_NODE_CONFIG_H

#include <stdint.h>

#include "log.h"

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
};

/* Fills defaults. */
void config_defaults(struct node_config *c);
/* Reads an ini file over the current values. Returns 0, -ENOENT, or -EINVAL
 * with a one-line reason (file:line: what) in `err`. */
int config_load(struct node_config *c, const char *path, char *err,
                unsigned errlen);
/* Checks ranges after everything is set; -EINVAL with a reason in err. */
int config_check(const struct node_config *c, char *err, unsigned errlen);

#endif
