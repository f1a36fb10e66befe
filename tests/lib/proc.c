/* proc.c — forked client processes, pipes between them, counters of the
 * daemon, data patterns, and the probe for userfaultfd support. */
#include "testlib.h"
#include "testlib_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

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

/* ---- children ---- */

pid_t th_fork(unsigned seconds)
{
	pid_t parent = getpid();
	pid_t pid;

	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid > 0) {
		th__child_add(pid);
		return pid;
	}
	th__registry_forget();
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent)
		_exit(99); /* the parent died before prctl */
	signal(SIGSEGV, SIG_DFL);
	signal(SIGBUS, SIG_DFL);
	signal(SIGALRM, SIG_DFL);
	alarm(seconds);
	return 0;
}

int th_wait(pid_t pid, int timeout_ms, int *status)
{
	int64_t end = now_ms() + timeout_ms;

	for (;;) {
		pid_t w = waitpid(pid, status, WNOHANG);
		if (w == pid) {
			th__child_del(pid);
			return 0;
		}
		if (w < 0 && errno != EINTR) {
			th__child_del(pid);
			return -errno;
		}
		if (now_ms() > end) {
			kill(pid, SIGKILL);
			waitpid(pid, status, 0);
			th__child_del(pid);
			fprintf(stderr, "testlib: child %d did not finish in %d ms\n",
			        (int)pid, timeout_ms);
			return -ETIMEDOUT;
		}
		sleep_ms(1);
	}
}

int th_wait_exit(pid_t pid, int timeout_ms)
{
	int st = 0;
	int rc = th_wait(pid, timeout_ms, &st);

	if (rc)
		return rc;
	if (WIFSIGNALED(st))
		return -1000 - WTERMSIG(st);
	return WEXITSTATUS(st);
}

_Noreturn void th_child_fail(const char *file, int line, const char *what,
                             int code)
{
	fprintf(stderr, "child %d: %s:%d: check failed: %s\n", (int)getpid(),
	        file, line, what);
	_exit(code);
}

/* ---- pipes ---- */

static int wait_readable(int fd, int timeout_ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	int64_t end = now_ms() + timeout_ms;

	for (;;) {
		int left = (int)(end - now_ms());
		if (left < 0)
			left = 0;
		int r = poll(&p, 1, left);
		if (r > 0)
			return 0;
		if (r == 0)
			return -ETIMEDOUT;
		if (errno != EINTR)
			return -errno;
	}
}

int th_pipe_send(int fd, char c)
{
	ssize_t w;

	do
		w = write(fd, &c, 1);
	while (w < 0 && errno == EINTR);
	return w == 1 ? 0 : -EPIPE;
}

int th_pipe_recv(int fd, int timeout_ms)
{
	unsigned char c;
	ssize_t r;
	int rc = wait_readable(fd, timeout_ms);

	if (rc)
		return rc;
	do
		r = read(fd, &c, 1);
	while (r < 0 && errno == EINTR);
	if (r == 1)
		return c;
	return r == 0 ? -EPIPE : -errno;
}

int th_pipe_send_str(int fd, const char *s)
{
	size_t n = strlen(s) + 1;

	for (size_t i = 0; i < n; i++)
		if (th_pipe_send(fd, s[i]) != 0)
			return -EPIPE;
	return 0;
}

int th_pipe_recv_str(int fd, char *buf, size_t cap, int timeout_ms)
{
	for (size_t i = 0; i < cap; i++) {
		int c = th_pipe_recv(fd, timeout_ms);
		if (c < 0)
			return c;
		buf[i] = (char)c;
		if (c == 0)
			return 0;
	}
	return -EMSGSIZE;
}

/* ---- counters ---- */

struct stat_find {
	const char *name;
	uint64_t value;
	bool found;
};

static void stat_cb(const char *name, uint64_t value, void *arg)
{
	struct stat_find *sf = arg;

	if (strcmp(name, sf->name) == 0) {
		sf->value = value;
		sf->found = true;
	}
}

int th_stat(struct capdsm *c, const char *name, uint64_t *value)
{
	struct stat_find sf = { .name = name };
	int rc = capdsm_stats(c, stat_cb, &sf);

	if (rc)
		return rc;
	if (!sf.found)
		return -ENOENT;
	*value = sf.value;
	return 0;
}

int th_wait_stat(struct capdsm *c, const char *name, uint64_t want,
                 int timeout_ms)
{
	int64_t end = now_ms() + timeout_ms;

	for (;;) {
		uint64_t v;
		int rc = th_stat(c, name, &v);
		if (rc)
			return rc;
		if (v == want)
			return 0;
		if (now_ms() > end) {
			fprintf(stderr, "testlib: counter %s is %llu, waited for %llu\n",
			        name, (unsigned long long)v, (unsigned long long)want);
			return -ETIMEDOUT;
		}
		sleep_ms(2);
	}
}

/* ---- data ---- */

void th_fill(void *buf, size_t len, uint32_t seed)
{
	uint8_t *p = buf;

	for (size_t i = 0; i < len; i++)
		p[i] = th_pattern(seed, i);
}

long th_check(const void *buf, size_t len, uint32_t seed)
{
	const volatile uint8_t *p = buf;

	for (size_t i = 0; i < len; i++)
		if (p[i] != th_pattern(seed, i))
			return (long)i;
	return -1;
}

/* ---- userfaultfd ---- */

bool th_uffd_available(void)
{
	struct uffdio_api api = {
		.api = UFFD_API,
		.features = UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_MINOR_SHMEM |
		            UFFD_FEATURE_WP_HUGETLBFS_SHMEM | UFFD_FEATURE_THREAD_ID,
	};
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

	if (fd < 0 && (errno == EPERM || errno == EACCES))
		fd = (int)syscall(SYS_userfaultfd,
		                  O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
	if (fd < 0)
		return false;
	bool ok = ioctl(fd, UFFDIO_API, &api) == 0;
	close(fd);
	return ok;
}
