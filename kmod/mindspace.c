// SPDX-License-Identifier: GPL-2.0-only
/*
 * llmos: mindspaces, named and permission-checked memory regions.
 *
 * A mindspace is reached through an anonymous-inode file (the mindspace
 * fd). Each such file holds one reference; a persistent mindspace also
 * holds one for the namespace. A mapping holds its file, so a mindspace is
 * never freed while mapped. The last reference is dropped with
 * kref_put_mutex() under llmos_ms_lock, which removes the mindspace from
 * the id and name tables before it is freed: a lookup under the lock never
 * sees a mindspace on its way out.
 *
 * Host backing: pages are allocated on first touch in the fault handler
 * (zeroed, on the requested node, charged to the faulting task's memory
 * cgroup) and kept in an xarray by page offset until the mindspace is
 * freed. dma-buf backing: the imported dma-buf's reference is kept and
 * mappings go to the exporter through dma_buf_mmap().
 *
 * Quotas are charged for the full length at creation, so a fault never
 * fails for a quota.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/anon_inodes.h>
#include <linux/capability.h>
#include <linux/cred.h>
#include <linux/ctype.h>
#include <linux/debugfs.h>
#include <linux/dma-buf.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/gfp.h>
#include <linux/hashtable.h>
#include <linux/kref.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/mutex.h>
#include <linux/nodemask.h>
#include <linux/overflow.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/stringhash.h>
#include <linux/timekeeping.h>
#include <linux/uaccess.h>
#include <linux/uidgid.h>
#include <linux/xarray.h>

#include <linux/llmos.h>

#include "llmos.h"

/* Longest mindspace: 16 TiB. */
#define LLMOS_MS_MAX_LENGTH BIT_ULL(44)
/* The first published struct llmos_ms_info ends with its name. */
#define LLMOS_MS_INFO_MIN_SIZE offsetofend(struct llmos_ms_info, name)

static unsigned long user_quota_bytes;
module_param(user_quota_bytes, ulong, 0644);
MODULE_PARM_DESC(user_quota_bytes,
		 "bytes of mindspaces one uid may own unless set by QUOTA (0 = unlimited)");

static unsigned long total_limit_bytes;
module_param(total_limit_bytes, ulong, 0644);
MODULE_PARM_DESC(total_limit_bytes,
		 "bytes of all mindspaces together (0 = unlimited)");

/**
 * struct llmos_ms - a mindspace
 * @ref: one per mindspace file, plus one while @persistent
 * @id: unique id, never reused while the module is loaded
 * @flags: LLMOS_MS_* given at creation
 * @mode: permission bits
 * @uid: owner
 * @gid: owner group
 * @node: NUMA node for host pages, or NUMA_NO_NODE
 * @length: size in bytes
 * @nr_pages: size in pages
 * @created_ns: creation time, CLOCK_REALTIME
 * @name: name, empty when anonymous or destroyed (under llmos_ms_lock)
 * @name_node: entry in llmos_ms_names while named (under llmos_ms_lock)
 * @persistent: the namespace holds a reference (under llmos_ms_lock)
 * @live: its MS_CREATE answered; until then it has its id and name but is
 *	not found by them, nor listed (under llmos_ms_lock)
 * @user: the quota account charged for @length
 * @pages: host pages by page offset (the xarray's own lock)
 * @dmabuf: the imported dma-buf, or NULL for host backing
 * @resident: host pages allocated
 * @map_count: VMAs mapping it (host backing)
 * @open_count: mindspace files
 */
struct llmos_ms {
	struct kref ref;
	u64 id;
	u32 flags;
	umode_t mode;
	kuid_t uid;
	kgid_t gid;
	int node;
	u64 length;
	pgoff_t nr_pages;
	u64 created_ns;
	char name[LLMOS_NAME_MAX];
	struct hlist_node name_node;
	bool persistent;
	bool live;
	struct llmos_user *user;
	struct xarray pages;
	struct dma_buf *dmabuf;
	atomic_long_t resident;
	atomic_t map_count;
	atomic_t open_count;
};

/**
 * struct llmos_user - quota account of one uid
 * @uid: the uid
 * @used: bytes of the mindspaces it owns
 * @count: mindspaces charged to it (they point to it)
 * @limit: its limit; 0 = the module default
 */
struct llmos_user {
	kuid_t uid;
	u64 used;
	u64 count;
	u64 limit;
};

/*
 * Protects llmos_ms_ids, llmos_ms_names, llmos_users, llmos_ms_last_id,
 * llmos_charged, and the name, name_node, persistent and live fields of
 * every mindspace.
 */
static DEFINE_MUTEX(llmos_ms_lock);
static DEFINE_XARRAY(llmos_ms_ids);
static DEFINE_HASHTABLE(llmos_ms_names, 8);
static DEFINE_XARRAY(llmos_users);
static u64 llmos_ms_last_id;
static u64 llmos_charged;

/* Object counters, shown in debugfs: all zero when nothing is left. */
static atomic_long_t llmos_nr_ms;
static atomic_long_t llmos_nr_pages;
static atomic_long_t llmos_nr_dmabufs;

static const struct file_operations llmos_ms_fops;

static u32 llmos_name_hash(const char *name)
{
	return full_name_hash(NULL, name, strlen(name));
}

static bool llmos_name_alnum(char c)
{
	/* ASCII only: the kernel's isalnum() takes Latin-1 letters too */
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       (c >= '0' && c <= '9');
}

/*
 * A name is NUL-terminated within LLMOS_NAME_MAX, starts with a letter, a
 * digit or '_', goes on with letters, digits and "._:-", and is not all
 * digits (tools read such a string as an id). Returns its length (0 for
 * the empty name) or -EINVAL.
 */
static int llmos_name_check(const char *name)
{
	size_t len = strnlen(name, LLMOS_NAME_MAX);
	bool digits = true;
	size_t i;

	if (len == LLMOS_NAME_MAX)
		return -EINVAL;
	if (len && !llmos_name_alnum(name[0]) && name[0] != '_')
		return -EINVAL;
	for (i = 0; i < len; i++) {
		if (!llmos_name_alnum(name[i]) && !strchr("._:-", name[i]))
			return -EINVAL;
		digits &= !!isdigit(name[i]);
	}
	if (len && digits)
		return -EINVAL;
	return len;
}

static struct llmos_ms *llmos_ms_find_name(const char *name)
{
	struct llmos_ms *ms;

	lockdep_assert_held(&llmos_ms_lock);
	hash_for_each_possible(llmos_ms_names, ms, name_node,
			       llmos_name_hash(name)) {
		if (!strcmp(ms->name, name))
			return ms;
	}
	return NULL;
}

/*
 * The mindspace named by exactly one of @id and @name, or an ERR_PTR:
 * -EINVAL for both or neither or a bad name, -ENOENT for none.
 */
static struct llmos_ms *llmos_ms_find(u64 id, const char *name)
{
	struct llmos_ms *ms;
	int len;

	lockdep_assert_held(&llmos_ms_lock);
	len = llmos_name_check(name);
	if (len < 0 || (!id == !len))
		return ERR_PTR(-EINVAL);
	if (id)
		ms = xa_load(&llmos_ms_ids, id);
	else
		ms = llmos_ms_find_name(name);
	return ms && ms->live ? ms : ERR_PTR(-ENOENT);
}

/* SysV IPC style check of @want (MAY_READ | MAY_WRITE) for the caller. */
static bool llmos_ms_may(const struct llmos_ms *ms, int want)
{
	umode_t granted = ms->mode;

	if (uid_eq(current_fsuid(), ms->uid))
		granted >>= 6;
	else if (in_group_p(ms->gid))
		granted >>= 3;
	if ((want & ~granted & 0007) == 0)
		return true;
	return capable(CAP_SYS_ADMIN);
}

/**
 * llmos_ms_check_request() - may the caller name a mindspace in a request
 * @id: the mindspace, 0 for none
 * @off: the prompt's offset in it
 * @len: the prompt's length
 * @ms_len: its length is stored here (0 for none)
 *
 * A worker opens a request's mindspace with its own credentials, reads the
 * prompt and writes the output there: the submitter must be able to open
 * it read-write itself, or it could have a worker read and write what it
 * may not.
 *
 * Return: 0, -ENOENT (no such mindspace), -EACCES, or -EINVAL (the prompt
 * is not inside it).
 */
int llmos_ms_check_request(u64 id, u64 off, u64 len, u64 *ms_len)
{
	struct llmos_ms *ms;
	int ret = 0;

	*ms_len = 0;
	if (!id)
		return 0;
	mutex_lock(&llmos_ms_lock);
	ms = llmos_ms_find(id, "");
	if (IS_ERR(ms))
		ret = PTR_ERR(ms);
	else if (!llmos_ms_may(ms, MAY_READ | MAY_WRITE))
		ret = -EACCES;
	else if (off > ms->length || len > ms->length - off)
		ret = -EINVAL;
	else
		*ms_len = ms->length;
	mutex_unlock(&llmos_ms_lock);
	return ret;
}

/* Listed: what the caller may read, and its own whatever their mode. */
static bool llmos_ms_visible(const struct llmos_ms *ms)
{
	umode_t granted = ms->mode;

	if (!ms->live)
		return false;
	if (uid_eq(current_fsuid(), ms->uid))
		return true;
	if (in_group_p(ms->gid))
		granted >>= 3;
	/* Only deciding what to list: no audit record, no PF_SUPERPRIV. */
	return (granted & MAY_READ) || has_capability_noaudit(current, CAP_SYS_ADMIN);
}

static u64 llmos_user_limit(const struct llmos_user *user)
{
	u64 limit = user && user->limit ? user->limit : READ_ONCE(user_quota_bytes);

	return limit ?: LLMOS_QUOTA_UNLIMITED;
}

static struct llmos_user *llmos_user_get(kuid_t uid, bool create)
{
	struct llmos_user *user;
	int ret;

	lockdep_assert_held(&llmos_ms_lock);
	user = xa_load(&llmos_users, __kuid_val(uid));
	if (user || !create)
		return user;
	user = kzalloc(sizeof(*user), GFP_KERNEL_ACCOUNT);
	if (!user)
		return ERR_PTR(-ENOMEM);
	user->uid = uid;
	ret = xa_err(xa_store(&llmos_users, __kuid_val(uid), user, GFP_KERNEL));
	if (ret) {
		kfree(user);
		return ERR_PTR(ret);
	}
	return user;
}

/* Forget an account that no mindspace points to and that sets nothing. */
static void llmos_user_trim(struct llmos_user *user)
{
	lockdep_assert_held(&llmos_ms_lock);
	if (user->count || user->limit)
		return;
	xa_erase(&llmos_users, __kuid_val(user->uid));
	kfree(user);
}

static int llmos_charge(struct llmos_ms *ms)
{
	u64 total = READ_ONCE(total_limit_bytes);
	struct llmos_user *user;
	u64 limit, used, charged;
	int ret = 0;

	lockdep_assert_held(&llmos_ms_lock);
	/* The creator's account, its subordinate uids' included. */
	user = llmos_user_get(llmos_caller_uid(), true);
	if (IS_ERR(user))
		return PTR_ERR(user);
	limit = llmos_user_limit(user);
	/* Unlimited is still at most 2^64 - 1 bytes, in all and per uid. */
	if (check_add_overflow(user->used, ms->length, &used) ||
	    (limit != LLMOS_QUOTA_UNLIMITED && used > limit))
		ret = -EDQUOT;
	else if (check_add_overflow(llmos_charged, ms->length, &charged) ||
		 (total && charged > total))
		ret = -ENOSPC;
	if (ret) {
		llmos_user_trim(user);
		return ret;
	}
	user->used = used;
	user->count++;
	llmos_charged = charged;
	ms->user = user;
	return 0;
}

static void llmos_uncharge(struct llmos_ms *ms)
{
	lockdep_assert_held(&llmos_ms_lock);
	if (!ms->user)
		return;
	ms->user->used -= ms->length;
	ms->user->count--;
	llmos_charged -= ms->length;
	llmos_user_trim(ms->user);
	ms->user = NULL;
}

static void llmos_ms_free(struct llmos_ms *ms)
{
	struct page *page;
	unsigned long idx;
	long nr = 0;

	xa_for_each(&ms->pages, idx, page) {
		__free_page(page);
		/* A large resident mindspace has millions of pages. */
		if (!(++nr & 1023))
			cond_resched();
	}
	xa_destroy(&ms->pages);
	atomic_long_sub(nr, &llmos_nr_pages);
	if (ms->dmabuf) {
		dma_buf_put(ms->dmabuf);
		atomic_long_dec(&llmos_nr_dmabufs);
	}
	atomic_long_dec(&llmos_nr_ms);
	kfree(ms);
}

/* Called by kref_put_mutex() with llmos_ms_lock held; drops it. */
static void llmos_ms_release(struct kref *ref)
	__releases(&llmos_ms_lock)
{
	struct llmos_ms *ms = container_of(ref, struct llmos_ms, ref);

	if (ms->id)
		xa_erase(&llmos_ms_ids, ms->id);
	if (!hlist_unhashed(&ms->name_node))
		hash_del(&ms->name_node);
	llmos_uncharge(ms);
	mutex_unlock(&llmos_ms_lock);
	llmos_ms_free(ms);
}

static void llmos_ms_put(struct llmos_ms *ms)
{
	kref_put_mutex(&ms->ref, llmos_ms_release, &llmos_ms_lock);
}

/* Take the mindspace out of the namespace; returns the reference it held. */
static bool llmos_ms_unlink(struct llmos_ms *ms)
{
	bool had_ref = ms->persistent;

	lockdep_assert_held(&llmos_ms_lock);
	if (!hlist_unhashed(&ms->name_node))
		hash_del(&ms->name_node);
	ms->name[0] = '\0';
	ms->persistent = false;
	ms->flags &= ~LLMOS_MS_PERSISTENT; /* as MS_INFO reports it */
	return had_ref;
}

/*
 * A new mindspace file for @ms. Takes over one reference to @ms on success;
 * on failure the caller keeps it.
 */
static struct file *llmos_ms_file(struct llmos_ms *ms, bool writable)
{
	struct file *file;

	file = anon_inode_getfile("[llmos-mindspace]", &llmos_ms_fops, ms,
				  writable ? O_RDWR : O_RDONLY);
	if (IS_ERR(file))
		return file;
	/* lseek() finds resident pages (SEEK_DATA) and holes (SEEK_HOLE). */
	file->f_mode |= FMODE_LSEEK;
	atomic_inc(&ms->open_count);
	return file;
}

static vm_fault_t llmos_ms_fault(struct vm_fault *vmf)
{
	struct llmos_ms *ms = vmf->vma->vm_private_data;
	struct page *page, *old;

	if (vmf->pgoff >= ms->nr_pages)
		return VM_FAULT_SIGBUS;
	page = xa_load(&ms->pages, vmf->pgoff);
	if (!page) {
		page = alloc_pages_node(ms->node, GFP_HIGHUSER | __GFP_ZERO |
					__GFP_ACCOUNT, 0);
		if (!page)
			return VM_FAULT_OOM;
		old = xa_cmpxchg(&ms->pages, vmf->pgoff, NULL, page,
				 GFP_KERNEL_ACCOUNT);
		if (xa_is_err(old)) {
			__free_page(page);
			return VM_FAULT_OOM;
		}
		if (old) {
			/* Another fault on the same page won the race. */
			__free_page(page);
			page = old;
		} else {
			atomic_long_inc(&ms->resident);
			atomic_long_inc(&llmos_nr_pages);
		}
	}
	/* The mapping's reference; the xarray keeps its own. */
	get_page(page);
	vmf->page = page;
	return 0;
}

static void llmos_ms_vm_open(struct vm_area_struct *vma)
{
	struct llmos_ms *ms = vma->vm_private_data;

	atomic_inc(&ms->map_count);
}

static void llmos_ms_vm_close(struct vm_area_struct *vma)
{
	struct llmos_ms *ms = vma->vm_private_data;

	atomic_dec(&ms->map_count);
}

static const struct vm_operations_struct llmos_ms_vm_ops = {
	.open = llmos_ms_vm_open,
	.close = llmos_ms_vm_close,
	.fault = llmos_ms_fault,
};

static int llmos_ms_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct llmos_ms *ms = file->private_data;
	unsigned long pages = vma_pages(vma);

	/* A read-only file's shared mapping has VM_MAYSHARE, not VM_SHARED. */
	if (!(vma->vm_flags & VM_MAYSHARE))
		return -EINVAL;
	if (vma->vm_pgoff >= ms->nr_pages || pages > ms->nr_pages - vma->vm_pgoff)
		return -EINVAL;
	if (ms->dmabuf)
		return dma_buf_mmap(ms->dmabuf, vma, vma->vm_pgoff);

	/*
	 * A core dump would fault in every page of a mindspace (terabytes,
	 * kept after the process) to write it: it leaves them out.
	 */
	vm_flags_set(vma, VM_DONTEXPAND | VM_DONTDUMP);
	vma->vm_ops = &llmos_ms_vm_ops;
	vma->vm_private_data = ms;
	llmos_ms_vm_open(vma);
	return 0;
}

#define LLMOS_SEEK_BATCH 4096

/*
 * The first resident page at or after @idx (SEEK_DATA) or the first page
 * that is not resident (SEEK_HOLE); ms->nr_pages when there is none.
 */
static pgoff_t llmos_ms_seek_page(struct llmos_ms *ms, pgoff_t idx, int whence)
{
	struct page *page;
	unsigned int n;

	if (ms->dmabuf)
		return whence == SEEK_DATA ? idx : ms->nr_pages;
	if (whence == SEEK_DATA) {
		XA_STATE(xas, &ms->pages, idx);

		rcu_read_lock();
		page = xas_find(&xas, ms->nr_pages - 1);
		idx = page ? xas.xa_index : ms->nr_pages;
		rcu_read_unlock();
		return min(idx, ms->nr_pages);
	}
	/*
	 * Page by page to the first hole: in batches, with a reschedule
	 * between them (a touched mindspace may have billions of pages).
	 */
	do {
		XA_STATE(xas, &ms->pages, idx);

		rcu_read_lock();
		for (page = xas_load(&xas), n = 0;
		     page && idx < ms->nr_pages && n < LLMOS_SEEK_BATCH;
		     page = xas_next(&xas), n++)
			idx++;
		rcu_read_unlock();
		cond_resched();
	} while (page && idx < ms->nr_pages);
	return min(idx, ms->nr_pages);
}

/*
 * A mindspace fd seeks like a sparse file of the mindspace's length:
 * SEEK_DATA and SEEK_HOLE tell touched pages from untouched ones without
 * allocating any (a dma-buf mindspace is all data).
 */
static loff_t llmos_ms_llseek(struct file *file, loff_t offset, int whence)
{
	struct llmos_ms *ms = file->private_data;
	pgoff_t idx;
	loff_t pos;

	if (whence != SEEK_DATA && whence != SEEK_HOLE)
		return fixed_size_llseek(file, offset, whence, ms->length);
	if (offset < 0 || offset >= ms->length)
		return -ENXIO;
	idx = llmos_ms_seek_page(ms, offset >> PAGE_SHIFT, whence);
	if (whence == SEEK_DATA && idx >= ms->nr_pages)
		return -ENXIO;
	pos = max_t(loff_t, offset, (loff_t)idx << PAGE_SHIFT);
	return vfs_setpos(file, min_t(loff_t, pos, ms->length), ms->length);
}

static int llmos_ms_fops_release(struct inode *inode, struct file *file)
{
	struct llmos_ms *ms = file->private_data;

	atomic_dec(&ms->open_count);
	llmos_ms_put(ms);
	return 0;
}

static const struct file_operations llmos_ms_fops = {
	.owner = THIS_MODULE,
	.llseek = llmos_ms_llseek,
	.mmap = llmos_ms_mmap,
	.release = llmos_ms_fops_release,
	.unlocked_ioctl = llmos_ms_fops_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
};

static int llmos_ms_create_check(const struct llmos_ms_create *cmd)
{
	const u32 known = LLMOS_MS_PERSISTENT | LLMOS_MS_DMABUF | LLMOS_MS_NODE;
	bool dmabuf = cmd->flags & LLMOS_MS_DMABUF;

	if (cmd->flags & ~known || cmd->__reserved || cmd->__reserved2)
		return -EINVAL;
	if (cmd->mode & ~0777)
		return -EINVAL;
	if (!dmabuf && cmd->dmabuf_fd)
		return -EINVAL;
	if (!dmabuf && (!cmd->length || cmd->length > LLMOS_MS_MAX_LENGTH ||
			!PAGE_ALIGNED(cmd->length)))
		return -EINVAL;
	if (cmd->flags & LLMOS_MS_NODE) {
		if (dmabuf || cmd->numa_node < 0 ||
		    cmd->numa_node >= MAX_NUMNODES || !node_online(cmd->numa_node))
			return -EINVAL;
	} else if (cmd->numa_node) {
		return -EINVAL;
	}
	if (llmos_name_check(cmd->name) < 0)
		return -EINVAL;
	return 0;
}

static int llmos_ms_import(struct llmos_ms *ms, int fd, u64 length)
{
	struct dma_buf *dmabuf;

	dmabuf = dma_buf_get(fd);
	if (IS_ERR(dmabuf))
		return PTR_ERR(dmabuf);
	/*
	 * A mindspace maps its dma-buf readable and writable for anyone its
	 * mode lets in: a dma-buf shared read-only must not become writable
	 * that way, nor one shared write-only readable (mmap of the dma-buf
	 * itself needs FMODE_READ; the mindspace's own fd is always readable).
	 */
	if ((dmabuf->file->f_mode & (FMODE_READ | FMODE_WRITE)) !=
	    (FMODE_READ | FMODE_WRITE)) {
		dma_buf_put(dmabuf);
		return -EACCES;
	}
	if (!dmabuf->size || !PAGE_ALIGNED(dmabuf->size) ||
	    (length && length != dmabuf->size)) {
		dma_buf_put(dmabuf);
		return -EINVAL;
	}
	ms->dmabuf = dmabuf;
	ms->length = dmabuf->size;
	atomic_long_inc(&llmos_nr_dmabufs);
	return 0;
}

/* Undo llmos_ms_publish()'s name and persistent reference. */
static void llmos_ms_unpublish(struct llmos_ms *ms)
{
	bool had_ref;

	mutex_lock(&llmos_ms_lock);
	had_ref = llmos_ms_unlink(ms);
	mutex_unlock(&llmos_ms_lock);
	if (had_ref)
		llmos_ms_put(ms);
}

/* Give @ms an id and its name, charge it, and take the persistent ref. */
static int llmos_ms_publish(struct llmos_ms *ms)
{
	int ret;

	mutex_lock(&llmos_ms_lock);
	if (ms->name[0] && llmos_ms_find_name(ms->name)) {
		ret = -EEXIST;
		goto out_unlock;
	}
	ret = llmos_charge(ms);
	if (ret)
		goto out_unlock;
	ret = xa_insert(&llmos_ms_ids, llmos_ms_last_id + 1, ms, GFP_KERNEL);
	if (ret) {
		llmos_uncharge(ms);
		goto out_unlock;
	}
	ms->id = ++llmos_ms_last_id;
	if (ms->name[0])
		hash_add(llmos_ms_names, &ms->name_node,
			 llmos_name_hash(ms->name));
	if (ms->flags & LLMOS_MS_PERSISTENT) {
		kref_get(&ms->ref);
		ms->persistent = true;
	}
out_unlock:
	mutex_unlock(&llmos_ms_lock);
	return ret;
}

/**
 * llmos_ms_create() - LLMOS_IOC_MS_CREATE
 * @ucmd: the command, a struct llmos_ms_create
 *
 * Return: 0 with a new mindspace fd in out_fd, or a negative errno.
 */
int llmos_ms_create(struct llmos_ucmd *ucmd)
{
	struct llmos_ms_create *cmd = ucmd->cmd;
	struct llmos_ms *ms;
	struct file *file;
	int fd, ret;

	ret = llmos_ms_create_check(cmd);
	if (ret)
		return ret;

	ms = kzalloc(sizeof(*ms), GFP_KERNEL_ACCOUNT);
	if (!ms)
		return -ENOMEM;
	kref_init(&ms->ref);
	xa_init(&ms->pages);
	INIT_HLIST_NODE(&ms->name_node);
	ms->flags = cmd->flags;
	ms->mode = cmd->mode ?: 0600;
	ms->uid = current_fsuid();
	ms->gid = current_fsgid();
	ms->node = cmd->flags & LLMOS_MS_NODE ? cmd->numa_node : NUMA_NO_NODE;
	ms->length = cmd->length;
	ms->created_ns = ktime_get_real_ns();
	strscpy(ms->name, cmd->name, sizeof(ms->name));
	atomic_long_inc(&llmos_nr_ms);

	if (cmd->flags & LLMOS_MS_DMABUF) {
		ret = llmos_ms_import(ms, cmd->dmabuf_fd, cmd->length);
		if (ret)
			goto err_free;
	}
	ms->nr_pages = ms->length >> PAGE_SHIFT;

	ret = llmos_ms_publish(ms);
	if (ret)
		goto err_free;

	fd = get_unused_fd_flags(O_CLOEXEC);
	if (fd < 0) {
		ret = fd;
		goto err_unpublish;
	}
	file = llmos_ms_file(ms, true);
	if (IS_ERR(file)) {
		ret = PTR_ERR(file);
		goto err_put_fd;
	}
	cmd->out_id = ms->id;
	cmd->out_fd = fd;
	ret = llmos_ucmd_respond(ucmd, sizeof(*cmd));
	if (ret) {
		/* The file owns the initial reference now. */
		llmos_ms_unpublish(ms);
		put_unused_fd(fd);
		fput(file);
		return ret;
	}
	mutex_lock(&llmos_ms_lock);
	ms->live = true;
	mutex_unlock(&llmos_ms_lock);
	fd_install(fd, file);
	return 0;

err_put_fd:
	put_unused_fd(fd);
err_unpublish:
	llmos_ms_unpublish(ms);
	llmos_ms_put(ms);
	return ret;
err_free:
	llmos_ms_free(ms);
	return ret;
}

/**
 * llmos_ms_open() - LLMOS_IOC_MS_OPEN
 * @ucmd: the command, a struct llmos_ms_open
 *
 * Return: 0 with a mindspace fd in out_fd, or a negative errno.
 */
int llmos_ms_open(struct llmos_ucmd *ucmd)
{
	struct llmos_ms_open *cmd = ucmd->cmd;
	bool rdonly = cmd->flags & LLMOS_MS_OPEN_RDONLY;
	struct llmos_ms *ms;
	struct file *file;
	int fd, ret;

	if (cmd->flags & ~LLMOS_MS_OPEN_RDONLY || cmd->__reserved)
		return -EINVAL;

	mutex_lock(&llmos_ms_lock);
	ms = llmos_ms_find(cmd->id, cmd->name);
	if (IS_ERR(ms)) {
		mutex_unlock(&llmos_ms_lock);
		return PTR_ERR(ms);
	}
	if (!llmos_ms_may(ms, rdonly ? MAY_READ : MAY_READ | MAY_WRITE)) {
		mutex_unlock(&llmos_ms_lock);
		return -EACCES;
	}
	kref_get(&ms->ref);
	mutex_unlock(&llmos_ms_lock);

	fd = get_unused_fd_flags(O_CLOEXEC);
	if (fd < 0) {
		ret = fd;
		goto err_put;
	}
	file = llmos_ms_file(ms, !rdonly);
	if (IS_ERR(file)) {
		ret = PTR_ERR(file);
		goto err_put_fd;
	}
	cmd->out_fd = fd;
	ret = llmos_ucmd_respond(ucmd, sizeof(*cmd));
	if (ret) {
		put_unused_fd(fd);
		fput(file);
		return ret;
	}
	fd_install(fd, file);
	return 0;

err_put_fd:
	put_unused_fd(fd);
err_put:
	llmos_ms_put(ms);
	return ret;
}

/**
 * llmos_ms_destroy() - LLMOS_IOC_MS_DESTROY
 * @ucmd: the command, a struct llmos_ms_destroy
 *
 * Return: 0 or a negative errno.
 */
int llmos_ms_destroy(struct llmos_ucmd *ucmd)
{
	struct llmos_ms_destroy *cmd = ucmd->cmd;
	struct llmos_ms *ms;
	int ret = 0;

	if (cmd->flags)
		return -EINVAL;
	mutex_lock(&llmos_ms_lock);
	ms = llmos_ms_find(cmd->id, cmd->name);
	if (IS_ERR(ms))
		ret = PTR_ERR(ms);
	else if (!uid_eq(current_fsuid(), ms->uid) && !capable(CAP_SYS_ADMIN))
		ret = -EPERM;
	else if (!ms->persistent)
		ret = -EINVAL;
	else
		llmos_ms_unlink(ms);
	mutex_unlock(&llmos_ms_lock);
	/* The namespace's reference, now ours to drop. */
	if (!ret)
		llmos_ms_put(ms);
	return ret;
}

static void llmos_ms_fill_info(const struct llmos_ms *ms,
			       struct llmos_ms_info *info)
{
	lockdep_assert_held(&llmos_ms_lock);
	memset(info, 0, sizeof(*info));
	info->id = ms->id;
	info->length = ms->length;
	info->resident = ms->dmabuf ? ms->length :
		(u64)atomic_long_read(&ms->resident) << PAGE_SHIFT;
	info->created_ns = ms->created_ns;
	info->flags = ms->flags;
	info->mode = ms->mode;
	info->uid = from_kuid_munged(current_user_ns(), ms->uid);
	info->gid = from_kgid_munged(current_user_ns(), ms->gid);
	info->numa_node = ms->node == NUMA_NO_NODE ? LLMOS_NUMA_ANY : ms->node;
	info->map_count = atomic_read(&ms->map_count);
	info->open_count = atomic_read(&ms->open_count);
	strscpy(info->name, ms->name, sizeof(info->name));
}

/**
 * llmos_ms_list() - LLMOS_IOC_MS_LIST
 * @ucmd: the command, a struct llmos_ms_list
 *
 * The entries are gathered under the lock into a kernel buffer and copied
 * out after it is dropped, so a slow user page cannot stall other callers.
 *
 * Return: 0, -EOVERFLOW when the array was too small, or a negative errno.
 */
int llmos_ms_list(struct llmos_ucmd *ucmd)
{
	struct llmos_ms_list *cmd = ucmd->cmd;
	void __user *uptr = u64_to_user_ptr(cmd->entries_uptr);
	struct llmos_ms_info *infos = NULL;
	u32 total = 0, filled, want, tries;
	struct llmos_ms *ms;
	unsigned long idx;
	int ret = 0;

	if (cmd->flags || cmd->entry_size < LLMOS_MS_INFO_MIN_SIZE)
		return -EINVAL;

	mutex_lock(&llmos_ms_lock);
	xa_for_each(&llmos_ms_ids, idx, ms)
		total += llmos_ms_visible(ms);
	mutex_unlock(&llmos_ms_lock);

	/*
	 * Mindspaces may come and go between the two passes: when more came
	 * than were counted and the caller has room for them, count again
	 * (a few times; then -EOVERFLOW says to call again).
	 */
	for (tries = 0;; tries++) {
		want = min(cmd->count, total);
		if (want) {
			infos = kvmalloc_array(want, sizeof(*infos),
					       GFP_KERNEL_ACCOUNT);
			if (!infos)
				return -ENOMEM;
		}
		total = 0;
		filled = 0;
		mutex_lock(&llmos_ms_lock);
		xa_for_each(&llmos_ms_ids, idx, ms) {
			if (!llmos_ms_visible(ms))
				continue;
			if (filled < want)
				llmos_ms_fill_info(ms, &infos[filled++]);
			total++;
		}
		mutex_unlock(&llmos_ms_lock);
		if (filled == total || total > cmd->count || tries == 3)
			break;
		kvfree(infos);
		infos = NULL;
	}

	ret = llmos_copy_to_uarray(uptr, cmd->entry_size, infos, sizeof(*infos),
				   filled);
	if (ret)
		goto out;
	cmd->count = total;
	ret = llmos_ucmd_respond(ucmd, sizeof(*cmd));
	if (!ret && filled < total)
		ret = -EOVERFLOW;
out:
	kvfree(infos);
	return ret;
}

static int llmos_ms_query_reply(struct llmos_ms_query *cmd,
				const struct llmos_ms_info *info)
{
	if (copy_to_user(u64_to_user_ptr(cmd->info_uptr), info,
			 min_t(size_t, cmd->info_size, sizeof(*info))))
		return -EFAULT;
	return 0;
}

static int llmos_ms_query_check(const struct llmos_ms_query *cmd)
{
	if (cmd->flags || cmd->__reserved ||
	    cmd->info_size < LLMOS_MS_INFO_MIN_SIZE)
		return -EINVAL;
	return 0;
}

/**
 * llmos_ms_info() - LLMOS_IOC_MS_INFO
 * @ucmd: the command, a struct llmos_ms_query
 *
 * Return: 0 or a negative errno.
 */
int llmos_ms_info(struct llmos_ucmd *ucmd)
{
	struct llmos_ms_query *cmd = ucmd->cmd;
	struct llmos_ms_info info;
	struct llmos_ms *ms;
	int ret;

	ret = llmos_ms_query_check(cmd);
	if (ret)
		return ret;
	mutex_lock(&llmos_ms_lock);
	ms = llmos_ms_find(cmd->id, cmd->name);
	if (IS_ERR(ms))
		ret = PTR_ERR(ms);
	else if (!llmos_ms_may(ms, MAY_READ))
		ret = -EACCES;
	else
		llmos_ms_fill_info(ms, &info);
	mutex_unlock(&llmos_ms_lock);
	return ret ?: llmos_ms_query_reply(cmd, &info);
}

/**
 * llmos_msfd_info() - LLMOS_MSFD_IOC_INFO on a mindspace fd
 * @ucmd: the command, a struct llmos_ms_query with no id and no name
 *
 * Return: 0 or a negative errno.
 */
int llmos_msfd_info(struct llmos_ucmd *ucmd)
{
	struct llmos_ms_query *cmd = ucmd->cmd;
	struct llmos_ms *ms = ucmd->file->private_data;
	struct llmos_ms_info info;
	int ret;

	ret = llmos_ms_query_check(cmd);
	if (ret)
		return ret;
	if (cmd->id || memchr_inv(cmd->name, 0, sizeof(cmd->name)))
		return -EINVAL;
	mutex_lock(&llmos_ms_lock);
	llmos_ms_fill_info(ms, &info);
	mutex_unlock(&llmos_ms_lock);
	return llmos_ms_query_reply(cmd, &info);
}

/**
 * llmos_msfd_export_dmabuf() - LLMOS_MSFD_IOC_EXPORT_DMABUF
 * @ucmd: the command, a struct llmos_ms_export
 *
 * Return: 0 with a dma-buf fd in out_fd, or a negative errno.
 */
int llmos_msfd_export_dmabuf(struct llmos_ucmd *ucmd)
{
	struct llmos_ms_export *cmd = ucmd->cmd;
	struct llmos_ms *ms = ucmd->file->private_data;
	int fd, ret;

	if (cmd->flags || cmd->__reserved)
		return -EINVAL;
	if (!ms->dmabuf)
		return -EOPNOTSUPP;
	if (!(ucmd->file->f_mode & FMODE_WRITE))
		return -EACCES;
	fd = get_unused_fd_flags(O_CLOEXEC);
	if (fd < 0)
		return fd;
	cmd->out_fd = fd;
	ret = llmos_ucmd_respond(ucmd, sizeof(*cmd));
	if (ret) {
		put_unused_fd(fd);
		return ret;
	}
	get_dma_buf(ms->dmabuf);
	fd_install(fd, ms->dmabuf->file);
	return 0;
}

/**
 * llmos_quota() - LLMOS_IOC_QUOTA
 * @ucmd: the command, a struct llmos_quota
 *
 * Return: 0 or a negative errno.
 */
int llmos_quota(struct llmos_ucmd *ucmd)
{
	struct llmos_quota *cmd = ucmd->cmd;
	bool set = cmd->flags & LLMOS_QUOTA_SET;
	struct llmos_user *user;
	kuid_t uid;

	if (cmd->flags & ~LLMOS_QUOTA_SET || cmd->__reserved ||
	    (!set && cmd->limit))
		return -EINVAL;
	uid = cmd->uid == LLMOS_UID_SELF ? llmos_caller_uid() :
		make_kuid(current_user_ns(), cmd->uid);
	if (!uid_valid(uid))
		return -EINVAL;
	if ((set || !uid_eq(uid, llmos_caller_uid())) && !capable(CAP_SYS_ADMIN))
		return -EPERM;

	mutex_lock(&llmos_ms_lock);
	user = llmos_user_get(uid, set);
	if (IS_ERR(user)) {
		mutex_unlock(&llmos_ms_lock);
		return PTR_ERR(user);
	}
	if (set)
		user->limit = cmd->limit;
	cmd->out_used = user ? user->used : 0;
	cmd->out_limit = llmos_user_limit(user);
	if (user)
		llmos_user_trim(user);
	mutex_unlock(&llmos_ms_lock);
	return llmos_ucmd_respond(ucmd, sizeof(*cmd));
}

static int llmos_ms_debugfs_show(struct seq_file *m, void *unused)
{
	struct llmos_ms *ms;
	unsigned long idx;

	seq_puts(m, "id\tname\tuid\tgid\tmode\tlength\tresident\tbacking\tnode\tmaps\tfds\tpersistent\n");
	mutex_lock(&llmos_ms_lock);
	xa_for_each(&llmos_ms_ids, idx, ms) {
		seq_printf(m, "%llu\t%s\t%u\t%u\t%04o\t%llu\t%llu\t%s\t%d\t%d\t%d\t%d\n",
			   ms->id, ms->name[0] ? ms->name : "-",
			   from_kuid(&init_user_ns, ms->uid),
			   from_kgid(&init_user_ns, ms->gid), ms->mode,
			   ms->length,
			   ms->dmabuf ? ms->length :
			   (u64)atomic_long_read(&ms->resident) << PAGE_SHIFT,
			   ms->dmabuf ? "dmabuf" : "host", ms->node,
			   atomic_read(&ms->map_count),
			   atomic_read(&ms->open_count), ms->persistent);
	}
	mutex_unlock(&llmos_ms_lock);
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(llmos_ms_debugfs);

static int llmos_counters_show(struct seq_file *m, void *unused)
{
	mutex_lock(&llmos_ms_lock);
	seq_printf(m, "mindspaces %ld\nhost_pages %ld\ndmabufs %ld\ncharged_bytes %llu\n",
		   atomic_long_read(&llmos_nr_ms),
		   atomic_long_read(&llmos_nr_pages),
		   atomic_long_read(&llmos_nr_dmabufs), llmos_charged);
	mutex_unlock(&llmos_ms_lock);
	llmos_sched_counters_show(m);
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(llmos_counters);

/**
 * llmos_ms_debugfs_init() - create the debugfs views of mindspaces
 * @dir: the module's debugfs directory
 */
void llmos_ms_debugfs_init(struct dentry *dir)
{
	debugfs_create_file("mindspaces", 0400, dir, NULL,
			    &llmos_ms_debugfs_fops);
	debugfs_create_file("counters", 0400, dir, NULL,
			    &llmos_counters_fops);
}

/**
 * llmos_ms_exit() - free the persistent mindspaces at module unload
 *
 * No mindspace file can exist any more (each holds a module reference), so
 * dropping the namespace's references frees everything.
 */
void llmos_ms_exit(void)
{
	struct llmos_user *user;
	struct llmos_ms *ms;
	unsigned long idx;

	mutex_lock(&llmos_ms_lock);
	xa_for_each(&llmos_ms_ids, idx, ms) {
		if (llmos_ms_unlink(ms)) {
			mutex_unlock(&llmos_ms_lock);
			llmos_ms_put(ms);
			mutex_lock(&llmos_ms_lock);
		}
	}
	xa_for_each(&llmos_users, idx, user) {
		xa_erase(&llmos_users, idx);
		kfree(user);
	}
	mutex_unlock(&llmos_ms_lock);
	WARN_ON(atomic_long_read(&llmos_nr_ms) ||
		atomic_long_read(&llmos_nr_pages) ||
		atomic_long_read(&llmos_nr_dmabufs) || llmos_charged);
}
