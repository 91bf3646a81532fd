/* The Ceph client API spdk-sys binds: librados (cluster connection, pool context) and
 * librbd (image open, size, asynchronous I/O). build.rs keeps only what it names. */
#include <rados/librados.h>
#include <rbd/librbd.h>
