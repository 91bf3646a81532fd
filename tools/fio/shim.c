/*
 * The thinnest layer between fio and Peerless: it owns what Rust must not lay out
 * itself (struct thread_data, io_u, fio_file, ioengine_ops, fio_option, all from fio's
 * own headers of the exact installed version) and forwards every engine op to an
 * extern "C" Rust function with plain arguments (src/ffi.rs).
 *
 * Built by build.rs only when FIO_SRC names a configured fio source tree.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config-host.h"
#include "fio.h"
#include "optgroup.h"

/* Mirrors `Event` in src/ffi.rs. */
struct peerless_event {
	void *io_u;
	int32_t error;
};

/* Operation kinds, mirroring `Op` in src/ffi.rs. */
enum { PEERLESS_READ = 0, PEERLESS_WRITE = 1, PEERLESS_TRIM = 2, PEERLESS_FLUSH = 3 };
/* Queue results besides a negative errno. */
enum { PEERLESS_QUEUED = 0, PEERLESS_BUSY = 1 };

#define ERR_BYTES 512

extern void *peerless_nvmf_setup(const char *hostnqn, const char *digest_enable, const char *dhchap_key,
				 const char *dhchap_ctrlr_key, const char *psk, char *err, size_t err_len);
extern void *peerless_bdev_setup(const char *json_conf, char *err, size_t err_len);
extern int peerless_add_file(void *engine, unsigned int fileno, const char *name, uint64_t *size,
			     char *err, size_t err_len);
extern int peerless_open_file(void *engine, unsigned int fileno, unsigned int depth, uint64_t max_bs,
			      char *err, size_t err_len);
extern void peerless_close_file(void *engine, unsigned int fileno);
extern int peerless_queue(void *engine, unsigned int fileno, int op, uint64_t offset, uint64_t len,
			  void *buf, void *io_u);
extern int peerless_getevents(void *engine, unsigned int min, unsigned int max, int64_t timeout_ns,
			      struct peerless_event *out);
extern void peerless_cleanup(void *engine);

/* Engine options. fio keeps a pointer to the thread_data in the first word. */
struct peerless_options {
	void *pad;
	char *hostnqn;
	char *digest_enable;
	char *dhchap_key;
	char *dhchap_ctrlr_key;
	char *psk;
	char *json_conf;
	char *spdk_json_conf;
};

/* Per fio thread: the Rust engine and the events the last getevents returned. */
struct peerless_td {
	void *engine;
	struct peerless_event *events;
	unsigned int capacity;
};

/* The e2e test also looks for this text to tell a plugin with engines from a bare cdylib. */
static int require_thread_mode(struct thread_data *td)
{
	if (!td->o.use_thread) {
		log_err("%s requires thread=1 (fio --thread=1), as SPDK's plugins do\n", td->io_ops->name);
		return 1;
	}
	return 0;
}

/* Hands every file to Rust; Rust answers with its size (the namespace or bdev size). */
static int add_files(struct thread_data *td, void *engine)
{
	char err[ERR_BYTES];
	struct fio_file *f;
	unsigned int i;

	for_each_file(td, f, i) {
		uint64_t size = 0;
		if (peerless_add_file(engine, f->fileno, f->file_name, &size, err, sizeof(err))) {
			log_err("%s: %s\n", td->io_ops->name, err);
			return 1;
		}
		f->real_file_size = size;
		f->filetype = FIO_TYPE_BLOCK;
		fio_file_set_size_known(f);
	}
	return 0;
}

static int finish_setup(struct thread_data *td, void *engine, const char *err)
{
	struct peerless_td *ptd;

	if (!engine) {
		log_err("%s: %s\n", td->io_ops->name, err);
		return 1;
	}
	ptd = calloc(1, sizeof(*ptd));
	if (!ptd) {
		peerless_cleanup(engine);
		return 1;
	}
	ptd->engine = engine;
	td->io_ops_data = ptd;
	return add_files(td, engine);
}

static int nvmf_setup(struct thread_data *td)
{
	struct peerless_options *o = td->eo;
	char err[ERR_BYTES] = "";

	if (require_thread_mode(td))
		return 1;
	return finish_setup(td,
			    peerless_nvmf_setup(o->hostnqn, o->digest_enable, o->dhchap_key, o->dhchap_ctrlr_key, o->psk,
						err, sizeof(err)),
			    err);
}

static int bdev_setup(struct thread_data *td)
{
	struct peerless_options *o = td->eo;
	const char *conf = o->json_conf ? o->json_conf : o->spdk_json_conf;
	char err[ERR_BYTES] = "";

	if (require_thread_mode(td))
		return 1;
	if (!conf) {
		log_err("%s: json_conf=<SPDK JSON config> is required\n", td->io_ops->name);
		return 1;
	}
	return finish_setup(td, peerless_bdev_setup(conf, err, sizeof(err)), err);
}

/* Runs in the job's thread after setup (fio's default create_serialize=1). */
static int peerless_init(struct thread_data *td)
{
	struct peerless_td *ptd = td->io_ops_data;

	if (require_thread_mode(td))
		return 1;
	if (!ptd) {
		log_err("%s: create_serialize=0 is not supported (setup must run before init)\n",
			td->io_ops->name);
		return 1;
	}
	ptd->capacity = td->o.iodepth ? td->o.iodepth : 1;
	ptd->events = calloc(ptd->capacity, sizeof(*ptd->events));
	return ptd->events ? 0 : 1;
}

static int peerless_open(struct thread_data *td, struct fio_file *f)
{
	struct peerless_td *ptd = td->io_ops_data;
	char err[ERR_BYTES] = "";

	if (peerless_open_file(ptd->engine, f->fileno, ptd->capacity, td_max_bs(td), err, sizeof(err))) {
		log_err("%s: %s: %s\n", td->io_ops->name, f->file_name, err);
		return 1;
	}
	return 0;
}

static int peerless_close(struct thread_data *td, struct fio_file *f)
{
	struct peerless_td *ptd = td->io_ops_data;

	peerless_close_file(ptd->engine, f->fileno);
	return 0;
}

static enum fio_q_status peerless_queue_io(struct thread_data *td, struct io_u *io_u)
{
	struct peerless_td *ptd = td->io_ops_data;
	int op, ret;

	switch (io_u->ddir) {
	case DDIR_READ: op = PEERLESS_READ; break;
	case DDIR_WRITE: op = PEERLESS_WRITE; break;
	case DDIR_TRIM: op = PEERLESS_TRIM; break;
	case DDIR_SYNC:
	case DDIR_DATASYNC:
	case DDIR_SYNC_FILE_RANGE: op = PEERLESS_FLUSH; break;
	default:
		io_u->error = EINVAL;
		return FIO_Q_COMPLETED;
	}
	ret = peerless_queue(ptd->engine, io_u->file->fileno, op, io_u->offset, io_u->xfer_buflen,
			     io_u->xfer_buf, io_u);
	if (ret == PEERLESS_QUEUED)
		return FIO_Q_QUEUED;
	if (ret == PEERLESS_BUSY)
		return FIO_Q_BUSY;
	io_u->error = -ret;
	io_u->resid = io_u->xfer_buflen;
	return FIO_Q_COMPLETED;
}

static int peerless_getevents_io(struct thread_data *td, unsigned int min, unsigned int max,
				 const struct timespec *t)
{
	struct peerless_td *ptd = td->io_ops_data;
	int64_t timeout_ns = t ? (int64_t)t->tv_sec * 1000000000LL + t->tv_nsec : -1;
	int count, i;

	if (max > ptd->capacity)
		max = ptd->capacity;
	if (min > max)
		min = max;
	count = peerless_getevents(ptd->engine, min, max, timeout_ns, ptd->events);
	for (i = 0; i < count; i++) {
		struct io_u *io_u = ptd->events[i].io_u;
		io_u->error = ptd->events[i].error;
		/* An error moved none of the bytes as far as fio's accounting goes. */
		io_u->resid = io_u->error ? io_u->xfer_buflen : 0;
	}
	return count;
}

static struct io_u *peerless_event_io(struct thread_data *td, int event)
{
	struct peerless_td *ptd = td->io_ops_data;

	return ptd->events[event].io_u;
}

static int peerless_invalidate(struct thread_data *td, struct fio_file *f)
{
	return 0;
}

static void peerless_cleanup_td(struct thread_data *td)
{
	struct peerless_td *ptd = td->io_ops_data;

	if (!ptd)
		return;
	peerless_cleanup(ptd->engine);
	free(ptd->events);
	free(ptd);
	td->io_ops_data = NULL;
}

static struct fio_option nvmf_options[] = {
	{
		.name = "hostnqn",
		.lname = "Host NQN",
		.type = FIO_OPT_STR_STORE,
		.off1 = offsetof(struct peerless_options, hostnqn),
		.help = "Host NQN to connect as",
		.category = FIO_OPT_C_ENGINE,
		.group = FIO_OPT_G_INVALID,
	},
	{
		.name = "digest_enable",
		.lname = "NVMe/TCP digests",
		.type = FIO_OPT_STR_STORE,
		.off1 = offsetof(struct peerless_options, digest_enable),
		.help = "NVMe/TCP PDU digests (NONE|HEADER|DATA|BOTH)",
		.category = FIO_OPT_C_ENGINE,
		.group = FIO_OPT_G_INVALID,
	},
	{
		.name = "dhchap_key",
		.lname = "DH-HMAC-CHAP key file",
		.type = FIO_OPT_STR_STORE,
		.off1 = offsetof(struct peerless_options, dhchap_key),
		.help = "DH-HMAC-CHAP key file (DHHC-1:...), used when the target asks the host to authenticate",
		.category = FIO_OPT_C_ENGINE,
		.group = FIO_OPT_G_INVALID,
	},
	{
		.name = "dhchap_ctrlr_key",
		.lname = "DH-HMAC-CHAP controller key file",
		.type = FIO_OPT_STR_STORE,
		.off1 = offsetof(struct peerless_options, dhchap_ctrlr_key),
		.help = "DH-HMAC-CHAP controller key file: the target proves itself too",
		.category = FIO_OPT_C_ENGINE,
		.group = FIO_OPT_G_INVALID,
	},
	{
		.name = "psk",
		.lname = "NVMe/TCP TLS PSK file",
		.type = FIO_OPT_STR_STORE,
		.off1 = offsetof(struct peerless_options, psk),
		.help = "TLS PSK file (NVMeTLSkey-1:...): connect over TLS 1.3 to a secure_channel listener",
		.category = FIO_OPT_C_ENGINE,
		.group = FIO_OPT_G_INVALID,
	},
	{ .name = NULL },
};

static struct fio_option bdev_options[] = {
	{
		.name = "json_conf",
		.lname = "Peerless JSON config",
		.type = FIO_OPT_STR_STORE,
		.off1 = offsetof(struct peerless_options, json_conf),
		.help = "SPDK-format JSON config that creates the bdevs",
		.category = FIO_OPT_C_ENGINE,
		.group = FIO_OPT_G_INVALID,
	},
	{
		.name = "spdk_json_conf",
		.lname = "SPDK JSON config",
		.type = FIO_OPT_STR_STORE,
		.off1 = offsetof(struct peerless_options, spdk_json_conf),
		.help = "SPDK's name for json_conf",
		.category = FIO_OPT_C_ENGINE,
		.group = FIO_OPT_G_INVALID,
	},
	{ .name = NULL },
};

#define PEERLESS_FLAGS (FIO_RAWIO | FIO_NOEXTEND | FIO_NODISKUTIL | FIO_MEMALIGN | FIO_DISKLESSIO)

static struct ioengine_ops nvmf_ops = {
	.name = "peerless_nvmf",
	.version = FIO_IOOPS_VERSION,
	.flags = PEERLESS_FLAGS,
	.setup = nvmf_setup,
	.init = peerless_init,
	.queue = peerless_queue_io,
	.getevents = peerless_getevents_io,
	.event = peerless_event_io,
	.cleanup = peerless_cleanup_td,
	.open_file = peerless_open,
	.close_file = peerless_close,
	.invalidate = peerless_invalidate,
	.option_struct_size = sizeof(struct peerless_options),
	.options = nvmf_options,
};

static struct ioengine_ops bdev_ops = {
	.name = "peerless_bdev",
	.version = FIO_IOOPS_VERSION,
	.flags = PEERLESS_FLAGS,
	.setup = bdev_setup,
	.init = peerless_init,
	.queue = peerless_queue_io,
	.getevents = peerless_getevents_io,
	.event = peerless_event_io,
	.cleanup = peerless_cleanup_td,
	.open_file = peerless_open,
	.close_file = peerless_close,
	.invalidate = peerless_invalidate,
	.option_struct_size = sizeof(struct peerless_options),
	.options = bdev_options,
};

static void __attribute__((constructor)) peerless_register(void)
{
	register_ioengine(&nvmf_ops);
	register_ioengine(&bdev_ops);
}

static void __attribute__((destructor)) peerless_unregister(void)
{
	unregister_ioengine(&nvmf_ops);
	unregister_ioengine(&bdev_ops);
}
