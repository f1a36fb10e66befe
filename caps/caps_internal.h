/* caps_internal.h — plumbing of caps/ that tests and debug builds of the
 * daemon may call, but that is not part of the contract in caps.h.
 */
#ifndef CAPDSM_CAPS_INTERNAL_H
#define CAPDSM_CAPS_INTERNAL_H

#include "caps.h"

/* Walks every pool and checks every structural invariant (C1, C3, links of
 * the derivation trees and bank tree, back pointers from capabilities to
 * their holders, free lists, and the counters of cap_space_stats() against a
 * recount). Returns 0, or -EUCLEAN with *why (if not NULL) naming the first
 * broken rule. Read only; cost O(banks * records), meant for tests and
 * debug builds, not for the request path. */
int cap__audit(const struct cap_space *cs, const char **why);

#endif /* CAPDSM_CAPS_INTERNAL_H */
