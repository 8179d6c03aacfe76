#define _GNU_SOURCE
#include "cptrace.h"

#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <linux/filter.h>
#include <linux/userfaultfd.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/ioctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>

#ifndef PTRACE_GET_RSEQ_CONFIGURATION
#define PTRACE_GET_RSEQ_CONFIGURATION 0x420f
#endif

#define RETURN_ERRNO(expr) do { if ((expr) == -1) return -errno; return 0; } while (0)

int pw_ptrace_resume(int request, pid_t tid, int signal) {
    RETURN_ERRNO(ptrace((enum __ptrace_request)request, tid, 0, (void *)(long)signal));
}

int pw_ptrace_seize(pid_t tid, unsigned long options) {
    RETURN_ERRNO(ptrace(PTRACE_SEIZE, tid, 0, (void *)options));
}

int pw_ptrace_setoptions(pid_t tid, unsigned long options) {
    RETURN_ERRNO(ptrace(PTRACE_SETOPTIONS, tid, 0, (void *)options));
}

int pw_ptrace_geteventmsg(pid_t tid, unsigned long *message) {
    RETURN_ERRNO(ptrace(PTRACE_GETEVENTMSG, tid, 0, message));
}

int pw_ptrace_getregs(pid_t tid, struct user_regs_struct *regs) {
    RETURN_ERRNO(ptrace(PTRACE_GETREGS, tid, 0, regs));
}

int pw_ptrace_setregs(pid_t tid, const struct user_regs_struct *regs) {
    RETURN_ERRNO(ptrace(PTRACE_SETREGS, tid, 0, regs));
}

int pw_ptrace_peekuser(pid_t tid, unsigned long offset, uint64_t *value) {
    errno = 0;  // PEEKUSER returns the word: -1 is a value unless errno says otherwise
    long word = ptrace(PTRACE_PEEKUSER, tid, (void *)offset, 0);
    if (word == -1 && errno != 0)
        return -errno;
    *value = (uint64_t)word;
    return 0;
}

int pw_ptrace_pokeuser(pid_t tid, unsigned long offset, uint64_t value) {
    RETURN_ERRNO(ptrace(PTRACE_POKEUSER, tid, (void *)offset, (void *)value));
}

int pw_ptrace_getsiginfo_raw(pid_t tid, siginfo_t *info) {
    RETURN_ERRNO(ptrace(PTRACE_GETSIGINFO, tid, 0, info));
}

int pw_ptrace_setsiginfo_raw(pid_t tid, const siginfo_t *info) {
    RETURN_ERRNO(ptrace(PTRACE_SETSIGINFO, tid, 0, info));
}

/* The kernel's sigset for 64 signals: one word (addr = its size). */
int pw_ptrace_getsigmask(pid_t tid, uint64_t *mask) {
    RETURN_ERRNO(ptrace(PTRACE_GETSIGMASK, tid, (void *)sizeof *mask, mask));
}

int pw_ptrace_setsigmask(pid_t tid, uint64_t mask) {
    RETURN_ERRNO(ptrace(PTRACE_SETSIGMASK, tid, (void *)sizeof mask, &mask));
}

int pw_ptrace_getsiginfo(pid_t tid, pw_siginfo *out) {
    siginfo_t info;
    memset(&info, 0, sizeof info);
    if (ptrace(PTRACE_GETSIGINFO, tid, 0, &info) == -1) return -errno;
    memset(out, 0, sizeof *out);
    out->signo = info.si_signo;
    out->code = info.si_code;
    out->errno_value = info.si_errno;
    out->fault_address = (uint64_t)(uintptr_t)info.si_addr;
    out->sender_pid = info.si_pid;
    return 0;
}

int pw_ptrace_get_rseq_configuration(pid_t tid, pw_rseq_configuration *config) {
    memset(config, 0, sizeof *config);
    long n = ptrace((enum __ptrace_request)PTRACE_GET_RSEQ_CONFIGURATION, tid, (void *)sizeof *config, config);
    if (n == -1) return -errno;
    return 0;
}

int pw_wait(pid_t pid, int *status, int options) {
    // __WNOTHREAD: only this thread's children and tracees. The kernel ties
    // a tracee to the thread that seized it; in a process with other
    // threads (PageWatchKit in a test runner) waitpid(-1) would otherwise
    // reap their children too, and they would never see them end.
    int flags = __WALL | __WNOTHREAD;
    if (options & PW_WNOHANG) flags |= WNOHANG;
    if (options & PW_WUNTRACED) flags |= WUNTRACED;
    pid_t r = waitpid(pid, status, flags);
    if (r == -1) return -errno;
    return r;
}

long pw_read_memory(pid_t pid, uint64_t remote, void *local, size_t length) {
    struct iovec l = { local, length };
    struct iovec r = { (void *)(uintptr_t)remote, length };
    ssize_t n = process_vm_readv(pid, &l, 1, &r, 1, 0);
    if (n == -1) return -errno;
    return n;
}

long pw_write_memory(pid_t pid, uint64_t remote, const void *local, size_t length) {
    struct iovec l = { (void *)local, length };
    struct iovec r = { (void *)(uintptr_t)remote, length };
    ssize_t n = process_vm_writev(pid, &l, 1, &r, 1, 0);
    if (n == -1) return -errno;
    return n;
}

int pw_tgkill(pid_t tgid, pid_t tid, int signal) {
    RETURN_ERRNO(syscall(SYS_tgkill, tgid, tid, signal));
}

int pw_kill(pid_t pid, int signal) {
    RETURN_ERRNO(kill(pid, signal));
}

int pw_get_robust_list(pid_t tid, uint64_t *head) {
    void *h = NULL;
    size_t len = 0;
    if (syscall(SYS_get_robust_list, tid, &h, &len) != 0) return -errno;
    *head = (uint64_t)(uintptr_t)h;
    return 0;
}

pid_t pw_gettid(void) {
    return (pid_t)syscall(SYS_gettid);
}

#define PW_PROCMAP_QUERY _IOWR('f', 17, pw_procmap_query_args)
_Static_assert(sizeof(pw_procmap_query_args) == 104, "struct procmap_query of Linux 6.11");

int pw_procmap_query(int maps_fd, pw_procmap_query_args *query) {
    RETURN_ERRNO(ioctl(maps_fd, PW_PROCMAP_QUERY, query));
}

#define PW_PAGEMAP_SCAN _IOWR('f', 16, pw_pm_scan_arg)
_Static_assert(sizeof(pw_pm_scan_arg) == 96, "struct pm_scan_arg of Linux 6.7");

int pw_pagemap_scan(int pagemap_fd, pw_pm_scan_arg *arg) {
    int n = ioctl(pagemap_fd, PW_PAGEMAP_SCAN, arg);
    return n < 0 ? -errno : n;
}

long pw_userfaultfd_features(uint64_t *features) {
    // User-mode only first: what an unprivileged process may open.
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY);
    if (fd < 0 && errno == EINVAL) fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
    if (fd < 0) return -errno;
    struct uffdio_api api = { .api = UFFD_API, .features = 0 };
    int r = ioctl(fd, UFFDIO_API, &api);
    int e = errno;
    close(fd);
    if (r < 0) return -e;
    *features = api.features;
    return 0;
}

int pw_uffd_api(int fd, uint64_t features, uint64_t *offered) {
    struct uffdio_api api = { .api = UFFD_API, .features = features };
    if (ioctl(fd, UFFDIO_API, &api) < 0) return -errno;
    *offered = api.features;
    return 0;
}

int pw_uffd_register_wp(int fd, uint64_t start, uint64_t len) {
    struct uffdio_register r = { .range = { .start = start, .len = len }, .mode = UFFDIO_REGISTER_MODE_WP };
    return ioctl(fd, UFFDIO_REGISTER, &r) < 0 ? -errno : 0;
}

int pw_uffd_unregister(int fd, uint64_t start, uint64_t len) {
    struct uffdio_range r = { .start = start, .len = len };
    return ioctl(fd, UFFDIO_UNREGISTER, &r) < 0 ? -errno : 0;
}

int pw_uffd_writeprotect(int fd, uint64_t start, uint64_t len, int protect) {
    struct uffdio_writeprotect w = {
        .range = { .start = start, .len = len }, .mode = protect ? UFFDIO_WRITEPROTECT_MODE_WP : 0 };
    return ioctl(fd, UFFDIO_WRITEPROTECT, &w) < 0 ? -errno : 0;
}

int pw_take_fd(int pid, int target_fd) {
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0) return -errno;
    int fd = (int)syscall(SYS_pidfd_getfd, pidfd, target_fd, 0);
    int e = errno;
    close(pidfd);
    return fd < 0 ? -e : fd;
}

// PIDFD_THREAD (Linux 6.9): a pidfd naming one thread, not its group.
#define PW_PIDFD_THREAD O_EXCL

int pw_take_thread_fd(int tid, int target_fd) {
    int pidfd = (int)syscall(SYS_pidfd_open, tid, PW_PIDFD_THREAD);
    if (pidfd < 0) return -errno;
    int fd = (int)syscall(SYS_pidfd_getfd, pidfd, target_fd, 0);
    int e = errno;
    close(pidfd);
    return fd < 0 ? -e : fd;
}

int pw_thread_pidfds(void) {
    int pidfd = (int)syscall(SYS_pidfd_open, getpid(), PW_PIDFD_THREAD);
    if (pidfd < 0) return -errno;
    close(pidfd);
    return 0;
}

long pw_seccomp_filter(int tid, unsigned long index, void *instructions) {
    long r = ptrace((enum __ptrace_request)0x420c /* PTRACE_SECCOMP_GET_FILTER */, tid, (void *)index, instructions);
    return r < 0 ? -errno : r;
}

// Set by every handler PageWatch installs: a signal whose handler ran
// before a blocking wait began interrupts nothing, so the wait looks here.
static volatile sig_atomic_t pw_woken;

void pw_clear_woken(void) { pw_woken = 0; }
int pw_woken_pending(void) { return pw_woken != 0; }

static void pw_wakeup(int signal) {
    (void)signal;
    pw_woken = 1;
}

// No SA_RESTART: a blocking waitpid in the tracer must return EINTR.
static int pw_install_handler(int signal, void (*handler)(int)) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = handler;
    sigemptyset(&action.sa_mask);
    action.sa_flags = 0;
    RETURN_ERRNO(sigaction(signal, &action, NULL));
}

int pw_install_wakeup_handler(int signal) { return pw_install_handler(signal, pw_wakeup); }

int pw_ptrace_syscall_info_op(pid_t tid) {
    unsigned char info[128];  // struct ptrace_syscall_info; op is its first byte
    memset(info, 0, sizeof info);
    if (ptrace((enum __ptrace_request)0x420e, tid, (void *)sizeof info, info) < 0) return -errno;
    return info[0];
}

/* PTRACE_GET_SYSCALL_INFO, decoded: at an entry (op 1) or seccomp stop (op 3)
 * the call's number and arguments, at an exit (op 2) its result. One ptrace
 * request where the op and PTRACE_GETREGS took two. */
int pw_ptrace_syscall_info(pid_t tid, struct pw_syscall_info *out) {
    struct {
        uint8_t op, pad[3];
        uint32_t arch;
        uint64_t instruction_pointer, stack_pointer;
        union {
            struct { uint64_t nr, args[6]; } entry;
            struct { int64_t rval; uint8_t is_error; } exit;
            struct { uint64_t nr, args[6]; uint32_t ret_data; } seccomp;
        };
    } info;
    memset(&info, 0, sizeof info);
    if (ptrace((enum __ptrace_request)0x420e, tid, (void *)sizeof info, &info) < 0) return -errno;
    memset(out, 0, sizeof *out);
    out->op = info.op;
    out->instruction_pointer = info.instruction_pointer;
    out->stack_pointer = info.stack_pointer;
    if (info.op == 1 || info.op == 3) {
        out->nr = (int64_t)info.entry.nr;
        memcpy(out->args, info.entry.args, sizeof out->args);
    } else if (info.op == 2) {
        out->rval = info.exit.rval;
    }
    return 0;
}

/* `pagewatch attach`'s tracer child: fork; in the child, SIGHUP when the
 * parent dies (PR_SET_PDEATHSIG), sent at once if it died before. Returns
 * the child's pid in the parent, 0 in the child, -errno. */
pid_t pw_fork_tracer(void) {
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0) return pid < 0 ? -errno : pid;
    prctl(PR_SET_PDEATHSIG, SIGHUP);
    if (getppid() != parent) kill(getpid(), SIGHUP);
    return 0;
}

pid_t pw_spawn_guardian(const char *path, char *const argv[], int state_fd, int watch_fd) {
    pid_t pid = fork();
    if (pid < 0) return -errno;
    if (pid > 0) return pid;
    // Child: async-signal-safe calls only.
    setsid();
    int s = fcntl(state_fd, F_DUPFD, 10), w = fcntl(watch_fd, F_DUPFD, 10);
    if (s < 0 || w < 0 || dup2(s, 3) < 0 || dup2(w, 4) < 0) _exit(127);
    for (int fd = 5; fd < 1024; fd++) close(fd);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execv(path, argv);
    _exit(127);
}

int pw_timer_start(int signal, int64_t first_ns, int64_t period_ns, void **timer) {
    struct sigevent event;
    memset(&event, 0, sizeof event);
    event.sigev_notify = SIGEV_THREAD_ID;
    event.sigev_signo = signal;
    event._sigev_un._tid = (pid_t)syscall(SYS_gettid);
    timer_t id;
    if (timer_create(CLOCK_MONOTONIC, &event, &id) != 0) return -errno;
    struct itimerspec when;
    when.it_value.tv_sec = first_ns / 1000000000;
    when.it_value.tv_nsec = first_ns % 1000000000;
    when.it_interval.tv_sec = period_ns / 1000000000;
    when.it_interval.tv_nsec = period_ns % 1000000000;
    if (timer_settime(id, 0, &when, NULL) != 0) {
        int e = errno;
        timer_delete(id);
        return -e;
    }
    *timer = (void *)id;
    return 0;
}

void pw_timer_delete(void *timer) { timer_delete((timer_t)timer); }

void pw_store_release(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
uint64_t pw_load_acquire(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }

int pw_shared_memory(const char *name, size_t size) {
    int fd = (int)syscall(SYS_memfd_create, name, 1 /* MFD_CLOEXEC */);
    if (fd < 0) return -errno;
    if (ftruncate(fd, (off_t)size) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

static volatile sig_atomic_t pw_raised_signal;

static void pw_flag(int signal) {
    pw_raised_signal = signal;
    pw_woken = 1;
}

int pw_install_flag_handler(int signal) { return pw_install_handler(signal, pw_flag); }

int pw_take_raised_signal(void) {
    int s = pw_raised_signal;
    pw_raised_signal = 0;
    return s;
}

static int pw_install_filter(const pw_bpf_instruction *filter, int length) {
    struct sock_fprog prog = { (unsigned short)length, (struct sock_filter *)filter };
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) == 0) return 0;
    if (errno != EACCES) return errno;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == -1) return errno;
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) == 0) return 0;
    return errno;
}

pid_t pw_spawn_stopped(const char *path, char *const argv[], int stdin_fd, int stdout_fd,
                       int empty_mask, const pw_bpf_instruction *filter, int filter_length,
                       int *exec_error_fd) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) == -1) return -errno;
    pid_t pid = fork();
    if (pid == -1) {
        int e = errno;
        close(fds[0]);
        close(fds[1]);
        return -e;
    }
    if (pid == 0) {
        // Child: only async-signal-safe calls from here to exec.
        close(fds[0]);
        if (stdin_fd >= 0 && dup2(stdin_fd, 0) == -1) _exit(127);
        if (stdout_fd >= 0 && dup2(stdout_fd, 1) == -1) _exit(127);
        if (empty_mask) {
            sigset_t none;
            sigemptyset(&none);
            sigprocmask(SIG_SETMASK, &none, NULL);
        }
        // The mask and ignored dispositions are inherited as they are, as
        // from a shell; the tracer's own handlers are reset by exec.
        kill(getpid(), SIGSTOP);
        // Seized now: a SECCOMP_RET_TRACE filter has its tracer.
        int report[2] = { 1, 0 };
        if (filter != NULL && (report[1] = pw_install_filter(filter, filter_length)) != 0) {
            ssize_t ignored = write(fds[1], report, sizeof report);
            (void)ignored;
            _exit(127);
        }
        execvp(path, argv);
        report[0] = 2;
        report[1] = errno;
        ssize_t ignored = write(fds[1], report, sizeof report);
        (void)ignored;
        _exit(127);
    }
    close(fds[1]);
    *exec_error_fd = fds[0];
    return pid;
}

int pw_block_signals(uint64_t mask, int block) {
    sigset_t set;
    sigemptyset(&set);
    for (int s = 1; s <= 64; s++)
        if (mask & (1ull << (s - 1))) sigaddset(&set, s);
    int r = pthread_sigmask(block ? SIG_BLOCK : SIG_UNBLOCK, &set, NULL);
    return r == 0 ? 0 : -r;
}

int pw_block_signal(int signal, int block) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, signal);
    int r = pthread_sigmask(block ? SIG_BLOCK : SIG_UNBLOCK, &set, NULL);
    return r == 0 ? 0 : -r;
}
