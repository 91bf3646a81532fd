/* The rdma-core API spdk-sys binds (feature `rdma`): libibverbs and librdmacm. build.rs
 * runs bindgen over this file with an allowlist, so only what is named there reaches Rust. */
#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

/* verbs.h's fast-path calls are static inline functions (they jump through the
 * provider's ops table) and ibv_reg_mr / ibv_query_port are macros over inline
 * helpers: none has a symbol. rdma_wrapper.c compiles them into real functions. */
int peerless_ibv_post_send(struct ibv_qp *qp, struct ibv_send_wr *wr, struct ibv_send_wr **bad_wr);
int peerless_ibv_post_recv(struct ibv_qp *qp, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad_wr);
int peerless_ibv_post_srq_recv(struct ibv_srq *srq, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad_wr);
int peerless_ibv_poll_cq(struct ibv_cq *cq, int num_entries, struct ibv_wc *wc);
int peerless_ibv_req_notify_cq(struct ibv_cq *cq, int solicited_only);
struct ibv_mr *peerless_ibv_reg_mr(struct ibv_pd *pd, void *addr, size_t length, int access);
int peerless_ibv_query_port(struct ibv_context *context, uint8_t port_num, struct ibv_port_attr *port_attr);
