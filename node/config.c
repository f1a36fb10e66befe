/* config.c — ini settings for capdsmd, parsed with inih (config.h). Unknown
 * keys and malformed numbers are errors: a typo must not silently leave a
 * pool at its default size. */
#include "config.h"

#include <errno.h>
#include <ini.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "wire.h"

void config_defaults(struct node_config *c)
{
	*c = (struct node_config){
		.node_id = 0,
		.socket = "",
		.dir = ".",
		.group = "",
		.log_level = LOG_INFO,
		.poll_us = 0,
		.max_payload = 16u << 20,
		.objects = 1024,
		.caps = 16384,
		.clients = 64,
		.slots_per_client = 1024,
		.mappings = 1024,
		.locks = 4096,
		.sturdy = 4096,
		.frames = 65536,
		.bank_limit_bytes = 0,
		.bank_limit_objects = 0,
		.nodes = 1,
		.transport = "zmq",
		.rdma_gid_index = -1,
		.heartbeat_ms = 100,
		.dead_after_ms = 1000,
		.remote_frames = 16384,
		.prefetch_pages = 128,
	};
}

struct load_ctx {
	struct node_config *c;
	char *err;
	unsigned errlen;
	const char *path;
};

static int parse_u64(const char *v, uint64_t max, uint64_t *out)
{
	char *end;
	unsigned long long x;

	if (!*v || *v == '-')
		return -EINVAL;
	errno = 0;
	x = strtoull(v, &end, 0);
	if (errno || *end || x > max)
		return -EINVAL;
	*out = x;
	return 0;
}

static int set_u32(uint32_t *dst, const char *v)
{
	uint64_t x;
	int rc = parse_u64(v, UINT32_MAX, &x);
	if (!rc)
		*dst = (uint32_t)x;
	return rc;
}

static int set_str(char *dst, size_t cap, const char *v)
{
	if (strlen(v) >= cap)
		return -EINVAL;
	memcpy(dst, v, strlen(v) + 1);
	return 0;
}

static int set_bool(bool *dst, const char *v)
{
	if (strcmp(v, "true") == 0 || strcmp(v, "yes") == 0 || strcmp(v, "1") == 0)
		*dst = true;
	else if (strcmp(v, "false") == 0 || strcmp(v, "no") == 0 ||
	         strcmp(v, "0") == 0)
		*dst = false;
	else
		return -EINVAL;
	return 0;
}

/* [peer.K] address / public_key */
static int set_peer(struct node_config *c, const char *id, const char *name,
                    const char *value)
{
	uint64_t k;
	struct node_peer *p;

	if (parse_u64(id, CFG_MAX_NODES - 1, &k) != 0)
		return -EINVAL;
	p = &c->peers[k];
	p->set = true;
	if (strcmp(name, "address") == 0)
		return set_str(p->address, sizeof p->address, value);
	if (strcmp(name, "public_key") == 0)
		return strlen(value) == CFG_KEY_LEN
		               ? set_str(p->public_key, sizeof p->public_key, value)
		               : -EINVAL;
	return -ENOENT;
}

static int on_key(void *user, const char *section, const char *name,
                  const char *value)
{
	struct load_ctx *lc = user;
	struct node_config *c = lc->c;
	int rc = -ENOENT;

#define IS(s, n) (strcmp(section, s) == 0 && strcmp(name, n) == 0)
	if (IS("node", "id"))
		rc = set_u32(&c->node_id, value);
	else if (IS("node", "socket")) {
		rc = set_str(c->socket, sizeof c->socket, value);
		if (rc) {
			snprintf(lc->err, lc->errlen, "%s: [node] socket: path longer "
			         "than %zu bytes", lc->path, sizeof c->socket - 1);
			return 0;
		}
	}
	else if (IS("node", "dir"))
		rc = set_str(c->dir, sizeof c->dir, value);
	else if (IS("node", "group"))
		rc = set_str(c->group, sizeof c->group, value);
	else if (IS("node", "log_level"))
		rc = log_level_parse(value, &c->log_level);
	else if (IS("node", "poll_us"))
		rc = set_u32(&c->poll_us, value);
	else if (IS("node", "max_payload"))
		rc = set_u32(&c->max_payload, value);
	else if (IS("pools", "objects"))
		rc = set_u32(&c->objects, value);
	else if (IS("pools", "caps"))
		rc = set_u32(&c->caps, value);
	else if (IS("pools", "clients"))
		rc = set_u32(&c->clients, value);
	else if (IS("pools", "slots_per_client"))
		rc = set_u32(&c->slots_per_client, value);
	else if (IS("pools", "mappings"))
		rc = set_u32(&c->mappings, value);
	else if (IS("pools", "locks"))
		rc = set_u32(&c->locks, value);
	else if (IS("pools", "sturdy"))
		rc = set_u32(&c->sturdy, value);
	else if (IS("pools", "frames"))
		rc = set_u32(&c->frames, value);
	else if (IS("bank", "limit_bytes"))
		rc = parse_u64(value, UINT64_MAX, &c->bank_limit_bytes);
	else if (IS("bank", "limit_objects"))
		rc = parse_u64(value, UINT64_MAX, &c->bank_limit_objects);
	else if (IS("cluster", "nodes"))
		rc = set_u32(&c->nodes, value);
	else if (IS("cluster", "transport"))
		rc = strcmp(value, "zmq") == 0 || strcmp(value, "tcp") == 0 ||
		                     strcmp(value, "rdma") == 0
		             ? set_str(c->transport, sizeof c->transport, value)
		             : -EINVAL;
	else if (IS("cluster", "rdma_device"))
		rc = set_str(c->rdma_device, sizeof c->rdma_device, value);
	else if (IS("cluster", "rdma_gid_index")) {
		uint32_t g = 0;
		rc = strcmp(value, "auto") == 0 ? (c->rdma_gid_index = -1, 0)
		                                : set_u32(&g, value);
		if (!rc && strcmp(value, "auto") != 0)
			rc = g > 255 ? -EINVAL : (c->rdma_gid_index = (int32_t)g, 0);
	}
	else if (IS("cluster", "secret_key_file"))
		rc = set_str(c->secret_key_file, sizeof c->secret_key_file, value);
	else if (IS("cluster", "plaintext"))
		rc = set_bool(&c->plaintext, value);
	else if (IS("cluster", "heartbeat_ms"))
		rc = set_u32(&c->heartbeat_ms, value);
	else if (IS("cluster", "dead_after_ms"))
		rc = set_u32(&c->dead_after_ms, value);
	else if (IS("pools", "remote_frames"))
		rc = set_u32(&c->remote_frames, value);
	else if (IS("cluster", "prefetch_pages"))
		rc = set_u32(&c->prefetch_pages, value);
	else if (strncmp(section, "peer.", 5) == 0)
		rc = set_peer(c, section + 5, name, value);
#undef IS
	if (rc == -ENOENT) {
		snprintf(lc->err, lc->errlen, "%s: unknown setting [%s] %s",
		         lc->path, section, name);
		return 0;
	}
	if (rc) {
		snprintf(lc->err, lc->errlen, "%s: bad value for [%s] %s: '%s'",
		         lc->path, section, name, value);
		return 0;
	}
	return 1;
}

int config_load(struct node_config *c, const char *path, char *err,
                unsigned errlen)
{
	struct load_ctx lc = { .c = c, .err = err, .errlen = errlen, .path = path };
	int rc;

	err[0] = '\0';
	struct stat st;
	if (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "%s: not a regular file", path);
		return -EINVAL;
	}
	rc = ini_parse(path, on_key, &lc);
	if (rc == -1) {
		snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
		return -ENOENT;
	}
	if (rc != 0) {
		if (!err[0])
			snprintf(err, errlen, "%s:%d: syntax error", path, rc);
		return -EINVAL;
	}
	return 0;
}

int config_check(const struct node_config *c, char *err, unsigned errlen)
{
	const struct {
		const char *name;
		uint32_t v, lo, hi;
	} r[] = {
		{ "pools.objects", c->objects, 4, 1u << 24 },
		{ "pools.caps", c->caps, 16, 1u << 26 },
		{ "pools.clients", c->clients, 1, 1u << 16 },
		{ "pools.slots_per_client", c->slots_per_client, 8, 1u << 20 },
		{ "pools.mappings", c->mappings, 1, 1u << 24 },
		{ "pools.locks", c->locks, 1, 1u << 24 },
		{ "pools.sturdy", c->sturdy, 1, 1u << 24 },
		{ "pools.frames", c->frames, 1, 1u << 30 },
		{ "node.max_payload", c->max_payload, 4096, WIRE_PAYLOAD_MAX },
		{ "node.poll_us", c->poll_us, 0, 1000000 },
	};
	for (size_t i = 0; i < sizeof r / sizeof r[0]; i++)
		if (r[i].v < r[i].lo || r[i].v > r[i].hi) {
			snprintf(err, errlen, "%s = %" PRIu32 " is outside [%" PRIu32
			         ", %" PRIu32 "]", r[i].name, r[i].v, r[i].lo, r[i].hi);
			return -EINVAL;
		}
	/* A lone node (nodes = 1) may carry any id; in a cluster the id
	 * names one of its [peer.K] sections. */
	if (c->nodes < 1 || c->nodes > CFG_MAX_NODES ||
	    (c->nodes > 1 && c->node_id >= c->nodes)) {
		snprintf(err, errlen, "cluster.nodes = %u with node id %u: need "
		         "1..%u nodes and id < nodes", c->nodes, c->node_id,
		         CFG_MAX_NODES);
		return -EINVAL;
	}
	if (c->nodes > 1) {
		for (uint32_t k = 0; k < c->nodes; k++)
			if (!c->peers[k].set || !c->peers[k].address[0] ||
			    (!c->plaintext && !c->peers[k].public_key[0])) {
				snprintf(err, errlen, "[peer.%u] needs an address%s", k,
				         c->plaintext ? "" : " and a public_key");
				return -EINVAL;
			}
		if (c->remote_frames < CFG_MIN_REMOTE_FRAMES) {
			snprintf(err, errlen, "pools.remote_frames = %u: a node of a "
			         "cluster needs at least %u (pages it holds of other "
			         "homes' objects, including those in flight)",
			         c->remote_frames, CFG_MIN_REMOTE_FRAMES);
			return -EINVAL;
		}
		if (c->prefetch_pages > 128) {
			snprintf(err, errlen, "cluster.prefetch_pages = %u: at most 128",
			         c->prefetch_pages);
			return -EINVAL;
		}
		if (c->heartbeat_ms < 1 || c->dead_after_ms < 2 * c->heartbeat_ms) {
			snprintf(err, errlen, "cluster.dead_after_ms must be at least "
			         "twice cluster.heartbeat_ms");
			return -EINVAL;
		}
	}
	long phys = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
	if (phys > 0 && psz > 0 &&
	    (uint64_t)c->frames * 4096u > (uint64_t)phys * (uint64_t)psz) {
		snprintf(err, errlen, "pools.frames = %u (%llu MiB) is more than "
		         "this machine's memory (%llu MiB)", c->frames,
		         (unsigned long long)c->frames * 4096u >> 20,
		         (unsigned long long)phys * (unsigned long long)psz >> 20);
		return -EINVAL;
	}
	if ((uint64_t)c->clients * c->slots_per_client > (1u << 26)) {
		snprintf(err, errlen, "pools.clients * pools.slots_per_client is too large");
		return -EINVAL;
	}
	return 0;
}
