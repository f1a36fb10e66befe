/* daemon.c — a real capdsmd for a test: a fresh mkdtemp folder holding its
 * config, socket and log; start, wait until it listens, stop with SIGTERM
 * and check that it exited 0 and removed its socket.
 *
 * Every daemon and child is registered so that th_cleanup_all() and the
 * SIGALRM guard can take them down; the guard only uses async-signal-safe
 * calls (kill, waitpid, unlink, rmdir, write, _exit) on paths prepared in
 * advance. */
#include "testlib.h"
#include "testlib_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_DAEMONS 8
#define MAX_CHILDREN 64

static struct th_daemon *volatile daemons[MAX_DAEMONS];
static volatile pid_t children[MAX_CHILDREN];

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
	struct timespec ts = { .tv_sec = ms / 1000,
		                   .tv_nsec = (long)(ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* ---- registry ---- */

static void daemon_add(struct th_daemon *d)
{
	for (int i = 0; i < MAX_DAEMONS; i++)
		if (!daemons[i]) {
			daemons[i] = d;
			return;
		}
}

static void daemon_del(struct th_daemon *d)
{
	for (int i = 0; i < MAX_DAEMONS; i++)
		if (daemons[i] == d)
			daemons[i] = NULL;
}

void th__child_add(pid_t pid)
{
	for (int i = 0; i < MAX_CHILDREN; i++)
		if (children[i] == 0) {
			children[i] = pid;
			return;
		}
}

void th__child_del(pid_t pid)
{
	for (int i = 0; i < MAX_CHILDREN; i++)
		if (children[i] == pid)
			children[i] = 0;
}

void th__registry_forget(void)
{
	for (int i = 0; i < MAX_DAEMONS; i++)
		daemons[i] = NULL;
	for (int i = 0; i < MAX_CHILDREN; i++)
		children[i] = 0;
}

/* Removes the folder's known files and the folder (async-signal-safe). */
static void remove_dir(struct th_daemon *d)
{
	if (!d->dir[0])
		return;
	unlink(d->config);
	unlink(d->log);
	unlink(d->sock);
	rmdir(d->dir);
	d->dir[0] = '\0';
}

/* Removes anything else a test left in the folder too. */
static void remove_dir_all(struct th_daemon *d)
{
	DIR *dp;
	struct dirent *e;
	char path[sizeof d->dir + 1 + 256];

	if (!d->dir[0])
		return;
	dp = opendir(d->dir);
	if (dp) {
		while ((e = readdir(dp)) != NULL) {
			if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
				continue;
			snprintf(path, sizeof path, "%s/%s", d->dir, e->d_name);
			unlink(path);
		}
		closedir(dp);
	}
	remove_dir(d);
}

static void kill_children(void)
{
	for (int i = 0; i < MAX_CHILDREN; i++) {
		pid_t p = children[i];
		if (p > 0) {
			kill(p, SIGKILL);
			waitpid(p, NULL, 0);
			children[i] = 0;
		}
	}
}

void th_kill_children(void)
{
	kill_children();
}

void th_cleanup_all(void)
{
	kill_children();
	for (int i = 0; i < MAX_DAEMONS; i++) {
		struct th_daemon *d = daemons[i];
		if (d)
			th_daemon_kill(d);
	}
}

/* ---- guard ---- */

static void on_alarm(int sig)
{
	static const char msg[] =
		"testlib: test timed out; killing its children and daemons\n";
	ssize_t w = write(STDERR_FILENO, msg, sizeof msg - 1);
	(void)w;
	(void)sig;
	kill_children();
	for (int i = 0; i < MAX_DAEMONS; i++) {
		struct th_daemon *d = daemons[i];
		if (d && d->pid > 0) {
			kill(d->pid, SIGKILL);
			waitpid(d->pid, NULL, 0);
			d->pid = 0;
		}
		if (d)
			remove_dir(d);
	}
	_exit(1);
}

void th_guard_arm(unsigned seconds)
{
	struct sigaction sa = { .sa_handler = on_alarm };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGALRM, &sa, NULL);
	alarm(seconds);
}

void th_guard_disarm(void)
{
	alarm(0);
}

/* ---- the daemon ---- */

const char *th_daemon_path(void)
{
	const char *p = getenv("CAPDSMD");
	return p && p[0] ? p : NULL;
}

static int write_config(const struct th_daemon *d, const struct th_config *c)
{
	FILE *f = fopen(d->config, "w");
	int rc = 0;

	if (!f)
		return -errno;
	fprintf(f,
	        "[node]\nid = 0\nsocket = %s\nlog_level = debug\n",
	        d->sock);
	if (c->max_payload)
		fprintf(f, "max_payload = %u\n", c->max_payload);
	fprintf(f,
	        "[pools]\nobjects = %u\ncaps = %u\nclients = %u\n"
	        "slots_per_client = %u\nmappings = %u\nlocks = %u\n"
	        "sturdy = %u\nframes = %u\n"
	        "[bank]\nlimit_bytes = %llu\nlimit_objects = %llu\n",
	        c->objects, c->caps, c->clients, c->slots_per_client, c->mappings,
	        c->locks, c->sturdy, c->frames,
	        (unsigned long long)c->limit_bytes,
	        (unsigned long long)c->limit_objects);
	if (ferror(f))
		rc = -EIO;
	if (fclose(f) != 0 && !rc)
		rc = -errno;
	return rc;
}

static void print_log_tail(const struct th_daemon *d)
{
	char *log = th_daemon_log(d);
	size_t n;

	if (!log)
		return;
	n = strlen(log);
	fprintf(stderr, "---- capdsmd log (%s), last part ----\n%s\n----\n",
	        d->log, n > 4000 ? log + n - 4000 : log);
	free(log);
}

int th_daemon_start(struct th_daemon *d, const struct th_config *cfg)
{
	const char *bin = th_daemon_path();
	pid_t pid;
	int rc, fd;

	memset(d, 0, sizeof *d);
	if (!bin) {
		fprintf(stderr, "testlib: CAPDSMD (path of capdsmd) is not set\n");
		return -ENOENT;
	}
	snprintf(d->dir, sizeof d->dir, "/tmp/capdsm-it-XXXXXX");
	if (!mkdtemp(d->dir)) {
		rc = -errno;
		fprintf(stderr, "testlib: mkdtemp: %s\n", strerror(errno));
		d->dir[0] = '\0';
		return rc;
	}
	snprintf(d->sock, sizeof d->sock, "%s/capdsm.sock", d->dir);
	snprintf(d->config, sizeof d->config, "%s/capdsmd.ini", d->dir);
	snprintf(d->log, sizeof d->log, "%s/capdsmd.log", d->dir);
	daemon_add(d);
	rc = write_config(d, cfg);
	if (rc) {
		fprintf(stderr, "testlib: writing %s: %s\n", d->config, strerror(-rc));
		goto fail;
	}
	fd = open(d->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (fd < 0) {
		rc = -errno;
		goto fail;
	}
	pid = fork();
	if (pid < 0) {
		rc = -errno;
		close(fd);
		goto fail;
	}
	if (pid == 0) {
		sigset_t none;
		int devnull = open("/dev/null", O_RDONLY);
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		signal(SIGALRM, SIG_DFL);
		alarm(0);
		if (devnull >= 0)
			dup2(devnull, STDIN_FILENO);
		dup2(fd, STDOUT_FILENO);
		dup2(fd, STDERR_FILENO);
		execl(bin, "capdsmd", "--config", d->config, (char *)NULL);
		_exit(127);
	}
	close(fd);
	d->pid = pid;

	/* Ready when the daemon logs "listening": it logs that after
	 * listen(2), so a connect then cannot be refused. */
	int64_t end = now_ms() + 10000;
	for (;;) {
		int st;
		if (waitpid(pid, &st, WNOHANG) == pid) {
			d->pid = 0;
			fprintf(stderr, "testlib: capdsmd exited at start (status 0x%x)\n",
			        st);
			print_log_tail(d);
			rc = -ECHILD;
			goto fail;
		}
		if (th_log_contains(d, "msg=\"listening\""))
			break;
		if (now_ms() > end) {
			fprintf(stderr, "testlib: capdsmd did not start listening\n");
			print_log_tail(d);
			rc = -ETIMEDOUT;
			goto fail;
		}
		sleep_ms(2);
	}
	return 0;
fail:
	th_daemon_kill(d);
	return rc;
}

bool th_daemon_alive(struct th_daemon *d)
{
	int st;

	if (d->pid <= 0)
		return false;
	if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
		fprintf(stderr, "testlib: capdsmd died (status 0x%x)\n", st);
		print_log_tail(d);
		d->pid = 0;
		return false;
	}
	return kill(d->pid, 0) == 0;
}

void th_daemon_kill(struct th_daemon *d)
{
	if (d->pid > 0) {
		kill(d->pid, SIGKILL);
		waitpid(d->pid, NULL, 0);
		d->pid = 0;
	}
	remove_dir_all(d);
	daemon_del(d);
}

int th_daemon_stop(struct th_daemon *d)
{
	int st = 0, rc = 0;
	pid_t w = 0;

	if (d->pid <= 0) {
		if (d->dir[0]) {
			fprintf(stderr, "testlib: capdsmd was not running at stop\n");
			print_log_tail(d);
			rc = -1;
		}
		th_daemon_kill(d);
		return rc;
	}
	kill(d->pid, SIGTERM);
	for (int64_t end = now_ms() + 5000; now_ms() < end;) {
		w = waitpid(d->pid, &st, WNOHANG);
		if (w == d->pid)
			break;
		sleep_ms(2);
	}
	if (w != d->pid) {
		fprintf(stderr, "testlib: capdsmd ignored SIGTERM for 5 s\n");
		rc = -1;
	} else {
		d->pid = 0;
		if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
			if (WIFSIGNALED(st))
				fprintf(stderr, "testlib: capdsmd killed by signal %d\n",
				        WTERMSIG(st));
			else
				fprintf(stderr, "testlib: capdsmd exited with status %d\n",
				        WEXITSTATUS(st));
			rc = -1;
		} else if (access(d->sock, F_OK) == 0) {
			fprintf(stderr, "testlib: capdsmd left its socket %s\n", d->sock);
			rc = -1;
		}
	}
	if (rc)
		print_log_tail(d);
	th_daemon_kill(d);
	return rc;
}

int th_daemon_fd_count(const struct th_daemon *d)
{
	char path[64];
	DIR *dp;
	struct dirent *e;
	int n = 0;

	snprintf(path, sizeof path, "/proc/%d/fd", (int)d->pid);
	dp = opendir(path);
	if (!dp)
		return -errno;
	while ((e = readdir(dp)) != NULL)
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
			n++;
	closedir(dp);
	return n;
}

char *th_daemon_log(const struct th_daemon *d)
{
	FILE *f = fopen(d->log, "r");
	char *buf = NULL;
	size_t len = 0, cap = 0;

	if (!f)
		return NULL;
	for (;;) {
		if (cap - len < 4096) {
			char *nb = realloc(buf, cap + 65536);
			if (!nb)
				break;
			buf = nb;
			cap += 65536;
		}
		size_t k = fread(buf + len, 1, cap - len - 1, f);
		if (k == 0)
			break;
		len += k;
	}
	fclose(f);
	if (buf)
		buf[len] = '\0';
	return buf;
}

bool th_log_contains(const struct th_daemon *d, const char *needle)
{
	char *log = th_daemon_log(d);
	bool found = log && strstr(log, needle) != NULL;
	free(log);
	return found;
}

int th_wait_log(const struct th_daemon *d, const char *needle, int timeout_ms)
{
	for (int64_t end = now_ms() + timeout_ms;;) {
		if (th_log_contains(d, needle))
			return 0;
		if (now_ms() > end)
			return -ETIMEDOUT;
		sleep_ms(2);
	}
}
