// Thin C over what Swift cannot call: variadic ptrace, the code between fork
// and exec, and a few libc calls with awkward signatures. Every function
// returns 0 (or a count) on success and -errno on failure. No policy here.
#ifndef CPTRACE_H
#define CPTRACE_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/user.h>
#include <signal.h>
#include <sys/xattr.h>  /* getxattr: file capabilities (ExecPrivilege) */

#ifdef __cplusplus
extern "C" {
#endif

// ptrace request numbers Swift needs (the glibc enum does not import well).
enum {
    PW_PTRACE_CONT = 7,
    PW_PTRACE_KILL = 8,
    PW_PTRACE_SINGLESTEP = 9,
    PW_PTRACE_DETACH = 17,
    PW_PTRACE_SYSCALL = 24,
    PW_PTRACE_SEIZE = 0x4206,
    PW_PTRACE_INTERRUPT = 0x4207,
    PW_PTRACE_LISTEN = 0x4208,
};

enum {
    PW_O_TRACESYSGOOD = 0x01,
    PW_O_TRACEFORK = 0x02,
    PW_O_TRACEVFORK = 0x04,
    PW_O_TRACECLONE = 0x08,
    PW_O_TRACEEXEC = 0x10,
    PW_O_TRACEVFORKDONE = 0x20,
    PW_O_TRACEEXIT = 0x40,
    PW_O_TRACESECCOMP = 0x80,
    PW_O_EXITKILL = 0x100000,
};

// Mirrors struct ptrace_rseq_configuration (Linux 5.13+).
typedef struct {
    uint64_t rseq_abi_pointer;
    uint32_t rseq_abi_size;
    uint32_t signature;
    uint32_t flags;
    uint32_t pad;
} pw_rseq_configuration;

// The fields of siginfo_t PageWatch reads, copied out of the kernel's union.
typedef struct {
    int32_t signo;
    int32_t code;
    int32_t errno_value;
    int32_t pad;
    uint64_t fault_address;  // si_addr for SIGSEGV/SIGBUS/SIGTRAP
    int32_t sender_pid;      // si_pid for kill/tgkill
} pw_siginfo;

// Resume-style requests: PTRACE_CONT, SYSCALL, DETACH, LISTEN, INTERRUPT, KILL.
int pw_ptrace_resume(int request, pid_t tid, int signal);
int pw_ptrace_seize(pid_t tid, unsigned long options);
int pw_ptrace_setoptions(pid_t tid, unsigned long options);
int pw_ptrace_geteventmsg(pid_t tid, unsigned long *message);
int pw_ptrace_getregs(pid_t tid, struct user_regs_struct *regs);
int pw_ptrace_setregs(pid_t tid, const struct user_regs_struct *regs);
int pw_ptrace_getsiginfo(pid_t tid, pw_siginfo *info);
// One word of the registers (struct user) at `offset`: cheaper than the whole set.
int pw_ptrace_peekuser(pid_t tid, unsigned long offset, uint64_t *value);
int pw_ptrace_pokeuser(pid_t tid, unsigned long offset, uint64_t value);
// Raw siginfo, for holding a signal and re-injecting it unchanged.
int pw_ptrace_getsiginfo_raw(pid_t tid, siginfo_t *info);
int pw_ptrace_getsigmask(pid_t tid, uint64_t *mask);
int pw_ptrace_setsigmask(pid_t tid, uint64_t mask);
int pw_ptrace_setsiginfo_raw(pid_t tid, const siginfo_t *info);
int pw_ptrace_get_rseq_configuration(pid_t tid, pw_rseq_configuration *config);

enum { PW_WNOHANG = 1, PW_WUNTRACED = 2 };
// waitpid(pid, &status, __WALL | __WNOTHREAD | options): the calling thread's
// children and tracees only. Returns the pid, 0 for WNOHANG, or -errno.
int pw_wait(pid_t pid, int *status, int options);

// Bulk copies between this process and the tracee. Return bytes or -errno.
long pw_read_memory(pid_t pid, uint64_t remote, void *local, size_t length);
long pw_write_memory(pid_t pid, uint64_t remote, const void *local, size_t length);

int pw_tgkill(pid_t tgid, pid_t tid, int signal);
int pw_kill(pid_t pid, int signal);

// fork + exec for `pagewatch run`. The child stops itself with SIGSTOP before
// exec so the parent can PTRACE_SEIZE it; if exec fails the child reports
// errno through a close-on-exec pipe and exits 127.
// Returns the child pid (>0) or -errno; *exec_error_fd receives the read end.
// One classic-BPF instruction (struct sock_filter).
typedef struct {
    uint16_t code;
    uint8_t jt;
    uint8_t jf;
    uint32_t k;
} pw_bpf_instruction;

// stdin_fd/stdout_fd >= 0 are dup2'ed onto 0/1 in the child; -1 inherits.
// empty_mask != 0 starts the program with no signal blocked.
// filter (filter_length instructions, may be NULL) is installed as a seccomp
// filter after the tracer has seized the child and before exec; without
// CAP_SYS_ADMIN that needs PR_SET_NO_NEW_PRIVS, which is set only then.
// If setup fails the child reports {stage, errno} through the pipe
// (stage 1: seccomp, 2: exec) and exits 127.
pid_t pw_spawn_stopped(const char *path, char *const argv[], int stdin_fd, int stdout_fd,
                       int empty_mask, const pw_bpf_instruction *filter, int filter_length,
                       int *exec_error_fd);

// Starts a watchdog (`pagewatch guardian`): fork, setsid (so the terminal's
// Ctrl-C and hang-up do not reach it), `state_fd` and `watch_fd` moved to 3
// and 4 (all other descriptors but 0-2 closed), execv. Returns its pid or -errno.
pid_t pw_fork_tracer(void);
pid_t pw_spawn_guardian(const char *path, char *const argv[], int state_fd, int watch_fd);

// A POSIX timer on CLOCK_MONOTONIC that sends `signal` to the calling thread
// (SIGEV_THREAD_ID) first after `first_ns`, then every `period_ns` (0: once).
// *timer receives its handle for pw_timer_delete. 0 or -errno.
int pw_timer_start(int signal, int64_t first_ns, int64_t period_ns, void **timer);
void pw_timer_delete(void *timer);

// Ordered access to memory shared with another process (a seqlock's words).
void pw_store_release(uint64_t *p, uint64_t v);
uint64_t pw_load_acquire(const uint64_t *p);

// memfd_create(name, MFD_CLOEXEC) sized to `size`; the fd or -errno.
int pw_shared_memory(const char *name, size_t size);

// Install a no-op handler for `signal` without SA_RESTART, so that a blocking
// waitpid in the tracer returns EINTR when it arrives.
int pw_install_wakeup_handler(int signal);
// Whether a handler installed by pw_install_wakeup_handler or
// pw_install_flag_handler ran since pw_clear_woken.
void pw_clear_woken(void);
int pw_woken_pending(void);
// Block (1) or unblock (0) `signal` in the calling thread.
int pw_block_signal(int signal, int block);
// One pthread_sigmask for every signal in `mask` (bit N-1 for signal N).
int pw_block_signals(uint64_t mask, int block);
// PTRACE_GET_SYSCALL_INFO (Linux 5.3): the `op` of the stop the thread is in:
// 0 none, 1 syscall entry, 2 syscall exit, 3 seccomp; or -errno.
int pw_ptrace_syscall_info_op(pid_t tid);
// The same request, decoded: the number and arguments at an entry or
// seccomp stop, the result at an exit. 0 or -errno.
struct pw_syscall_info {
    int op;  // 1 entry, 2 exit, 3 seccomp, 0 none
    int64_t nr;
    uint64_t args[6];
    uint64_t instruction_pointer, stack_pointer;
    int64_t rval;
};
int pw_ptrace_syscall_info(pid_t tid, struct pw_syscall_info *out);

// A handler for `signal` that records it (no SA_RESTART, so waitpid returns
// EINTR); pw_take_raised_signal returns and clears the last one recorded (0: none).
int pw_install_flag_handler(int signal);
int pw_take_raised_signal(void);

// get_robust_list(2) of another thread: the address of its robust-futex list head.
int pw_get_robust_list(pid_t tid, uint64_t *head);

// gettid of the calling thread.
pid_t pw_gettid(void);

// One VMA of another process by address, without reading all of its maps
// text (Linux 6.11+). Mirrors `struct procmap_query` of the kernel's
// include/uapi/linux/fs.h (the system headers here predate it).
typedef struct {
    uint64_t size;           // sizeof this struct (in)
    uint64_t query_flags;    // PW_PROCMAP_QUERY_* (in)
    uint64_t query_addr;     // (in)
    uint64_t vma_start;      // (out)
    uint64_t vma_end;        // (out)
    uint64_t vma_flags;      // PW_PROCMAP_QUERY_VMA_* (out)
    uint64_t vma_page_size;  // (out)
    uint64_t vma_offset;     // file offset; 0 without a file (out)
    uint64_t inode;          // (out)
    uint32_t dev_major;      // (out)
    uint32_t dev_minor;      // (out)
    uint32_t vma_name_size;  // buffer size in; name bytes with its NUL out, 0 without a name
    uint32_t build_id_size;  // (in/out; 0: not asked)
    uint64_t vma_name_addr;  // (in)
    uint64_t build_id_addr;  // (in)
} pw_procmap_query_args;

enum {
    PW_PROCMAP_QUERY_VMA_READABLE = 0x01,
    PW_PROCMAP_QUERY_VMA_WRITABLE = 0x02,
    PW_PROCMAP_QUERY_VMA_EXECUTABLE = 0x04,
    PW_PROCMAP_QUERY_VMA_SHARED = 0x08,
    // The VMA covering query_addr, or else the first one above it.
    PW_PROCMAP_QUERY_COVERING_OR_NEXT_VMA = 0x10,
};

// ioctl(maps_fd, PROCMAP_QUERY, query) on an open /proc/PID/maps, where
// PROCMAP_QUERY is _IOWR(PROCFS_IOCTL_MAGIC 'f', 17, struct procmap_query).
// 0 or -errno: -ENOENT when no VMA matches, -ENOTTY (or -EINVAL) before 6.11.
int pw_procmap_query(int maps_fd, pw_procmap_query_args *query);

// struct page_region and struct pm_scan_arg of Linux 6.7 (linux/fs.h), for
// headers older than the kernel.
typedef struct {
    uint64_t start;
    uint64_t end;
    uint64_t categories;  // PW_PAGE_IS_*
} pw_page_region;

typedef struct {
    uint64_t size;  // sizeof(pw_pm_scan_arg)
    uint64_t flags;
    uint64_t start;
    uint64_t end;
    uint64_t walk_end;  // where the scan stopped (out)
    uint64_t vec;       // pw_page_region array
    uint64_t vec_len;
    uint64_t max_pages;
    uint64_t category_inverted;
    uint64_t category_mask;
    uint64_t category_anyof_mask;
    uint64_t return_mask;
} pw_pm_scan_arg;

enum {
    PW_PAGE_IS_WRITTEN = 1 << 1,
    PW_PAGE_IS_FILE = 1 << 2,
    PW_PAGE_IS_PRESENT = 1 << 3,
    PW_PAGE_IS_SWAPPED = 1 << 4,
    PW_PAGE_IS_PFNZERO = 1 << 5,
};

// pm_scan_arg.flags: write-protect the pages found (PM_SCAN_WP_MATCHING),
// and fail with EPERM on a VMA without asynchronous uffd-WP (PM_SCAN_CHECK_WPASYNC).
enum {
    PW_PM_SCAN_WP_MATCHING = 1 << 0,
    PW_PM_SCAN_CHECK_WPASYNC = 1 << 1,
};

// ioctl(pagemap_fd, PAGEMAP_SCAN, arg) on an open /proc/PID/pagemap, where
// PAGEMAP_SCAN is _IOWR('f', 16, struct pm_scan_arg). The number of regions
// filled, or -errno: -ENOTTY (or -EINVAL) before 6.7.
int pw_pagemap_scan(int pagemap_fd, pw_pm_scan_arg *arg);

// A userfaultfd opened (user-mode only where the kernel knows the flag),
// its UFFDIO_API handshake made with no feature asked, and closed:
// `features` gets what the kernel offers. 0, or -errno.
long pw_userfaultfd_features(uint64_t *features);

// The userfaultfd ioctls PageWatch makes on its own copy of a tracee's
// userfaultfd (which acts on the tracee's memory). 0, or -errno.
// UFFDIO_API asking `features`; what the kernel offers in `offered`.
int pw_uffd_api(int fd, uint64_t features, uint64_t *offered);
// UFFDIO_REGISTER of [start, start+len) in write-protect mode.
int pw_uffd_register_wp(int fd, uint64_t start, uint64_t len);
// UFFDIO_UNREGISTER of [start, start+len).
int pw_uffd_unregister(int fd, uint64_t start, uint64_t len);
// UFFDIO_WRITEPROTECT of [start, start+len): protect (1) or not (0).
int pw_uffd_writeprotect(int fd, uint64_t start, uint64_t len, int protect);

// pidfd_getfd(2) of descriptor `target_fd` of process `pid` (through
// pidfd_open): a copy in this process, close-on-exec. The fd, or -errno.
int pw_take_fd(int pid, int target_fd);
// The same from thread `tid`'s own descriptor table (pidfd_open with
// PIDFD_THREAD, Linux 6.9+). The fd, or -errno.
int pw_take_thread_fd(int tid, int target_fd);
// 0 when pidfd_open takes PIDFD_THREAD here, else -errno (EINVAL before 6.9).
int pw_thread_pidfds(void);
// PTRACE_SECCOMP_GET_FILTER: the instructions of filter `index` (0: the
// newest) of stopped tracee `tid` into `instructions` (8 bytes each; NULL
// asks only the count). The count, or -errno (ENOENT past the oldest,
// EACCES without CAP_SYS_ADMIN, EMEDIUMTYPE for no filter).
long pw_seccomp_filter(int tid, unsigned long index, void *instructions);

#ifdef __cplusplus
}
#endif
#endif
