// libunwind's remote API behind a page cache. See cunwind.h for the contract.
#define _GNU_SOURCE 1
#include "cunwind.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
#include <pthread.h>
#include <signal.h>
#include <libunwind-ptrace.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/uio.h>
#include <sys/user.h>

#define CU_PAGE_SIZE 4096u
// 256 pages (1 MiB) per process: a deep stack plus the .eh_frame_hdr and
// .eh_frame pages of a few dozen modules.
#define CU_SLOTS 256u
// Unreadable pages remembered per call stack.
#define CU_REFUSED 4u

struct cu_page {
    uint64_t base;
    // Stable pages (file-backed, read-only) are valid until a flush; others only
    // during the call stack whose generation they carry: the stack changes between stops.
    uint64_t generation;
    int used;
    int stable;
    unsigned char bytes[CU_PAGE_SIZE];
};

struct cu_unwinder {
    pid_t pid;
    unw_addr_space_t as;
    uint64_t generation;
    struct cu_page *pages;
    uint64_t *stable_starts, *stable_ends;
    size_t stable_count;
    // The unwind tables and file copies Swift found (cu_set_modules). Before
    // the first cu_set_modules, find_proc_info is libunwind-ptrace's, which
    // reads /proc/PID/maps and maps the module's file again whenever the IP
    // leaves the one module it remembers, or finds no .eh_frame_hdr.
    int has_modules;
    cu_module *modules;
    size_t module_count;
    cu_file_window *windows;
    size_t window_count;
    cu_module_miss miss;
    void *miss_context;
    // /proc/PID/mem, opened at the first page process_vm_readv refuses; -1
    // before, -2 when it cannot be opened.
    int mem_fd;
    // Pages neither could read, during the call stack of their generation.
    uint64_t refused[CU_REFUSED], refused_generation[CU_REFUSED];
    unsigned refused_next;
    // Where the program's own userfaultfd would be asked for a missing page
    // (cu_set_guarded_ranges): never read with process_vm_readv, which would
    // wait for the program's handler thread.
    uint64_t *guarded_starts, *guarded_ends;
    size_t guarded_count;
    cu_stats stats;
};

// The call stack being unwound on this thread. libunwind gives the callbacks
// only the argument of unw_init_remote, which must be the _UPT_ handle because
// the delegated _UPT_* callbacks cast it to theirs; so the cache is found here.
// Callbacks run synchronously inside cu_call_stack, on the caller's thread.
struct cu_call {
    cu_unwinder *unwinder;
    void *thread;
    struct user_regs_struct regs;
    int in_find_proc_info;
    // Set when find_proc_info had no unwind information for an IP: the
    // step under way follows the frame pointer instead.
    int no_info;
};
static __thread struct cu_call *current_call;

// libunwind as Debian builds it (--enable-block-signals) blocks every signal
// around each use of its caches: two sigprocmask calls an unwind step, about
// 10 us of a 16-frame call stack. The masking guards against a
// signal handler unwinding in the middle; PageWatch unwinds on one thread
// and never from a handler. So while cu_call_stack runs, sigprocmask
// (which libunwind calls through the PLT, and this definition in the
// executable takes) changes nothing and makes no syscall; otherwise it is
// glibc's, by way of pthread_sigmask.
int sigprocmask(int how, const sigset_t *set, sigset_t *old)
{
    if (current_call != NULL) {
        if (old != NULL)
            sigemptyset(old);  // only handed back to the no-op restore
        return 0;
    }
    int r = pthread_sigmask(how, set, old);
    if (r != 0) {
        errno = r;
        return -1;
    }
    return 0;
}

static struct cu_call *call_for(unw_addr_space_t as)
{
    struct cu_call *call = current_call;
    return call != NULL && call->unwinder->as == as ? call : NULL;
}

// The index of the range of sorted [starts[i], ends[i]) holding `address`, or -1.
static ptrdiff_t range_index(const uint64_t *starts, const uint64_t *ends, size_t count, uint64_t address)
{
    size_t lo = 0, hi = count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (address < starts[mid])
            hi = mid;
        else if (address >= ends[mid])
            lo = mid + 1;
        else
            return (ptrdiff_t)mid;
    }
    return -1;
}

// The index of the stable range holding `address`, or -1.
static ptrdiff_t stable_range(const cu_unwinder *u, uint64_t address)
{
    return range_index(u->stable_starts, u->stable_ends, u->stable_count, address);
}

// Whether the page at `base` lies where the program's userfaultfd would be asked.
static int guarded_page(const cu_unwinder *u, uint64_t base)
{
    return range_index(u->guarded_starts, u->guarded_ends, u->guarded_count, base) >= 0;
}

static int page_valid(const cu_unwinder *u, const struct cu_page *p, uint64_t base)
{
    return p->used && p->base == base && (p->stable || p->generation == u->generation);
}

// Stack pages above a missed one read in the same process_vm_readv: an
// unwind walks up the stack, and each read costs about 2.5 us here, most
// of it the call. Pages past the stack's end are not read.
#define CU_READ_AHEAD 2u

static struct cu_page *cached_page(cu_unwinder *u, uint64_t base)
{
    size_t set = (size_t)((base / CU_PAGE_SIZE) % (CU_SLOTS / 2)) * 2;
    struct cu_page *a = &u->pages[set], *b = &u->pages[set + 1];
    return page_valid(u, a, base) ? a : page_valid(u, b, base) ? b : NULL;
}

// The slot a page at `base` goes in: an invalid one first, then a per-call
// one, then the first.
static struct cu_page *victim_for(cu_unwinder *u, uint64_t base)
{
    size_t set = (size_t)((base / CU_PAGE_SIZE) % (CU_SLOTS / 2)) * 2;
    struct cu_page *a = &u->pages[set], *b = &u->pages[set + 1];
    return !page_valid(u, a, a->base) ? a
         : !page_valid(u, b, b->base) ? b
         : !a->stable ? a
         : !b->stable ? b
         : a;
}

static int refused_page(const cu_unwinder *u, uint64_t base)
{
    for (unsigned i = 0; i < CU_REFUSED; i++)
        if (u->refused[i] == base && u->refused_generation[i] == u->generation)
            return 1;
    return 0;
}

// A page process_vm_readv refused: PROT_NONE memory (a frame pointer that
// points into a reservation, as V8's JIT frames give libunwind's fallback)
// can still be read through /proc/PID/mem, as ptrace reads it, in one call
// rather than a PTRACE_PEEKDATA a word; kept for this call stack only (its
// protection may change). A page that cannot be read at all is remembered
// for the call stack, so each word of it does not cost two failed syscalls.
static const struct cu_page *forced_page(cu_unwinder *u, struct cu_page *v, uint64_t base)
{
    if (u->mem_fd == -1) {
        char path[48];
        snprintf(path, sizeof path, "/proc/%d/mem", (int)u->pid);
        u->mem_fd = open(path, O_RDONLY | O_CLOEXEC);
        if (u->mem_fd < 0)
            u->mem_fd = -2;
    }
    ssize_t got = -1;
    if (u->mem_fd >= 0) {
        u->stats.forced_page_reads++;
        got = pread(u->mem_fd, v->bytes, CU_PAGE_SIZE, (off_t)base);
    }
    if (got != (ssize_t)CU_PAGE_SIZE) {
        u->refused[u->refused_next] = base;
        u->refused_generation[u->refused_next] = u->generation;
        u->refused_next = (u->refused_next + 1) % CU_REFUSED;
        return NULL;
    }
    u->stats.page_fills++;
    v->base = base;
    v->generation = u->generation;
    v->stable = 0;
    v->used = 1;
    return v;
}

// The cached page at `base`, read with process_vm_readv on a miss (with up
// to CU_READ_AHEAD per-call pages after it), else through /proc/PID/mem
// (forced_page); NULL when the page cannot be read at all (unmapped). Two-way
// set associative: a stack page does not evict the .eh_frame page it collides with.
static const struct cu_page *page_at(cu_unwinder *u, uint64_t base)
{
    struct cu_page *hit = cached_page(u, base);
    if (hit != NULL)
        return hit;
    if (refused_page(u, base))
        return NULL;
    // A page the program's own userfaultfd would have to supply: never
    // process_vm_readv, which would wait for its handler thread (perhaps held
    // at a ptrace stop); /proc/PID/mem fails at once (EIO) instead.
    if (guarded_page(u, base)) {
        struct cu_page *v = victim_for(u, base);
        v->used = 0;
        return forced_page(u, v, base);
    }
    int stable = stable_range(u, base) >= 0;
    struct cu_page *victims[1 + CU_READ_AHEAD];
    struct iovec local[1 + CU_READ_AHEAD];
    size_t count = 0;
    for (size_t k = 0; k <= (stable ? 0 : CU_READ_AHEAD); k++) {
        uint64_t b = base + k * CU_PAGE_SIZE;
        if (k > 0 && (stable_range(u, b) >= 0 || cached_page(u, b) != NULL || guarded_page(u, b)))
            break;
        struct cu_page *v = victim_for(u, b);
        v->used = 0;
        victims[count] = v;
        local[count] = (struct iovec){ v->bytes, CU_PAGE_SIZE };
        count++;
    }
    struct iovec remote = { (void *)(uintptr_t)base, count * CU_PAGE_SIZE };
    ssize_t got = process_vm_readv(u->pid, local, count, &remote, 1, 0);
    u->stats.page_reads++;
    if (got < (ssize_t)CU_PAGE_SIZE)
        return forced_page(u, victims[0], base);
    for (size_t k = 0; k < count && (size_t)got >= (k + 1) * CU_PAGE_SIZE; k++) {
        u->stats.page_fills++;
        victims[k]->base = base + k * CU_PAGE_SIZE;
        victims[k]->generation = u->generation;
        victims[k]->stable = k == 0 ? stable : 0;
        victims[k]->used = 1;
    }
    return victims[0];
}

// The file window holding the word at `address` whole, or NULL.
static const cu_file_window *window_at(const cu_unwinder *u, uint64_t address)
{
    size_t lo = 0, hi = u->window_count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const cu_file_window *w = &u->windows[mid];
        if (address < w->start)
            hi = mid;
        else if (address >= w->end)
            lo = mid + 1;
        else
            return w->end - address >= sizeof(unw_word_t) ? w : NULL;
    }
    return NULL;
}

static int cached_access_mem(unw_addr_space_t as, unw_word_t address, unw_word_t *value, int write, void *arg)
{
    struct cu_call *call = call_for(as);
    if (call == NULL || write)
        return _UPT_access_mem(as, address, value, write, arg);
    cu_unwinder *u = call->unwinder;
    u->stats.memory_reads++;
    if (call->in_find_proc_info)
        u->stats.proc_info_memory_reads++;
    const cu_file_window *w = window_at(u, address);
    if (w != NULL) {
        u->stats.window_reads++;
        memcpy(value, (const unsigned char *)w->bytes + (address - w->start), sizeof *value);
        return 0;
    }
    uint64_t base = address & ~(uint64_t)(CU_PAGE_SIZE - 1);
    uint64_t offset = address - base;
    if (offset + sizeof *value <= CU_PAGE_SIZE) {
        const struct cu_page *page = page_at(u, base);
        if (page != NULL) {
            memcpy(value, page->bytes + offset, sizeof *value);
            return 0;
        }
    }
    // A word straddling two pages (libunwind asks for aligned words, so not
    // expected), or a page process_vm_readv refuses but ptrace can read. With
    // the stopped thread's handle: `arg` may be a module handle (find_proc_info).
    u->stats.word_peeks++;
    return _UPT_access_mem(as, address, value, write, call->thread);
}

// Registers from the PTRACE_GETREGS copy taken at the start of the call stack;
// libunwind numbers them in DWARF order (libunwind-x86_64.h).
static unw_word_t *register_slot(struct user_regs_struct *r, unw_regnum_t reg)
{
    switch (reg) {
    case UNW_X86_64_RAX: return (unw_word_t *)&r->rax;
    case UNW_X86_64_RDX: return (unw_word_t *)&r->rdx;
    case UNW_X86_64_RCX: return (unw_word_t *)&r->rcx;
    case UNW_X86_64_RBX: return (unw_word_t *)&r->rbx;
    case UNW_X86_64_RSI: return (unw_word_t *)&r->rsi;
    case UNW_X86_64_RDI: return (unw_word_t *)&r->rdi;
    case UNW_X86_64_RBP: return (unw_word_t *)&r->rbp;
    case UNW_X86_64_RSP: return (unw_word_t *)&r->rsp;
    case UNW_X86_64_R8: return (unw_word_t *)&r->r8;
    case UNW_X86_64_R9: return (unw_word_t *)&r->r9;
    case UNW_X86_64_R10: return (unw_word_t *)&r->r10;
    case UNW_X86_64_R11: return (unw_word_t *)&r->r11;
    case UNW_X86_64_R12: return (unw_word_t *)&r->r12;
    case UNW_X86_64_R13: return (unw_word_t *)&r->r13;
    case UNW_X86_64_R14: return (unw_word_t *)&r->r14;
    case UNW_X86_64_R15: return (unw_word_t *)&r->r15;
    case UNW_X86_64_RIP: return (unw_word_t *)&r->rip;
    default: return NULL;
    }
}

static int cached_access_reg(unw_addr_space_t as, unw_regnum_t reg, unw_word_t *value, int write, void *arg)
{
    struct cu_call *call = call_for(as);
    unw_word_t *slot = call != NULL && !write ? register_slot(&call->regs, reg) : NULL;
    if (slot == NULL)
        return _UPT_access_reg(as, reg, value, write, arg);
    call->unwinder->stats.register_reads++;
    *value = *slot;
    return 0;
}

// libunwind's own search of an .eh_frame_hdr table (exported by
// libunwind-x86_64, declared only in its private headers). With a
// UNW_INFO_FORMAT_REMOTE_TABLE it reads the table, the FDE and the CIE
// through the address space's access_mem: here, the file windows.
extern int _Ux86_64_dwarf_search_unwind_table(unw_addr_space_t as, unw_word_t ip, unw_dyn_info_t *di,
                                              unw_proc_info_t *info, int need_unwind_info, void *arg);

static const cu_module *module_at(const cu_unwinder *u, uint64_t ip)
{
    size_t lo = 0, hi = u->module_count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const cu_module *m = &u->modules[mid];
        if (ip < m->start_ip)
            hi = mid;
        else if (ip >= m->end_ip)
            lo = mid + 1;
        else
            return m;
    }
    return NULL;
}

// From the module table (cu_set_modules) once there is one; no table for
// the IP is -UNW_ENOINFO, on which libunwind's x86_64 step follows the
// frame pointer. Marked so the statistics show that its memory reads (the
// search table, CIEs and FDEs) come through cached_access_mem.
static int module_find_proc_info(unw_addr_space_t as, unw_word_t ip, unw_proc_info_t *info, int need_unwind_info,
                                 void *arg)
{
    struct cu_call *call = call_for(as);
    if (call == NULL || !call->unwinder->has_modules) {
        if (call != NULL)
            call->in_find_proc_info++;
        int r = _UPT_find_proc_info(as, ip, info, need_unwind_info, arg);
        if (call != NULL) {
            call->in_find_proc_info--;
            call->no_info |= r == -UNW_ENOINFO;
        }
        return r;
    }
    cu_unwinder *u = call->unwinder;
    u->stats.table_lookups++;
    const cu_module *m = module_at(u, ip);
    if (m == NULL) {
        u->stats.module_misses++;
        // The callback may replace u->modules: look again rather than keep a pointer.
        if (u->miss != NULL && u->miss(u->miss_context, ip))
            m = module_at(u, ip);
    }
    if (m == NULL || m->segbase == 0) {
        call->no_info = 1;
        return -UNW_ENOINFO;
    }
    unw_dyn_info_t di;
    memset(&di, 0, sizeof di);
    di.start_ip = m->start_ip;
    di.end_ip = m->end_ip;
    di.format = UNW_INFO_FORMAT_REMOTE_TABLE;
    di.u.rti.segbase = m->segbase;
    di.u.rti.table_data = m->table_data;
    di.u.rti.table_len = m->table_len;
    call->in_find_proc_info++;
    int r = _Ux86_64_dwarf_search_unwind_table(as, ip, &di, info, need_unwind_info, call->thread);
    call->in_find_proc_info--;
    // A module whose table has no FDE for the IP: assembly without CFI.
    call->no_info |= r == -UNW_ENOINFO;
    return r;
}

static unw_accessors_t cached_accessors = {
    .find_proc_info = module_find_proc_info,
    .put_unwind_info = _UPT_put_unwind_info,
    .get_dyn_info_list_addr = _UPT_get_dyn_info_list_addr,
    .access_mem = cached_access_mem,
    .access_reg = cached_access_reg,
    .access_fpreg = _UPT_access_fpreg,
    .resume = _UPT_resume,
    .get_proc_name = _UPT_get_proc_name,
};

cu_unwinder *cu_unwinder_create(int32_t pid)
{
    cu_unwinder *u = calloc(1, sizeof *u);
    if (u == NULL)
        return NULL;
    u->pid = pid;
    u->generation = 1;
    u->mem_fd = -1;
    u->pages = calloc(CU_SLOTS, sizeof *u->pages);
    u->as = unw_create_addr_space(&cached_accessors, 0);
    if (u->pages == NULL || u->as == NULL) {
        cu_unwinder_destroy(u);
        return NULL;
    }
    // Unwind info (the register-state cache keyed by IP) is kept across call stacks.
    unw_set_caching_policy(u->as, UNW_CACHE_GLOBAL);
    return u;
}

void cu_unwinder_destroy(cu_unwinder *u)
{
    if (u == NULL)
        return;
    if (u->as != NULL)
        unw_destroy_addr_space(u->as);
    free(u->pages);
    free(u->stable_starts);
    free(u->stable_ends);
    free(u->modules);
    free(u->windows);
    if (u->mem_fd >= 0)
        close(u->mem_fd);
    free(u->guarded_starts);
    free(u->guarded_ends);
    free(u);
}

// Replaces a pair of range arrays (starts, ends) with copies of the given ones.
static int replace_ranges(uint64_t **starts_out, uint64_t **ends_out, size_t *count_out,
                          const uint64_t *starts, const uint64_t *ends, size_t count)
{
    uint64_t *s = NULL, *e = NULL;
    if (count > 0) {
        s = malloc(count * sizeof *s);
        e = malloc(count * sizeof *e);
        if (s == NULL || e == NULL) {
            free(s);
            free(e);
            return -ENOMEM;
        }
        memcpy(s, starts, count * sizeof *s);
        memcpy(e, ends, count * sizeof *e);
    }
    free(*starts_out);
    free(*ends_out);
    *starts_out = s;
    *ends_out = e;
    *count_out = count;
    return 0;
}

int cu_set_stable_ranges(cu_unwinder *u, const uint64_t *starts, const uint64_t *ends, size_t count)
{
    return replace_ranges(&u->stable_starts, &u->stable_ends, &u->stable_count, starts, ends, count);
}

int cu_set_modules(cu_unwinder *u, const cu_module *modules, size_t count, const cu_file_window *windows,
                   size_t window_count, cu_module_miss miss, void *context)
{
    cu_module *m = count > 0 ? malloc(count * sizeof *m) : NULL;
    cu_file_window *w = window_count > 0 ? malloc(window_count * sizeof *w) : NULL;
    int failed = (count > 0 && m == NULL) || (window_count > 0 && w == NULL);
    if (failed) {
        free(m);
        free(w);
        m = NULL;
        w = NULL;
        count = window_count = 0;
    } else {
        if (count > 0)
            memcpy(m, modules, count * sizeof *m);
        if (window_count > 0)
            memcpy(w, windows, window_count * sizeof *w);
    }
    free(u->modules);
    free(u->windows);
    u->modules = m;
    u->module_count = count;
    u->windows = w;
    u->window_count = window_count;
    u->miss = miss;
    u->miss_context = context;
    u->has_modules = 1;
    return failed ? -ENOMEM : 0;
}

int cu_set_guarded_ranges(cu_unwinder *u, const uint64_t *starts, const uint64_t *ends, size_t count)
{
    return replace_ranges(&u->guarded_starts, &u->guarded_ends, &u->guarded_count, starts, ends, count);
}

void cu_unwinder_flush(cu_unwinder *u)
{
    unw_flush_cache(u->as, 0, 0);
    for (size_t i = 0; i < CU_SLOTS; i++)
        u->pages[i].used = 0;
}

void *cu_thread_create(int32_t tid)
{
    return _UPT_create(tid);
}

void cu_thread_destroy(void *thread)
{
    if (thread != NULL)
        _UPT_destroy(thread);
}

// The walk itself: the IP of each frame, innermost first. With `call` and
// `by_fp`, by_fp[i] is set to 1 for a frame reached by frame pointer (the
// frame below had no unwind information) and 0 otherwise; such a step must
// move the stack pointer up, or the walk ends there (a frame pointer that
// is really data).
static int walk(unw_addr_space_t as, void *thread, struct cu_call *call, uint64_t *ips, uint8_t *by_fp,
                int max_depth)
{
    unw_cursor_t cursor;
    int count = 0;
    int r = unw_init_remote(&cursor, as, thread);
    if (r < 0)
        return r;
    int fp_step = 0;
    for (;;) {
        unw_word_t ip;
        if (unw_get_reg(&cursor, UNW_REG_IP, &ip) < 0 || ip == 0)
            break;
        if (by_fp != NULL)
            by_fp[count] = (uint8_t)fp_step;
        ips[count++] = ip;
        if (count == max_depth)
            break;
        unw_word_t sp = 0, caller_sp = 0;
        unw_get_reg(&cursor, UNW_REG_SP, &sp);
        if (call != NULL)
            call->no_info = 0;
        if (unw_step(&cursor) <= 0)
            break;
        fp_step = call != NULL && call->no_info;
        if (fp_step && (unw_get_reg(&cursor, UNW_REG_SP, &caller_sp) < 0 || caller_sp <= sp))
            break;
    }
    return count;
}

int cu_call_stack(cu_unwinder *u, int32_t tid, void *thread, uint64_t *ips, uint8_t *by_fp, int max_depth)
{
    if (max_depth <= 0)
        return 0;
    struct cu_call call = { .unwinder = u, .thread = thread };
    if (ptrace(PTRACE_GETREGS, tid, NULL, &call.regs) != 0)
        return -errno;
    u->generation++;
    current_call = &call;
    int count = walk(u->as, thread, &call, ips, by_fp, max_depth);
    current_call = NULL;
    return count;
}

int cu_stock_call_stack(void *thread, uint64_t *ips, int max_depth)
{
    if (max_depth <= 0)
        return 0;
    unw_addr_space_t as = unw_create_addr_space(&_UPT_accessors, 0);
    if (as == NULL)
        return -ENOMEM;
    int count = walk(as, thread, NULL, ips, NULL, max_depth);
    unw_destroy_addr_space(as);
    return count;
}

void cu_unwinder_stats(const cu_unwinder *u, cu_stats *stats)
{
    *stats = u->stats;
}
