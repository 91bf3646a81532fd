/* The DPDK API spdk-sys binds: EAL, memory, memzones, lcores, VFIO and the PCI bus.
 * build.rs runs bindgen over this file with an allowlist, so only what is named in
 * build.rs reaches Rust. */
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_malloc.h>
#include <rte_memory.h>
#include <rte_memzone.h>
#include <rte_bus.h>
#include <rte_dev.h>
#include <rte_pci.h>
#include <rte_bus_pci.h>
#include <rte_vfio.h>
#include <rte_log.h>

/* Static inline functions and macros have no symbol to link against: wrapper.c
 * compiles them into real functions. */
unsigned peerless_rte_lcore_id(void);
int peerless_rte_errno(void);
