/* testlib_internal.h — what the files of tests/lib share: the registry of
 * children that th_cleanup_all() and the alarm guard take down. */
#ifndef CAPDSM_TESTLIB_INTERNAL_H
#define CAPDSM_TESTLIB_INTERNAL_H

#include <sys/types.h>

void th__child_add(pid_t pid);
void th__child_del(pid_t pid);
/* Called in a freshly forked child: it owns none of the parent's entries. */
void th__registry_forget(void);

#endif
