/* testlib.h — helpers for the integration tests: a real capdsmd in a fresh
 * temporary folder, forked client processes, and raw-socket frames.
 *
 * Invariant: whatever a test starts (daemons, child processes, temporary
 * folders) is registered here and is taken down by th_cleanup_all() — from
 * a test's teardown, or from the SIGALRM guard when a test hangs — so a
 * failing or stuck test never leaves a daemon or a folder behind. Daemons
 * and children are also started with PR_SET_PDEATHSIG, so they die with the
 * test process however it ends.
 *
 * Functions return 0 or a negative errno-style code and print the reason of
 * a failure on stderr; none of them exits the test process (the alarm
 * guard excepted).
 */
#ifndef CAPDSM_TESTLIB_H
#define CAPDSM_TESTLIB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "capdsm.h"
#include "capdsm.pb-c.h"
#include "wire.h"

/* ---- the daemon ---- */

/* Pool sizes and limits written into the daemon's ini file. */
struct th_config {
	uint32_t objects, caps, clients, slots_per_client, mappings, locks;
	uint32_t sturdy, frames;
	uint32_t max_payload; /* 0: the daemon's default */
	uint64_t limit_bytes, limit_objects;
};

/* The sizes of the example config. */
#define TH_CONFIG_DEFAULT                                                     \
	((struct th_config){ .objects = 64, .caps = 4096, .clients = 16,          \
	                     .slots_per_client = 256, .mappings = 64,            \
	                     .locks = 256, .sturdy = 256, .frames = 4096,        \
	                     .max_payload = 0, .limit_bytes = 0,                 \
	                     .limit_objects = 0 })

struct th_daemon {
	pid_t pid;      /* 0 when not running */
	char dir[64];   /* mkdtemp folder holding the files below */
	char sock[128]; /* dir/capdsm.sock */
	char config[128];
	char log[128];  /* the daemon's stderr */
};

/* The daemon binary: $CAPDSMD (set by ctest). NULL if unset. */
const char *th_daemon_path(void);

/* Makes a temporary folder, writes the config, starts capdsmd and waits
 * (at most 10 s) until it listens. On failure everything is undone. */
int th_daemon_start(struct th_daemon *d, const struct th_config *cfg);

/* SIGTERM, then waits at most 5 s. Returns 0 only if the daemon exited
 * with status 0 and removed its socket file; otherwise prints why (and the
 * log's tail) and returns -1. Either way the daemon is gone (SIGKILL after
 * the timeout) and its folder removed afterwards. Safe to call twice. */
int th_daemon_stop(struct th_daemon *d);

/* Like stop, but with SIGKILL and no checks: for emergencies. */
void th_daemon_kill(struct th_daemon *d);

/* True while the daemon process exists and has not exited. */
bool th_daemon_alive(struct th_daemon *d);

/* Descriptors open in the daemon (entries of /proc/PID/fd), or -errno. */
int th_daemon_fd_count(const struct th_daemon *d);

/* The daemon's log so far, NUL-terminated; the caller frees. */
char *th_daemon_log(const struct th_daemon *d);
bool th_log_contains(const struct th_daemon *d, const char *needle);

/* ---- guarding a test ---- */

/* Installs the SIGALRM guard and arms alarm(seconds): if the test has not
 * called th_guard_disarm() by then, every child and daemon registered here
 * is killed, their folders removed, and the process exits 1. */
void th_guard_arm(unsigned seconds);
void th_guard_disarm(void);

/* Kills and reaps every registered child, stops every registered daemon
 * (SIGKILL) and removes its folder. For teardown after a failure. */
void th_cleanup_all(void);
/* Kills and reaps every registered child only. */
void th_kill_children(void);

/* ---- child processes ---- */

/* fork(); the child gets PR_SET_PDEATHSIG(SIGKILL), default SIGSEGV and
 * SIGBUS dispositions (so a fault kills it even under a sanitizer), no
 * inherited guard, and its own alarm of `seconds`. The parent registers the
 * pid for th_cleanup_all(). Returns the pid, 0 in the child, -errno. */
pid_t th_fork(unsigned seconds);

/* waitpid with a timeout; on timeout the child is killed (and reaped) and
 * -ETIMEDOUT returned. Fills *status. Unregisters the pid. */
int th_wait(pid_t pid, int timeout_ms, int *status);

/* Waits for the child and returns its exit code, or -1000-signal if it was
 * killed by a signal, or -ETIMEDOUT. */
int th_wait_exit(pid_t pid, int timeout_ms);

/* In a child: a failed check prints and _exit()s with `code`; children
 * must never use cmocka's assertions (they would unwind into a copy of the
 * test runner). */
#define TH_CHILD_CHECK(cond, code)                                            \
	do {                                                                      \
		if (!(cond))                                                          \
			th_child_fail(__FILE__, __LINE__, #cond, (code));                 \
	} while (0)
_Noreturn void th_child_fail(const char *file, int line, const char *what,
                             int code);

/* One-byte messages over pipes, with a timeout. th_pipe_recv returns the
 * byte (0..255), -ETIMEDOUT, or -EPIPE at end of file. */
int th_pipe_send(int fd, char c);
int th_pipe_recv(int fd, int timeout_ms);
/* A NUL-terminated string over a pipe (at most `cap` bytes with the NUL). */
int th_pipe_send_str(int fd, const char *s);
int th_pipe_recv_str(int fd, char *buf, size_t cap, int timeout_ms);

/* ---- client helpers ---- */

/* One counter of capdsm_stats(); -ENOENT if the daemon has no such. */
int th_stat(struct capdsm *c, const char *name, uint64_t *value);
/* Polls a counter until it equals `want` (at most timeout_ms). Returns 0,
 * -ETIMEDOUT, or an error of capdsm_stats. */
int th_wait_stat(struct capdsm *c, const char *name, uint64_t want,
                 int timeout_ms);
/* Polls until the log contains `needle`. Returns 0 or -ETIMEDOUT. */
int th_wait_log(const struct th_daemon *d, const char *needle, int timeout_ms);

/* A recognisable byte for (seed, position). */
static inline uint8_t th_pattern(uint32_t seed, size_t i)
{
	uint32_t x = seed * 2654435761u ^ (uint32_t)i * 40503u;
	return (uint8_t)(x ^ (x >> 8) ^ (x >> 16) ^ (x >> 24));
}
void th_fill(void *buf, size_t len, uint32_t seed);
/* Index of the first byte that differs from the pattern, or -1. */
long th_check(const void *buf, size_t len, uint32_t seed);

/* True if this machine lets us create a userfaultfd with minor and
 * write-protect faults on shared memory (what capdsm_map needs). */
bool th_uffd_available(void);

/* ---- raw frames on the daemon's socket ---- */

/* A connected socket with 5 s receive and send timeouts. Returns fd. */
int th_raw_connect(const char *sock);
/* Sends the given header and bytes exactly as they are (for malformed
 * frames); `pass_fd` >= 0 rides along with SCM_RIGHTS. */
int th_raw_send(int fd, const struct wire_hdr *h, const void *msg,
                size_t msg_len, const void *payload, size_t payload_len,
                int pass_fd);
/* The same with several descriptors in one SCM_RIGHTS message. */
int th_raw_send_fds(int fd, const struct wire_hdr *h, const void *msg,
                    size_t msg_len, const void *payload, size_t payload_len,
                    const int *fds, int nfds);
/* Arbitrary bytes, no framing at all. */
int th_raw_send_bytes(int fd, const void *buf, size_t len);
/* Packs `q` into a correct frame with `payload_len` payload bytes. */
int th_raw_request(int fd, const Capdsm__Request *q, const void *payload,
                   uint32_t payload_len, int pass_fd);
/* Reads one reply frame. Its payload (if any) goes to buf (at most cap,
 * the rest discarded) and its length to *payload_len (may be NULL).
 * Returns 0 and a reply the caller frees with capdsm__reply__free_unpacked,
 * -ECONNRESET at end of stream, -ETIMEDOUT, -EPROTO for a bad frame. */
int th_raw_reply(int fd, Capdsm__Reply **out, void *buf, size_t cap,
                 size_t *payload_len);
/* Sends `q` (a correct frame) and reads replies until the one with q's
 * id, skipping events. Returns 0 and the reply (the caller frees it; its
 * status may be an error), or a transport error as th_raw_reply. */
int th_raw_call(int fd, const Capdsm__Request *q, const void *payload,
                uint32_t payload_len, int pass_fd, Capdsm__Reply **out,
                void *buf, size_t cap);
/* The fields of a reply the tests look at, copied out so that nothing
 * needs freeing (an assertion may unwind at any point). */
struct th_reply {
	uint64_t id;
	int status;
	uint32_t slot, process_slot;
	uint64_t mapping; /* map: the mapping id */
	size_t n_counters;
	bool event;
	char error[256];
};
/* th_raw_reply (payload discarded) into a th_reply. */
int th_raw_read_reply(int fd, struct th_reply *out);
/* th_raw_call into a th_reply. */
int th_raw_do(int fd, const Capdsm__Request *q, const void *payload,
              uint32_t payload_len, int pass_fd, struct th_reply *out);
/* Hello (version 1); returns 0 and the process slot, or the reply status. */
int th_raw_hello(int fd, uint64_t id, uint32_t *process_slot);
/* Reads and discards frames until the daemon closes the connection.
 * Returns 0 once closed, -ETIMEDOUT if it stays open. */
int th_raw_wait_closed(int fd, int timeout_ms);

/* ---- a cluster of daemons (cluster.c) ---- */

/* N capdsmd daemons on 127.0.0.1, each with its own CURVE key pair, in one
 * mkdtemp folder (node<K>/: capdsmd.ini, node.key, capdsm.sock,
 * capdsmd.log). Unlike th_daemon_start's daemons they are not registered
 * for th_cleanup_all(); they die with the test process (death signal) and
 * a janitor process removes the folder if th_cluster_stop never runs. */
#define TH_CLUSTER_MAX 8
#define TH_KEY_LEN 40 /* a CURVE key in Z85 */

struct th_cluster_opts {
	uint32_t heartbeat_ms;  /* 0: 50 */
	uint32_t dead_after_ms; /* 0: 500 */
	uint32_t poll_us;       /* node.poll_us; 0: the daemon's default */
	bool plaintext;         /* cluster.plaintext = true (no CURVE) */
	/* cluster.transport: "zmq" or "tcp"; NULL: the environment's
	 * CAPDSM_TEST_TRANSPORT, else "zmq" (so every multi-node test can run
	 * over either transport, see tests/multinode/CMakeLists.txt) */
	const char *transport;
	const char *log_level;  /* NULL: "info" */
	const struct th_config *pools; /* NULL: TH_CONFIG_DEFAULT */
	const char *extra;      /* appended to every config (later wins) */
	/* Bit k set: node k's config names a key file that does not exist.
	 * th_cluster_start does not start it (see th_cluster_start_node). */
	uint32_t no_key;
	/* Bit k set: node k's key file holds a secret that is not the one of
	 * the public key its own config lists for it. Not started either. */
	uint32_t mismatched_key;
	/* Bit k set: node k runs with a key pair the other nodes do not know
	 * (its own config lists its new public key; theirs the member one).
	 * It starts, but th_cluster_start does not wait for it to be reached. */
	uint32_t foreign_key;
};

struct th_cluster {
	unsigned n;
	char dir[64];
	struct th_daemon node[TH_CLUSTER_MAX]; /* pid 0 when not running */
	uint16_t port[TH_CLUSTER_MAX];
	char pub[TH_CLUSTER_MAX][TH_KEY_LEN + 1];     /* member public keys */
	char sec[TH_CLUSTER_MAX][TH_KEY_LEN + 1];     /* and their secrets */
	char own_pub[TH_CLUSTER_MAX][TH_KEY_LEN + 1]; /* what node k uses */
	char key_file[TH_CLUSTER_MAX][128];
	/* wait status of node k's last exit (-1: none yet) */
	int status[TH_CLUSTER_MAX];
	uint32_t killed; /* bit k: th_cluster_kill(c, k) was called */
	struct th_cluster_opts opts;
	pid_t janitor;
	int janitor_fd;
};

/* Makes the folder, the key pairs (tp_keypair) and free loopback ports
 * (bound at port 0), writes every config, starts every node not held back
 * by the options, waits until each listens and then until every pair of
 * them (foreign-key nodes left out) can reach each other: an import
 * through node j of a made-up reference naming node k stops failing with
 * -EHOSTDOWN — at most 10 s in all. On failure everything is undone and
 * the logs printed. */
int th_cluster_start(struct th_cluster *c, unsigned nodes,
                     const struct th_cluster_opts *o);
/* Starts node k (held back, killed or exited) and waits until it listens.
 * Returns 0; -ECHILD if it exited (wait status in c->status[k], reason in
 * its log); -ETIMEDOUT (then killed). Its log is appended to. */
int th_cluster_start_node(struct th_cluster *c, unsigned k);
/* SIGTERM to every running node; each must exit 0 within 5 s and remove
 * its socket (as th_daemon_stop). Nodes the test killed or that exited at
 * start are not checked. Removes the folder. Returns 0 or -1. Safe to call
 * twice. */
int th_cluster_stop(struct th_cluster *c);
/* SIGKILL to node k, reaped; its folder (and log) stay. */
int th_cluster_kill(struct th_cluster *c, unsigned k);
/* True while node k's process runs (reaps it, and records why, if not). */
bool th_cluster_alive(struct th_cluster *c, unsigned k);
/* Node k's socket path. */
static inline const char *th_cluster_sock(const struct th_cluster *c,
                                          unsigned k)
{
	return c->node[k].sock;
}
/* Whether node j reaches node k now: 0 if an import through j of a
 * made-up reference naming k was answered by k, -EHOSTDOWN (or
 * -ENOTCONN) if not, another error if node j does not answer. */
int th_cluster_reachable(const struct th_cluster *c, unsigned j, unsigned k);
/* Waits until every ordered pair of nodes in `mask` is reachable. */
int th_cluster_wait_peers(const struct th_cluster *c, uint32_t mask,
                          int timeout_ms);
/* Waits until node j reports node k down (-EHOSTDOWN). */
int th_cluster_wait_down(const struct th_cluster *c, unsigned j, unsigned k,
                         int timeout_ms);
/* Prints the tail of every node's log on stderr. */
void th_cluster_dump_logs(const struct th_cluster *c);

#endif /* CAPDSM_TESTLIB_H */
