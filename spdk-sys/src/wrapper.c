/* Real symbols for DPDK's static inline functions and per-lcore macros, which bindgen
 * sees but cannot link against. */
#include "wrapper.h"

unsigned peerless_rte_lcore_id(void)
{
	return rte_lcore_id();
}

int peerless_rte_errno(void)
{
	return rte_errno;
}
