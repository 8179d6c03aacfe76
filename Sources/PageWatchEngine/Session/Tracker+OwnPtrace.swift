import Glibc
import PageWatchAddressSpace
import PageWatchPtrace

/// Programs that use ptrace themselves (strace, gdb, sanitizers' leak
/// checkers). A task has one tracer. Under `run` every process of the
/// program stays traced by PageWatch for its whole life (the seccomp filter
/// it inherited needs a tracer), so the kernel refuses its
/// PTRACE_TRACEME and the ATTACH or SEIZE of its children (EPERM). That is
/// left as the kernel decides; the user is told once why, and that
/// `pagewatch attach` (no filter: fork children are let go at their first
/// stop) is the way to watch such a program.
extension Tracker {
    typealias Arch = HostArchitecture

    static let PTRACE_TRACEME: UInt64 = 0, PTRACE_ATTACH: UInt64 = 16, PTRACE_SEIZE: UInt64 = 0x4206

    /// A ptrace call's entry in `tid` (arguments `args`): said once when the
    /// kernel will refuse it because PageWatch traces the task it names.
    func noteOwnPtrace(_ args: [UInt64], tid: Int32) {
        guard !warnedAboutOwnPtrace else { return }
        let request = args[0]
        let name: String
        switch request {
        case Self.PTRACE_TRACEME: name = "PTRACE_TRACEME"
        case Self.PTRACE_ATTACH: name = "PTRACE_ATTACH"
        case Self.PTRACE_SEIZE: name = "PTRACE_SEIZE"
        default: return
        }
        let caller = threadGroup(of: tid) ?? tid
        if request != Self.PTRACE_TRACEME {
            // Refused because of PageWatch only when PageWatch traces the
            // target, and it is not one of the caller's own threads (never allowed).
            let target = Int32(truncatingIfNeeded: args[1])
            guard target > 0, statusField("TracerPid", target) == getpid(), threadGroup(of: target) != caller else {
                return
            }
        }
        warnedAboutOwnPtrace = true
        let what =
            "pid \(caller) calls ptrace(\(name)\(request == Self.PTRACE_TRACEME ? "" : ", \(Int32(truncatingIfNeeded: args[1]))")), "
            + "which the kernel refuses (EPERM): a process has one tracer, and "
        if resumeMode == .syscallStops {
            warn(
                what
                    + (request == Self.PTRACE_TRACEME
                        ? "PageWatch traces pid \(caller) while attached"
                        : "PageWatch traces the processes it follows (--follow-forks); without it they are left to the program")
            )
        } else {
            warn(
                what
                    + "under `pagewatch run` every process of the program stays traced by PageWatch (for its seccomp filter); "
                    + "to watch a program that uses ptrace, start it on its own and use `pagewatch attach PID` (no seccomp filter)"
            )
        }
    }

    /// A seccomp stop of a process PageWatch does not track: a ptrace call?
    func noteOwnPtraceAtEntry(tid: Int32) {
        guard !warnedAboutOwnPtrace, let regs = try? Arch.readRegisters(tid: tid),
            Arch.syscall(number: Arch.syscallNumber(regs)) == .ptrace
        else { return }
        noteOwnPtrace(Arch.syscallArguments(regs), tid: tid)
    }
}

extension SyscallOutputs {
    /// What a ptrace request writes into the caller's memory (x86_64 sizes
    /// where the request is x86-only); nil for one not known.
    func ptraceOutput(_ a: [UInt64]) -> [AddressRange]? {
        let data = a[3]
        switch a[0] {
        case 1, 2, 3: return block(data, 8)  // PEEKTEXT, PEEKDATA, PEEKUSER: the raw call stores the word
        case 12: return block(data, 27 * 8)  // GETREGS: struct user_regs_struct
        case 14: return block(data, 512)  // GETFPREGS: struct user_fpregs_struct
        case 25: return block(data, 16)  // GET_THREAD_AREA: struct user_desc
        case 0x4201: return block(data, 8)  // GETEVENTMSG
        case 0x4202: return block(data, Arch.layout.siginfo)  // GETSIGINFO
        // GETREGSET: the iovec, whose iov_len the kernel writes too
        case 0x4204: return block(data, Arch.layout.iovec) + block(word(data), word(data &+ 8))
        // PEEKSIGINFO: nr siginfos
        case 0x4209: return block(data, min(word(a[2] &+ 12, 4), 1 << 16) &* Arch.layout.siginfo)
        // GETSIGMASK, SECCOMP_GET_METADATA, GET_SYSCALL_INFO, GET_RSEQ_CONFIGURATION
        case 0x420a, 0x420d, 0x420e, 0x420f: return block(data, a[2])
        // TRACEME, POKE*, CONT, KILL, SINGLESTEP, SET*, ATTACH, DETACH, SYSCALL,
        // SYSEMU*, SETOPTIONS, SEIZE, INTERRUPT, LISTEN...
        case 0, 4, 5, 6, 7, 8, 9, 13, 15, 16, 17, 24, 26, 31, 32,
            0x4200, 0x4203, 0x4205, 0x4206, 0x4207, 0x4208, 0x420b:
            return []
        default: return nil  // SECCOMP_GET_FILTER (its size is the filter's), ARCH_PRCTL, others: checked for EFAULT
        }
    }
}
