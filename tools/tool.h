/* tool.h — internals of the `capdsm` command-line tool, shared by its files.
 *
 * capdsm.c parses the command line into one `struct tool_args` and calls the
 * verb's handler; each handler returns the process exit status and prints at
 * most one line on stderr, "capdsm: <verb>: <reason>". Only main() exits.
 * The tool speaks to daemons only through libcapdsm (dsm/capdsm.h).
 */
#ifndef CAPDSM_TOOL_H
#define CAPDSM_TOOL_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "capdsm.h"

/* Exit statuses. */
#define TOOL_EXIT_OK 0
#define TOOL_EXIT_FAIL 1
#define TOOL_EXIT_USAGE 2

#define TOOL_MAX_NODES 256u
#define TOOL_CHUNK (1u << 20) /* bytes per read/write request */

/* Options, as bits of tool_args.seen and of a verb's allowed/required sets. */
enum tool_opt {
	TOOL_O_DIR = 1u << 0,
	TOOL_O_NODE = 1u << 1,
	TOOL_O_NODES = 1u << 2,
	TOOL_O_FRAMES = 1u << 3,
	TOOL_O_OBJECTS = 1u << 4,
	TOOL_O_CLIENTS = 1u << 5,
	TOOL_O_CONFIG_EXTRA = 1u << 6,
	TOOL_O_SIZE = 1u << 7,
	TOOL_O_BANK = 1u << 8,
	TOOL_O_RIGHTS = 1u << 9,
	TOOL_O_OFFSET = 1u << 10,
	TOOL_O_LENGTH = 1u << 11,
	TOOL_O_PARENT = 1u << 12,
	TOOL_O_LIMIT_BYTES = 1u << 13,
	TOOL_O_LIMIT_OBJECTS = 1u << 14,
	TOOL_O_JSON = 1u << 15,
	TOOL_O_PUT = 1u << 16,
	TOOL_O_AT = 1u << 17,
	TOOL_O_PRINT = 1u << 18,
	TOOL_O_WAIT = 1u << 19,
	TOOL_O_TIMEOUT = 1u << 20,
	TOOL_O_TRANSPORT = 1u << 21,
	TOOL_O_PLAINTEXT = 1u << 22,
	TOOL_O_NETNS = 1u << 23,
	TOOL_O_BASE_PORT = 1u << 24,
};

/* One command line, checked: every option the verb may take is parsed and
 * in range; fields of options not given hold their defaults. */
struct tool_args {
	const char *verb;   /* the verb's words, "object create" */
	const char *ref;    /* the REF word, or NULL */
	unsigned seen;      /* TOOL_O_* given on the command line */
	const char *dir;    /* --dir, else $CAPDSM_DIR, else NULL */
	uint32_t node;      /* --node, default 0 */
	uint32_t nodes;     /* cluster up */
	uint32_t frames, objects, clients; /* cluster up pool overrides */
	const char *config_extra;
	const char *transport; /* --transport: "zmq" (default) or "tcp" */
	bool plaintext;        /* --plaintext: no CURVE (benchmarks) */
	bool netns;            /* --netns: a network namespace per node */
	uint32_t base_port;    /* --base-port P: node K listens on P+K */
	uint64_t size, offset, length;
	uint64_t limit_bytes, limit_objects;
	uint32_t rights;
	const char *bank, *parent; /* sturdy references */
	bool json;
	/* map */
	const char *put;   /* --put TEXT: store it through the mapping */
	uint64_t at;       /* --at X: bytes into the mapping */
	uint64_t print;    /* --print N: print N bytes read through it */
	uint64_t wait;     /* --wait-change N: wait until N bytes at X change */
	uint32_t timeout;  /* --timeout S for --wait-change (default 30) */
};

/* ---- capdsm.c: reporting ---- */

/* Prints "capdsm: <verb>: <message>" on stderr; returns TOOL_EXIT_FAIL. */
int tool_fail(const struct tool_args *a, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* As tool_fail, followed by ": <reason>" for the negative code rc: the
 * daemon's reason from capdsm_strerror(c) when c is given and has one, else
 * strerror(-rc). */
int tool_fail_rc(const struct tool_args *a, const struct capdsm *c, int rc,
                 const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* As tool_fail_rc, with the reason alone: "capdsm: <verb>: <reason>". */
int tool_fail_reason(const struct tool_args *a, const struct capdsm *c,
                     int rc);

/* ---- capdsm.c: paths and I/O helpers ---- */

/* Writes "<dir>/node<k>/<leaf>" (leaf may be NULL) into buf. Returns 0 or
 * -ENAMETOOLONG. */
int tool_node_path(char *buf, size_t len, const char *dir, uint32_t k,
                   const char *leaf);
/* The socket path of the node `a` names (--dir/--node). 0 or -errno. */
int tool_socket_path(const struct tool_args *a, char *buf, size_t len);
/* Reads up to len bytes, stopping early only at end of file. Returns the
 * count or -errno. */
ssize_t tool_read_full(int fd, void *buf, size_t len);
/* Writes all len bytes. Returns 0 or -errno. */
int tool_write_full(int fd, const void *buf, size_t len);

/* ---- verbs.c: verbs that talk to one daemon ---- */

int tool_object_create(const struct tool_args *a);
int tool_object_destroy(const struct tool_args *a);
int tool_cap_restrict(const struct tool_args *a);
int tool_cap_revoke(const struct tool_args *a);
int tool_cap_show(const struct tool_args *a);
int tool_write(const struct tool_args *a);
int tool_read(const struct tool_args *a);
int tool_bank_create(const struct tool_args *a);
int tool_bank_show(const struct tool_args *a);
int tool_bank_destroy(const struct tool_args *a);
int tool_stats(const struct tool_args *a);
int tool_map(const struct tool_args *a);

/* ---- cluster.c: a local cluster of daemons in one directory ---- */

int tool_cluster_up(const struct tool_args *a);
int tool_cluster_status(const struct tool_args *a);
int tool_cluster_down(const struct tool_args *a);

/* ---- keys.c: CURVE keys ---- */

#define TOOL_KEY_LEN 40u /* a CURVE key in Z85, without the NUL */

/* Prints a fresh key pair for operators: the `keygen` verb. */
int tool_keygen(const struct tool_args *a);
/* A fresh CURVE key pair in Z85 (tp_keypair). Returns 0 or -errno. */
int tool_keypair(char pub[TOOL_KEY_LEN + 1], char sec[TOOL_KEY_LEN + 1]);
/* Writes sec and a newline to path, a file this call creates with mode
 * 0600 (O_CREAT|O_EXCL: an existing file, or a symbolic link, is
 * replaced by unlinking it first, never written through). Returns 0 or
 * -errno; on failure no file is left. */
int tool_write_secret(const char *path, const char sec[TOOL_KEY_LEN + 1]);

/* ---- netns.c: a network namespace per node (cluster up --netns) ---- *
 *
 * Names: node K runs in namespace "<prefix>-K", the bridge "capdsm-br" in
 * "<prefix>-br", prefix "capdsm-<6 hex digits of a hash of DIR>". Node K's
 * veth is "capdsm0" in its namespace, "node<K>" on the bridge; its address
 * 10.213.<subnet>.<K+1>/24. Nothing is created in the root namespace but
 * the namespaces themselves. DIR/netns records what was made, line by line
 * as it is made, so that teardown removes exactly that. */

#define TOOL_NETNS_MAX_NODES 253u /* addresses .1 to .253 of one /24 */
#define TOOL_NETNS_NAME_MAX 32u

struct tool_netns {
	char ip[PATH_MAX];                /* the ip command (iproute2) */
	char prefix[16];                  /* "capdsm-1a2b3c" */
	unsigned subnet;                  /* x of 10.213.x.0/24 */
};

/* Derives the names for the cluster in dir (absolute) and finds `ip`.
 * Returns 0, -EPERM (not root) or -ENOENT (no ip command). */
int tool_netns_init(struct tool_netns *ns, const char *dir);
/* Node k's namespace name into buf (TOOL_NETNS_NAME_MAX bytes). */
void tool_netns_name(const struct tool_netns *ns, uint32_t k, char *buf);
/* Node k's IPv4 address ("10.213.x.y") into buf (16 bytes). */
void tool_netns_addr(const struct tool_netns *ns, uint32_t k, char *buf);
/* Creates the namespaces of nodes 0..n-1, their bridge and veths, and
 * records them in dir/netns. Refuses (-EEXIST) before creating anything if
 * one of the names exists. On failure, undoes what it made. Returns 0 or
 * a negative errno, with one line in err. */
int tool_netns_create(const struct tool_netns *ns, const char *dir,
                      uint32_t n, char *err, size_t errlen);
/* Removes what dir/netns records (links, then namespaces, newest first),
 * then the record. Nothing recorded is 0; what is already gone is not an
 * error. Returns 0 or a negative errno, with one line in err. */
int tool_netns_teardown(const char *dir, char *err, size_t errlen);
/* The namespace dir/netns records for node k, into name
 * (TOOL_NETNS_NAME_MAX bytes); false when there is none. */
bool tool_netns_node(const char *dir, uint32_t k, char *name);

#endif /* CAPDSM_TOOL_H */
