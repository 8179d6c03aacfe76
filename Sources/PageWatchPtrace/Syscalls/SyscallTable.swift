/// What PageWatch knows about each syscall, as data: one row per call (in
/// the spirit of strace's `syscallent.h` and rr's `syscalls.py`). The facts
/// here hold on every architecture; each one numbers the calls in its own
/// file (`X86_64.syscallTable`), which indexes these rows by number once.
///
/// Adding a call: a `Syscall` case, a row here, its number in each arch file.
public enum SyscallTable {
    public static let rows: [SyscallRow] =
        [
            // Memory calls: their exit updates the tracked-memory model.
            SyscallRow(.mmap, .memory, .handledByItsOwnCode, interrupted: .nothing),
            SyscallRow(.munmap, .memory, .handledByItsOwnCode, interrupted: .nothing),
            SyscallRow(.mprotect, .memory, .handledByItsOwnCode, interrupted: .nothing),
            SyscallRow(.pkey_mprotect, .memory, .handledByItsOwnCode),
            SyscallRow(.mremap, .memory, .handledByItsOwnCode),
            SyscallRow(.brk, .memory, .handledByItsOwnCode),
            SyscallRow(.shmat, .memory, .handledByItsOwnCode),
            SyscallRow(.shmdt, .memory, .handledByItsOwnCode),
            SyscallRow(.madvise, .named, .handledByItsOwnCode, interrupted: .nothing),

            // Calls that copy out to user memory.
            SyscallRow(.read, .named, [.block(1, .argument(2))], interrupted: .nothing),
            SyscallRow(.pread64, .named, [.block(1, .argument(2))], interrupted: .nothing),
            SyscallRow(.getdents, .named, [.block(1, .argument(2))]),
            SyscallRow(.getdents64, .named, [.block(1, .argument(2))]),
            SyscallRow(.getrandom, .named, [.block(0, .argument(1))]),
            SyscallRow(.readv, .named, [.iovecs(array: 1, count: 2)], interrupted: .nothing),
            SyscallRow(.preadv, .named, [.iovecs(array: 1, count: 2)]),
            SyscallRow(.preadv2, .named, [.iovecs(array: 1, count: 2)]),
            SyscallRow(
                .recvfrom, .named, [.block(1, .argument(2)), .socketAddress(address: 4, lengthWord: 5)],
                interrupted: .nothing),
            SyscallRow(.recvmsg, .named, [.msghdr(at: 1)], interrupted: .nothing),
            SyscallRow(.recvmmsg, .named, [.mmsghdrs(array: 1, count: 2)], interrupted: .nothing),
            SyscallRow(.sendmmsg, .named, [.mmsghdrs(array: 1, count: 2)]),  // each msg_len
            SyscallRow(.pipe, .named, [.block(0, .bytes(8))]),  // int[2]
            SyscallRow(.pipe2, .named, [.block(0, .bytes(8))]),
            SyscallRow(.socketpair, .named, [.block(3, .bytes(8))]),
            SyscallRow(.wait4, .named, [.block(1, .bytes(4)), .block(3, .of(.rusage))], interrupted: .nothing),
            SyscallRow(.waitid, .named, [.block(2, .of(.siginfo)), .block(4, .of(.rusage))], interrupted: .nothing),
            SyscallRow(.fstat, .named, [.block(1, .of(.stat))]),
            SyscallRow(.stat, .named, [.block(1, .of(.stat))]),
            SyscallRow(.lstat, .named, [.block(1, .of(.stat))]),
            SyscallRow(.newfstatat, .named, [.block(2, .of(.stat))]),
            SyscallRow(.statx, .named, [.block(4, .of(.statx))]),
            SyscallRow(.statfs, .named, [.block(1, .of(.statfs))]),
            SyscallRow(.fstatfs, .named, [.block(1, .of(.statfs))]),
            SyscallRow(.getcwd, .named, [.block(0, .argument(1))]),
            SyscallRow(.readlink, .named, [.block(1, .argument(2))]),
            SyscallRow(.readlinkat, .named, [.block(2, .argument(3))]),
            SyscallRow(.uname, .named, [.block(0, .of(.utsname))]),
            SyscallRow(.sysinfo, .named, [.block(0, .of(.sysinfo))]),
            SyscallRow(.getrusage, .named, [.block(1, .of(.rusage))]),
            SyscallRow(.getrlimit, .named, [.block(1, .of(.rlimit))]),
            SyscallRow(.prlimit64, .named, [.block(3, .of(.rlimit))]),
            SyscallRow(.times, .named, [.block(0, .of(.tms))]),
            SyscallRow(.rt_sigaction, .named, [.block(2, .of(.kernelSigaction))]),
            SyscallRow(.rt_sigprocmask, .named, [.block(2, .argument(3))]),  // sigsetsize
            SyscallRow(.rt_sigpending, .named, [.block(0, .argument(1))]),
            SyscallRow(.sigaltstack, .named, [.block(1, .of(.stackT))]),
            SyscallRow(.rt_sigtimedwait, .named, [.block(1, .of(.siginfo))], interrupted: .nothing, endedByStop: true),
            SyscallRow(.clock_gettime, .named, [.block(1, .of(.timespec))]),
            SyscallRow(.clock_getres, .named, [.block(1, .of(.timespec))]),
            // The remaining time, unless TIMER_ABSTIME; also when interrupted.
            SyscallRow(
                .clock_nanosleep, .named, [.unlessFlag(argument: 1, mask: 1, .block(3, .of(.timespec)))],
                interrupted: .asOnSuccess),
            SyscallRow(.nanosleep, .named, [.block(1, .of(.timespec))], interrupted: .asOnSuccess),
            SyscallRow(.gettimeofday, .named, [.block(0, .of(.timeval)), .block(1, .bytes(8))]),
            SyscallRow(.time, .named, [.block(0, .bytes(8))]),
            // poll writes revents back even when interrupted; ppoll also its
            // timeout, select and pselect6 their fd sets and timeout.
            SyscallRow(
                .poll, .named, [.block(0, .array(count: 1, of: .pollfd, limit: nil))], interrupted: .asOnSuccess),
            SyscallRow(
                .ppoll, .named, [.block(0, .array(count: 1, of: .pollfd, limit: nil)), .block(2, .of(.timespec))],
                interrupted: .asOnSuccess),
            SyscallRow(
                .select, .named,
                [
                    .block(1, .fdSet(nfds: 0)), .block(2, .fdSet(nfds: 0)), .block(3, .fdSet(nfds: 0)),
                    .block(4, .of(.timeval)),
                ], interrupted: .asOnSuccess),
            SyscallRow(
                .pselect6, .named,
                [
                    .block(1, .fdSet(nfds: 0)), .block(2, .fdSet(nfds: 0)), .block(3, .fdSet(nfds: 0)),
                    .block(4, .of(.timespec)),
                ], interrupted: .asOnSuccess),
            SyscallRow(
                .epoll_wait, .named, [.block(1, .array(count: 2, of: .epollEvent, limit: 1 << 20))],
                interrupted: .nothing, endedByStop: true),
            SyscallRow(
                .epoll_pwait, .named, [.block(1, .array(count: 2, of: .epollEvent, limit: 1 << 20))],
                interrupted: .nothing, endedByStop: true),
            SyscallRow(
                .epoll_pwait2, .named, [.block(1, .array(count: 2, of: .epollEvent, limit: 1 << 20))],
                interrupted: .nothing, endedByStop: true),
            SyscallRow(.accept, .named, [.socketAddress(address: 1, lengthWord: 2)], interrupted: .nothing),
            SyscallRow(.accept4, .named, [.socketAddress(address: 1, lengthWord: 2)], interrupted: .nothing),
            SyscallRow(.getsockname, .named, [.socketAddress(address: 1, lengthWord: 2)]),
            SyscallRow(.getpeername, .named, [.socketAddress(address: 1, lengthWord: 2)]),
            SyscallRow(.getsockopt, .named, [.optionValue(value: 3, lengthWord: 4)]),
            SyscallRow(.ioctl, .named, .decodedByCommand),
            SyscallRow(.io_getevents, .named, [.block(3, .array(count: 2, of: .ioEvent, limit: 1 << 16))]),
            SyscallRow(.sched_getaffinity, .named, [.block(2, .argument(1))]),
            SyscallRow(.futex, .named, .decodedByCommand, interrupted: .nothing),
            SyscallRow(.process_vm_readv, .named, [.iovecs(array: 1, count: 2)]),
            SyscallRow(.getitimer, .named, [.block(1, .of(.itimerval))]),
            SyscallRow(.setitimer, .named, [.block(2, .of(.itimerval))]),
            SyscallRow(.mincore, .named, [.block(2, .pageVector(length: 1))]),
            SyscallRow(.get_robust_list, .named, [.block(1, .bytes(8)), .block(2, .bytes(8))]),
            SyscallRow(.sched_getparam, .named, [.block(1, .bytes(4))]),
            SyscallRow(.getresuid, .named, [.block(0, .bytes(4)), .block(1, .bytes(4)), .block(2, .bytes(4))]),
            SyscallRow(.getresgid, .named, [.block(0, .bytes(4)), .block(1, .bytes(4)), .block(2, .bytes(4))]),
            SyscallRow(.getgroups, .named, [.block(1, .array(count: 0, of: .gid, limit: 65536))]),
            SyscallRow(.capget, .named, [.block(0, .of(.capHeader)), .block(1, .of(.capData))]),
            SyscallRow(.sendfile, .named, [.block(2, .bytes(8))]),  // the offset
            SyscallRow(.splice, .named, [.block(1, .bytes(8)), .block(3, .bytes(8))]),  // the offsets
            SyscallRow(.timer_gettime, .named, [.block(1, .of(.itimerspec))]),
            SyscallRow(.timerfd_gettime, .named, [.block(1, .of(.itimerspec))]),
            SyscallRow(.timerfd_settime, .named, [.block(3, .of(.itimerspec))]),
            SyscallRow(.fcntl, .named, .decodedByCommand, interrupted: .nothing),
            SyscallRow(.get_mempolicy, .named, [.block(0, .bytes(4)), .block(1, .bitmap(bits: 2))]),
            SyscallRow(.getcpu, .named, [.block(0, .bytes(4)), .block(1, .bytes(4))]),
            SyscallRow(.arch_prctl, .named, .decodedByCommand),
            SyscallRow(.msgrcv, .named, [.block(1, .argumentPlus(2, 8))]),  // mtype, then the text
            SyscallRow(.ptrace, .named, .decodedByCommand),
            SyscallRow(.prctl, .named, .unknown),
            SyscallRow(.shmctl, .named, .unknown),
            SyscallRow(.semctl, .named, .unknown),
            SyscallRow(.msgctl, .named, .unknown),
            SyscallRow(.restart_syscall, .named, .unknown),

            // Threads, processes, images: their entry has its own code.
            SyscallRow(.clone, .named, .handledByItsOwnCode),
            SyscallRow(.clone3, .named, .handledByItsOwnCode),
            SyscallRow(.fork, .named, .handledByItsOwnCode),
            SyscallRow(.vfork, .named, .handledByItsOwnCode),
            SyscallRow(.execve, .named, .handledByItsOwnCode),
            SyscallRow(.execveat, .named, .handledByItsOwnCode),
            SyscallRow(.rseq, .named, .handledByItsOwnCode),
            SyscallRow(.exit, .named, .handledByItsOwnCode),
            SyscallRow(.exit_group, .named, .handledByItsOwnCode),
            SyscallRow(.seccomp, .named, .handledByItsOwnCode),
            SyscallRow(.set_robust_list, .named, .handledByItsOwnCode),
            SyscallRow(.set_tid_address, .named, .handledByItsOwnCode),

            // Never write user memory; those that block write nothing when interrupted.
            SyscallRow(.write, .harmless, .nothing, interrupted: .nothing),
            SyscallRow(.pwrite64, .harmless, .nothing, interrupted: .nothing),
            SyscallRow(.writev, .harmless, .nothing, interrupted: .nothing),
            SyscallRow(.pause, .harmless, .nothing, interrupted: .nothing),
            SyscallRow(.connect, .harmless, .nothing, interrupted: .nothing),
            SyscallRow(.sendto, .harmless, .nothing, interrupted: .nothing),
            SyscallRow(.sendmsg, .harmless, .nothing, interrupted: .nothing),
            SyscallRow(.flock, .harmless, .nothing, interrupted: .nothing),
            SyscallRow(.openat, .harmless, .nothing, interrupted: .nothing),
        ]
        + harmless([
            .close, .lseek, .pwritev, .pwritev2, .access, .faccessat, .faccessat2, .open, .openat2, .creat,
            .dup, .dup2, .dup3, .sched_yield, .alarm, .getpid, .getppid, .gettid, .getuid, .geteuid, .getgid,
            .getegid, .getpgrp, .getpgid, .getsid, .setpgid, .setsid, .setuid, .setgid, .setreuid, .setregid,
            .setresuid, .setresgid, .kill, .tkill, .tgkill, .socket, .bind, .listen, .shutdown, .setsockopt,
            .fsync, .fdatasync, .ftruncate, .truncate, .rename, .renameat, .renameat2, .mkdir, .mkdirat, .rmdir,
            .unlink, .unlinkat, .link, .linkat, .symlink, .symlinkat, .chmod, .fchmod, .fchmodat, .chown, .fchown,
            .lchown, .fchownat, .umask, .chdir, .fchdir, .sync, .syncfs, .sched_setaffinity, .setpriority,
            .getpriority, .eventfd2, .epoll_create1, .epoll_ctl, .inotify_init1, .inotify_add_watch,
            .inotify_rm_watch, .timerfd_create, .memfd_create, .fadvise64, .fallocate, .mlock, .munlock,
            .mlockall, .munlockall, .membarrier, .msync, .utimensat, .rt_sigreturn, .rt_sigqueueinfo,
            .rt_tgsigqueueinfo, .sched_setscheduler, .sched_setparam, .sched_getscheduler, .signalfd4,
            .close_range, .pidfd_open, .pidfd_send_signal, .mount, .umount2, .sethostname,
        ]) + [
            // io_uring (ProcessTracker+IOUring decodes what its requests write).
            SyscallRow(.io_uring_setup, .ioUring, .handledByItsOwnCode),
            // Its wait for completions (IORING_ENTER_GETEVENTS) checks for any
            // pending signal; EINTR only when it submitted nothing, so running
            // it again submits nothing twice.
            SyscallRow(.io_uring_enter, .ioUring, .handledByItsOwnCode, endedByStop: true),
            SyscallRow(.io_uring_register, .ioUring, .handledByItsOwnCode),

            // Traced and checked at the exit like a call not in the table.
            SyscallRow(.rt_sigsuspend, .unhandled, .unknown, interrupted: .nothing),
            SyscallRow(.semop, .unhandled, .unknown, endedByStop: true),
            SyscallRow(.semtimedop, .unhandled, .unknown, endedByStop: true),
        ]

    static func harmless(_ calls: [Syscall]) -> [SyscallRow] {
        calls.map { SyscallRow($0, .harmless, .nothing) }
    }

    /// Rows by call, built once.
    static let byCall: [Syscall: SyscallRow] = Dictionary(uniqueKeysWithValues: rows.map { ($0.call, $0) })
}

extension Syscall {
    /// This call's row of `SyscallTable`.
    public var row: SyscallRow { SyscallTable.byCall[self]! }
}

/// One syscall: what PageWatch does with it and what it writes.
public struct SyscallRow: Sendable {
    public let call: Syscall
    public let kind: SyscallKind
    /// The user memory a successful call writes.
    public let writes: SyscallWrites
    /// The user memory it writes when a signal or a stop interrupts it while
    /// it blocks (restarted or not); nil when not known, so that the thread
    /// is not interrupted while that memory may be armed.
    public let writesWhenInterrupted: InterruptedWrites?
    /// The kernel ends it with EINTR, never restarting it, when the thread
    /// merely stops (a stop signal, or a ptrace interrupt): signal(7),
    /// "Interruption of system calls and library functions by stop signals".
    public let endedByStop: Bool

    public var name: String { call.rawValue }

    init(
        _ call: Syscall, _ kind: SyscallKind, _ writes: SyscallWrites, interrupted: InterruptedWrites? = nil,
        endedByStop: Bool = false
    ) {
        self.call = call
        self.kind = kind
        self.writes = writes
        self.writesWhenInterrupted = interrupted
        self.endedByStop = endedByStop
    }
}

/// What PageWatch does at a call's entry.
public enum SyscallKind: Sendable, Equatable {
    /// Never writes user memory: the launch seccomp filter lets it run
    /// untraced, and attach mode resumes it at once.
    case harmless
    /// Changes mappings or protections: one at a time, and its exit updates
    /// the tracked-memory model (`ProcessTracker.memoryExit`).
    case memory
    /// Handled by name at its entry: its outputs (`writes`) un-armed, or its own code.
    case named
    /// io_uring's: its requests are decoded by the io_uring code.
    case ioUring
    /// Handled like a call not in the table (checked for EFAULT at its exit);
    /// listed for what an interruption or a stop does to it.
    case unhandled
}

/// The user memory a call writes, from its arguments.
public enum SyscallWrites: Sendable, Equatable, ExpressibleByArrayLiteral {
    case nothing
    case outputs([SyscallOutput])
    /// Depends on a command or operation argument (ioctl, fcntl, futex,
    /// arch_prctl, ptrace): `SyscallOutputs` decodes each.
    case decodedByCommand
    /// Not known: its exit is checked for EFAULT instead.
    case unknown
    /// Its entry or exit code does what it needs (memory calls, clone,
    /// exit, io_uring): no outputs to un-arm here.
    case handledByItsOwnCode

    public init(arrayLiteral outputs: SyscallOutput...) { self = .outputs(outputs) }
}

/// What an interrupted call writes.
public enum InterruptedWrites: Sendable, Equatable {
    case nothing
    /// The same as on success (`writes`: the fd sets, revents, the remaining time).
    case asOnSuccess
}

/// One output of a call; argument numbers count from 0.
public indirect enum SyscallOutput: Sendable, Equatable {
    /// `length` bytes at the pointer argument `at`.
    case block(Int, OutputLength)
    /// The buffers of `count` iovecs at `array`.
    case iovecs(array: Int, count: Int)
    /// A `struct msghdr` the kernel fills: the header, its name, iovecs and control.
    case msghdr(at: Int)
    /// `count` `struct mmsghdr`s: each msghdr and its msg_len.
    case mmsghdrs(array: Int, count: Int)
    /// A socket address and its 4-byte length word; nothing unless both are given.
    case socketAddress(address: Int, lengthWord: Int)
    /// getsockopt's value (length from the word) and its length word; nothing without the word.
    case optionValue(value: Int, lengthWord: Int)
    /// `output` unless the argument has a bit of `mask` set (clock_nanosleep's TIMER_ABSTIME).
    case unlessFlag(argument: Int, mask: UInt64, SyscallOutput)

    /// Whether evaluating it reads tracee memory (more than the arguments).
    public var readsTraceeMemory: Bool {
        switch self {
        case .block: return false
        case .iovecs, .msghdr, .mmsghdrs, .socketAddress, .optionValue: return true
        case .unlessFlag(_, _, let output): return output.readsTraceeMemory
        }
    }
}

/// The length of a `SyscallOutput.block`.
public enum OutputLength: Sendable, Equatable {
    case fixed(KernelStruct)
    /// A length argument.
    case argument(Int)
    /// A length argument plus a header (msgrcv's mtype).
    case argumentPlus(Int, UInt64)
    /// `count` elements (an argument), at most `limit`.
    case array(count: Int, of: KernelStruct, limit: UInt64?)
    /// One fd set of `nfds` (an argument) descriptors, in 64-bit words.
    case fdSet(nfds: Int)
    /// A bitmap of `bits` (an argument) bits, in bytes.
    case bitmap(bits: Int)
    /// mincore's vector: a byte per page of `length` (an argument).
    case pageVector(length: Int)

    public static func of(_ s: KernelStruct) -> OutputLength { .fixed(s) }
    public static func bytes(_ n: UInt64) -> OutputLength { .fixed(.bytes(n)) }
}

/// The user structures the kernel writes; their sizes come from the
/// architecture's `ABILayout`.
public enum KernelStruct: Sendable, Equatable {
    case stat, statfs, statx, utsname, sysinfo, rusage, rlimit, kernelSigaction, stackT
    case timespec, timeval, itimerval, itimerspec, siginfo, epollEvent, pollfd, ioEvent, flock
    case tms, iovec, msghdr, mmsghdr, pointer
    /// gid_t.
    case gid
    /// capget's `__user_cap_header_struct` and its two `__user_cap_data_struct`s.
    case capHeader, capData
    /// A plain word or pair of words (a pid, an fd pair, an offset).
    case bytes(UInt64)
}

extension ABILayout {
    public func size(of s: KernelStruct) -> UInt64 {
        switch s {
        case .stat: return stat
        case .statfs: return statfs
        case .statx: return statx
        case .utsname: return utsname
        case .sysinfo: return sysinfo
        case .rusage: return rusage
        case .rlimit: return rlimit
        case .kernelSigaction: return kernelSigaction
        case .stackT: return stackT
        case .timespec: return timespec
        case .timeval: return timeval
        case .itimerval: return itimerval
        case .itimerspec: return itimerspec
        case .siginfo: return siginfo
        case .epollEvent: return epollEvent
        case .pollfd: return pollfd
        case .ioEvent: return ioEvent
        case .flock: return flock
        case .tms: return tms
        case .iovec: return iovec
        case .msghdr: return msghdr
        case .mmsghdr: return mmsghdr
        case .pointer: return pointer
        case .gid: return 4
        case .capHeader: return 8
        case .capData: return 24
        case .bytes(let n): return n
        }
    }
}

/// One architecture's numbers of the table's calls, indexed once: number →
/// row is an array look-up, nothing rebuilt per call.
public struct SyscallNumbering: Sendable {
    /// The row of each number (the index), nil where the table has none.
    let rowsByNumber: [SyscallRow?]
    let numbersByCall: [Syscall: Int64]
    /// The numbers PageWatch's injected code uses.
    public let injected: SyscallNumbers

    /// `numbers`: the arch's number of each call it has (a call missing
    /// here does not exist there, or is not numbered yet).
    public init(_ numbers: [Syscall: Int64]) {
        var rows = [SyscallRow?](repeating: nil, count: Int(numbers.values.max() ?? -1) + 1)
        for (call, number) in numbers {
            precondition(number >= 0 && rows[Int(number)] == nil, "syscall number \(number) given twice")
            rows[Int(number)] = call.row
        }
        rowsByNumber = rows
        numbersByCall = numbers
        injected = SyscallNumbers(
            getpid: numbers[.getpid]!, mmap: numbers[.mmap]!, munmap: numbers[.munmap]!,
            mprotect: numbers[.mprotect]!, madvise: numbers[.madvise]!,
            memfdCreate: numbers[.memfd_create]!,
            ftruncate: numbers[.ftruncate]!, close: numbers[.close]!)
    }

    public func row(number: Int64) -> SyscallRow? {
        number >= 0 && number < Int64(rowsByNumber.count) ? rowsByNumber[Int(number)] : nil
    }

    public func number(_ call: Syscall) -> Int64? { numbersByCall[call] }

    /// The numbers of every call of one kind, ascending.
    public func numbers(of kind: SyscallKind) -> [Int64] {
        rowsByNumber.indices.filter { rowsByNumber[$0]?.kind == kind }.map(Int64.init)
    }

    /// Every numbered call, by number.
    public var numbered: [(number: Int64, row: SyscallRow)] {
        rowsByNumber.indices.compactMap { n in rowsByNumber[n].map { (Int64(n), $0) } }
    }
}
