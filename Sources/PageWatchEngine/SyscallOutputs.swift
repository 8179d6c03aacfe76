import PageWatchAddressSpace
import PageWatchPtrace

/// The `size`-byte little-endian integer at `offset` of tracee bytes.
func littleEndian(_ bytes: [UInt8], at offset: Int, size: Int = 8) -> UInt64 {
    var v: UInt64 = 0
    for i in 0..<size { v |= UInt64(bytes[offset + i]) << UInt64(8 * i) }
    return v
}

/// Hazard 1: the user memory a syscall writes, found from its arguments
/// before it runs (one row per syscall). The kernel's copy into a read-only
/// page fails with EFAULT instead of faulting, so these pages must be made
/// writable, and counted dirty, before the call.
struct SyscallOutputs {
    typealias Arch = HostArchitecture
    /// Reads tracee memory (iovec arrays, msghdrs, lengths behind pointers).
    let read: (RemoteAddress, Int) -> [UInt8]

    func word(_ a: UInt64, _ size: Int = 8) -> UInt64 {
        let b = read(RemoteAddress(a), size)
        return b.count == size ? littleEndian(b, at: 0, size: size) : 0
    }

    func block(_ address: UInt64, _ length: UInt64) -> [AddressRange] {
        guard address != 0, length > 0 else { return [] }
        let end = address &+ length
        guard end > address else { return [] }
        return [AddressRange(address, end)]
    }

    /// `iovcnt` iovecs at `iov`: each {base, len}.
    func iovecs(_ iov: UInt64, _ count: UInt64) -> [AddressRange] {
        let n = min(count, 1024)
        let L = Arch.layout
        var out: [AddressRange] = []
        for i in 0..<n {
            let at = iov &+ i &* L.iovec
            out += block(word(at), word(at &+ 8))
        }
        return out
    }

    /// A struct msghdr the kernel fills: name, the iovecs, control, and the
    /// header's own namelen/controllen/flags fields.
    func msghdr(_ p: UInt64) -> [AddressRange] {
        guard p != 0 else { return [] }
        let name = word(p), namelen = word(p &+ 8, 4)
        let iov = word(p &+ 16), iovlen = word(p &+ 24)
        let control = word(p &+ 32), controllen = word(p &+ 40)
        return block(p, Arch.layout.msghdr) + block(name, namelen) + iovecs(iov, iovlen) + block(control, controllen)
    }

    /// A socket address and its length word (accept, getsockname, recvfrom...).
    func sockaddr(_ address: UInt64, _ lengthPointer: UInt64) -> [AddressRange] {
        guard address != 0, lengthPointer != 0 else { return [] }
        return block(address, word(lengthPointer, 4)) + block(lengthPointer, 4)
    }

    func fdSets(_ nfds: UInt64, _ sets: [UInt64]) -> [AddressRange] {
        let bytes = (min(nfds, 1 << 20) + 63) / 64 * 8
        return sets.flatMap { block($0, bytes) }
    }

    /// nil: PageWatch does not know what this call writes (an ioctl it cannot
    /// decode, prctl): its exit is checked for EFAULT instead.
    func ranges(_ call: Syscall, _ a: [UInt64]) -> [AddressRange]? {
        let L = Arch.layout
        switch call {
        case .read, .pread64, .getdents, .getdents64: return block(a[1], a[2])
        case .getrandom: return block(a[0], a[1])
        case .readv, .preadv, .preadv2: return iovecs(a[1], a[2])
        case .recvfrom: return block(a[1], a[2]) + sockaddr(a[4], a[5])
        case .recvmsg: return msghdr(a[1])
        case .recvmmsg, .sendmmsg:
            var out: [AddressRange] = []
            for i in 0..<min(a[2], 1024) { out += msghdr(a[1] &+ i &* L.mmsghdr) + block(a[1] &+ i &* L.mmsghdr &+ L.msghdr, 4) }
            return out
        case .pipe, .pipe2: return block(a[0], 8)
        case .socketpair: return block(a[3], 8)
        case .wait4: return block(a[1], 4) + block(a[3], L.rusage)
        case .waitid: return block(a[2], L.siginfo) + block(a[4], L.rusage)
        case .fstat, .stat, .lstat: return block(a[1], L.stat)
        case .newfstatat: return block(a[2], L.stat)
        case .statx: return block(a[4], L.statx)
        case .statfs, .fstatfs: return block(a[1], L.statfs)
        case .getcwd: return block(a[0], a[1])
        case .readlink: return block(a[1], a[2])
        case .readlinkat: return block(a[2], a[3])
        case .uname: return block(a[0], L.utsname)
        case .sysinfo: return block(a[0], L.sysinfo)
        case .getrusage: return block(a[1], L.rusage)
        case .getrlimit: return block(a[1], L.rlimit)
        case .prlimit64: return block(a[3], L.rlimit)
        case .times: return block(a[0], L.tms)
        case .rt_sigaction: return block(a[2], L.kernelSigaction)
        case .rt_sigprocmask: return block(a[2], a[3])
        case .rt_sigpending: return block(a[0], a[1])
        case .sigaltstack: return block(a[1], L.stackT)
        case .rt_sigtimedwait: return block(a[1], L.siginfo)
        case .clock_gettime, .clock_getres: return block(a[1], L.timespec)
        case .clock_nanosleep: return a[1] & 1 != 0 ? [] : block(a[3], L.timespec)  // not for TIMER_ABSTIME
        case .nanosleep: return block(a[1], L.timespec)
        case .gettimeofday: return block(a[0], L.timeval) + block(a[1], 8)
        case .time: return block(a[0], 8)
        case .poll: return block(a[0], a[1] &* L.pollfd)
        case .ppoll: return block(a[0], a[1] &* L.pollfd) + block(a[2], L.timespec)
        case .select: return fdSets(a[0], [a[1], a[2], a[3]]) + block(a[4], L.timeval)
        case .pselect6: return fdSets(a[0], [a[1], a[2], a[3]]) + block(a[4], L.timespec)
        case .epoll_wait, .epoll_pwait, .epoll_pwait2: return block(a[1], min(a[2], 1 << 20) &* L.epollEvent)
        case .accept, .accept4, .getsockname, .getpeername: return sockaddr(a[1], a[2])
        case .getsockopt: return a[4] == 0 ? [] : block(a[3], word(a[4], 4)) + block(a[4], 4)
        case .ioctl: return ioctlOutput(UInt32(truncatingIfNeeded: a[1]), a[2])
        case .io_getevents: return block(a[3], min(a[2], 1 << 16) &* L.ioEvent)
        case .sched_getaffinity: return block(a[2], a[1])
        case .futex:
            let op = a[1] & 0x7f
            var words = op == 5 ? block(a[4], 4) : []  // FUTEX_WAKE_OP writes *uaddr2
            if a[1] & 0x80 == 0 {
                // A shared futex on a read-only anonymous page fails with
                // EFAULT (get_futex_key): its words must not stay armed. Not
                // written: reported dirty all the same (pthread_join on a
                // thread PageWatch did not see start, in attach mode).
                words += block(a[0], 4)
                if [3, 4, 11, 12].contains(op) { words += block(a[4], 4) }  // the requeue target
            }
            return words
        case .process_vm_readv: return iovecs(a[1], a[2])
        case .getitimer: return block(a[1], L.itimerval)
        case .setitimer: return block(a[2], L.itimerval)
        case .mincore: return block(a[2], (a[1] &+ Page.size - 1) / Page.size)
        case .get_robust_list: return block(a[1], 8) + block(a[2], 8)
        case .sched_getparam: return block(a[1], 4)
        case .getresuid, .getresgid: return block(a[0], 4) + block(a[1], 4) + block(a[2], 4)
        case .getgroups: return block(a[1], min(a[0], 65536) &* 4)
        case .capget: return block(a[0], 8) + block(a[1], 24)
        case .sendfile: return block(a[2], 8)
        case .splice: return block(a[1], 8) + block(a[3], 8)
        case .timer_gettime, .timerfd_gettime: return block(a[1], L.itimerspec)
        case .timerfd_settime: return block(a[3], L.itimerspec)
        case .fcntl:
            switch a[1] {
            case 5, 36: return block(a[2], L.flock)  // F_GETLK, F_OFD_GETLK
            case 16: return block(a[2], 8)           // F_GETOWN_EX
            default: return []
            }
        case .get_mempolicy: return block(a[0], 4) + block(a[1], (a[2] &+ 7) / 8)
        case .getcpu: return block(a[0], 4) + block(a[1], 4)
        case .arch_prctl: return a[0] == 0x1003 || a[0] == 0x1004 ? block(a[1], 8) : []  // ARCH_GET_FS/GS
        case .msgrcv: return block(a[1], a[2] &+ 8)
        case .ptrace: return ptraceOutput(a)
        case .prctl, .shmctl, .semctl, .msgctl, .restart_syscall: return nil
        case .clone, .clone3, .fork, .vfork, .execve, .execveat, .rseq, .exit, .exit_group, .seccomp,
             .set_robust_list, .set_tid_address, .mmap, .munmap, .mprotect, .pkey_mprotect, .mremap, .brk, .madvise, .shmat, .shmdt:
            return []  // handled elsewhere (Tracker+Syscalls)
        }
    }

    /// ioctl: the size the command encodes when it reads data out (_IOC_READ),
    /// and a few classic terminal requests that encode none.
    func ioctlOutput(_ cmd: UInt32, _ arg: UInt64) -> [AddressRange]? {
        switch cmd {
        case 0x5401: return block(arg, 36)   // TCGETS: struct termios
        case 0x5413: return block(arg, 8)    // TIOCGWINSZ
        case 0x541B, 0x540F, 0x5411, 0x5429: return block(arg, 4)  // FIONREAD, TIOCGPGRP, TIOCOUTQ, TIOCGSID
        case 0x5402, 0x5403, 0x5404, 0x5414, 0x5410, 0x5421, 0x5451, 0x5450:
            return []  // TCSETS*, TIOCSWINSZ, TIOCSPGRP, FIONBIO, FIOCLEX, FIONCLEX: read only
        default: break
        }
        let direction = cmd >> 30, size = UInt64((cmd >> 16) & 0x3fff)
        if direction & 2 != 0 { return block(arg, size) }  // _IOC_READ: the kernel writes `size` bytes
        if direction == 1 { return [] }                    // _IOC_WRITE only: reads user memory
        return nil                                          // no encoding: unknown
    }
}
