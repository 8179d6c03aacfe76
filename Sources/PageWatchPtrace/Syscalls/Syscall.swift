/// Every syscall PageWatch knows by name: one case per row of
/// `SyscallTable.rows`. Each architecture numbers them in its own file
/// (`X86_64.syscallTable`); generic code never uses numbers.
public enum Syscall: String, CaseIterable, Sendable {
    // The program's own memory calls.
    case mmap, munmap, mprotect, pkey_mprotect, mremap, brk, madvise, shmat, shmdt
    // Calls that copy out to user memory.
    case read, pread64, readv, preadv, preadv2, recvfrom, recvmsg, recvmmsg, getrandom, pipe, pipe2
    case socketpair, wait4, waitid, fstat, stat, lstat, newfstatat, statx, statfs, fstatfs, getdents64
    case getdents, getcwd, readlink, readlinkat, uname, sysinfo, getrusage, getrlimit, prlimit64, times
    case rt_sigaction, rt_sigprocmask, sigaltstack, rt_sigtimedwait, rt_sigpending, clock_gettime
    case clock_getres, clock_nanosleep, nanosleep, gettimeofday, poll, ppoll, select, pselect6
    case epoll_wait, epoll_pwait, epoll_pwait2, accept, accept4, getsockname, getpeername, getsockopt
    case ioctl, io_getevents, sched_getaffinity, futex, process_vm_readv, getitimer, setitimer
    case mincore, get_robust_list, sched_getparam, getresuid, getresgid, getgroups, capget, time
    case sendmmsg, sendfile, splice, timer_gettime, timerfd_gettime, timerfd_settime, fcntl
    case get_mempolicy, getcpu, arch_prctl, prctl, shmctl, msgrcv, semctl, msgctl
    // The program's own tracing (strace, gdb): peeks and register reads write its memory.
    case ptrace
    // Threads, processes, images.
    case clone, clone3, fork, vfork, execve, execveat, rseq, exit, exit_group, seccomp, set_robust_list
    case set_tid_address
    case restart_syscall
    // Never write user memory (`SyscallKind.harmless`).
    case write, close, lseek, pwrite64, writev, pwritev, pwritev2, access, faccessat, faccessat2
    case open, openat, openat2, creat, dup, dup2, dup3, sched_yield, pause, alarm
    case getpid, getppid, gettid, getuid, geteuid, getgid, getegid, getpgrp, getpgid, getsid
    case setpgid, setsid, setuid, setgid, setreuid, setregid, setresuid, setresgid, kill, tkill, tgkill
    case socket, connect, bind, listen, shutdown, sendto, sendmsg, setsockopt, fsync, fdatasync
    case ftruncate, truncate, rename, renameat, renameat2, mkdir, mkdirat, rmdir, unlink, unlinkat
    case link, linkat, symlink, symlinkat, chmod, fchmod, fchmodat, chown, fchown, lchown, fchownat
    case umask, chdir, fchdir, sync, syncfs, sched_setaffinity, setpriority, getpriority
    case eventfd2, epoll_create1, epoll_ctl, inotify_init1, inotify_add_watch, inotify_rm_watch
    case timerfd_create, memfd_create, fadvise64, fallocate, mlock, munlock, mlockall, munlockall
    case membarrier, flock, msync, utimensat, rt_sigreturn, rt_sigqueueinfo, rt_tgsigqueueinfo
    case sched_setscheduler, sched_setparam, sched_getscheduler, signalfd4, close_range
    case pidfd_open, pidfd_send_signal, mount, umount2, sethostname
    // io_uring's (`SyscallKind.ioUring`).
    case io_uring_setup, io_uring_enter, io_uring_register
    // Handled as calls PageWatch does not know, listed for what a stop does to them.
    case rt_sigsuspend, semop, semtimedop
}
