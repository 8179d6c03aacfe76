import Glibc
import PageWatchAddressSpace
import PageWatchPtrace

/// Why the helper thread could not make the userfaultfd: the process
/// stays on the ptrace path (or, with one thread, the in-program set-up).
enum HelperThreadFailure: Error, CustomStringConvertible {
    /// `pidfd_open` has no `PIDFD_THREAD` here (before Linux 6.9).
    case noThreadPidfds(Errno)
    /// The injected `clone` failed (RLIMIT_NPROC, a pids cgroup: EAGAIN).
    case cloneRefused(pid: Int32, Errno)
    /// `userfaultfd(2)` failed in the helper (a sandbox: EPERM, ENOSYS).
    case userfaultfdRefused(pid: Int32, Errno)
    /// The helper ended before it was done (the program exec'd or exited).
    case gone(tid: Int32)

    var description: String {
        switch self {
        case .noThreadPidfds(let errno):
            return "this kernel has no PIDFD_THREAD for a helper thread (pidfd_open: \(errno))"
        case let .cloneRefused(pid, errno):
            return "a helper thread in pid \(pid) was refused: clone(2) failed: \(errno)"
        case let .userfaultfdRefused(pid, errno):
            return "userfaultfd(2) in pid \(pid) failed: \(errno)"
        case .gone(let tid):
            return "the helper thread \(tid) ended before its userfaultfd was taken"
        }
    }
}

/// The userfaultfd made by a helper thread (`pagewatch attach`), never in
/// the program's descriptor table: injected into a stopped thread, `clone`
/// makes a thread of the program that shares its memory, signal handlers
/// and thread group but has a copy of its descriptor table (no
/// `CLONE_FILES`). Traced from birth (`PTRACE_O_TRACECLONE`), it stops
/// before running any instruction; with every signal blocked it runs
/// `userfaultfd(2)` from the gadget (the context is bound to the shared
/// address space), PageWatch takes the descriptor from its table through a
/// thread pidfd, and it leaves with `exit(2)` (the thread alone). So
/// nothing sharing the program's table (its other threads, io-wq workers,
/// a `CLONE_FILES` process) can see a number taken, and the attach does
/// not need the process to have a single thread. The helper is never one
/// of the engine's threads: it is waited for here, by tid, and reaped here.
extension ProcessTracker {
    /// A thread (`CLONE_THREAD`: no exit signal, reaped by its tracer here,
    /// invisible to the program's `wait`) sharing memory, filesystem
    /// information, signal handlers and SysV semaphore undo (what
    /// `pthread_create` shares) but not the descriptor table. No
    /// `CLONE_SETTLS`, no tid words (nothing written at its birth or exit),
    /// stack 0 (it keeps the parent's stack pointer, and never uses it:
    /// the gadget touches no memory, and no signal is delivered to it).
    static let helperCloneFlags: UInt64 = 0x100 | 0x200 | 0x800 | 0x1_0000 | 0x4_0000

    /// Makes the userfaultfd in a helper thread cloned from `thread` and
    /// takes it over. The helper has exited and been reaped on every return.
    func userfaultfdFromHelperThread(_ thread: TrackedThread) throws -> WriteProtectFD {
        if let lacking = WriteProtectFD.threadPidfdsLacking { throw HelperThreadFailure.noThreadPidfds(lacking) }
        guard let gadget = injector.remote?.gadget else { throw HelperThreadFailure.gone(tid: thread.tid) }
        let cloned = try injector.inject(thread) { remote, completing in
            let outcome = try remote.run(
                Arch.number(.clone)!, [Self.helperCloneFlags, 0, 0, 0, 0], in: thread.tid, completing: completing)
            return (outcome.value, outcome)
        }
        let bornNs = monotonicNs()
        guard let cloned else { throw HelperThreadFailure.gone(tid: thread.tid) }
        if cloned < 0 { throw HelperThreadFailure.cloneRefused(pid: pid, Errno(Int32(truncatingIfNeeded: -cloned))) }
        let helper = Int32(truncatingIfNeeded: cloned)
        trace("  helper thread \(helper) makes the userfaultfd")
        session.attachState?.atHelperMoment("clone")
        var reaped = false
        defer {
            if !reaped { endHelperThread(helper) }
            trace("  helper thread \(helper) lived \((monotonicNs() &- bornNs) / 1000) µs")
        }
        guard try waitForHelperFirstStop(helper) else {
            reaped = true
            throw HelperThreadFailure.gone(tid: helper)
        }
        do {
            // Blocked before it runs anything: no process-directed signal
            // is delivered to it (nor its frame written on the parent's
            // stack), the synchronous ones too: it runs only the gadget's
            // register moves and `syscall`s, which do not fault, and an
            // unblocked SIGSEGV sent to the process could be taken (and lost) here.
            try Ptrace.setSignalMask(helper, ~0)
            // What it runs if PageWatch lets go of it anywhere from here on
            // (each injection gives these registers back, and the guardian's
            // journal names them): `exit`, its only way out.
            let leaving = try Arch.preparingSyscall(
                Arch.readRegisters(tid: helper), number: Arch.number(.exit)!, arguments: [0], gadget: gadget)
            try Arch.writeRegisters(leaving, tid: helper)
            session.attachState?.atHelperMoment("registers")
            var remote = injector.remote!
            remote.restoring = leaving
            let made = try remote.run(Arch.userfaultfdNumber, [WriteProtectFD.creationFlags], in: helper).value
            if made < 0 {
                throw HelperThreadFailure.userfaultfdRefused(pid: pid, Errno(Int32(truncatingIfNeeded: -made)))
            }
            return try WriteProtectFD(pid: pid, remoteFD: Int32(truncatingIfNeeded: made), thread: helper)
        } catch TraceError.traceeGone(let tid) where tid == helper {
            throw HelperThreadFailure.gone(tid: helper)
        }
    }

    /// The helper's registers at the gadget about to run `exit(0)`.
    private func leavingRegisters(_ helper: Int32, gadget: RemoteAddress) -> Arch.Registers? {
        guard let regs = try? Arch.readRegisters(tid: helper) else { return nil }
        return Arch.preparingSyscall(regs, number: Arch.number(.exit)!, arguments: [0], gadget: gadget)
    }

    /// Its first stop (the seized thread's `PTRACE_EVENT_STOP`, before any
    /// instruction of its own); false when it ended first (reaped).
    private func waitForHelperFirstStop(_ helper: Int32) throws -> Bool {
        while true {
            guard let event = try Wait.nextSpinning(helper) else { continue }
            switch event {
            case .exited, .killed: return false
            case .event(_, .exit): try? Ptrace.cont(helper)
            default: return true
            }
        }
    }

    /// Lets the stopped helper run `exit(0)` and reaps it: gone from
    /// `/proc/PID/task` when this returns. Its copy of the descriptor table
    /// (with the userfaultfd, whose context PageWatch's copy keeps) goes
    /// with it. A helper that is not stopped is on its way out (killed with
    /// the process, or let go at its exit event): only reaped.
    func endHelperThread(_ helper: Int32) {
        if let gadget = injector.remote?.gadget, let leaving = leavingRegisters(helper, gadget: gadget),
            (try? Arch.writeRegisters(leaving, tid: helper)) != nil
        {
            try? Ptrace.cont(helper)
        }
        while true {
            let event: StopEvent?
            do { event = try Wait.nextSpinning(helper) } catch { return }  // ECHILD: reaped already
            switch event {
            case nil:
                continue  // EINTR: a signal to PageWatch, seen by the event loop later
            case .exited?, .killed?:
                return
            default:
                // Its exit event, or a stop on the way (a group stop): on, no signal.
                try? Ptrace.cont(helper)
            }
        }
    }

    /// Why the program's seccomp filters forbid the helper, if they do:
    /// every filter is run on each call the helper makes (`clone` from the
    /// injecting thread, `userfaultfd` and `exit` from the helper, all at
    /// the gadget's `syscall`), and on `close` (the set-up in the program).
    /// A filter that cannot be read (no CAP_SYS_ADMIN) forbids too.
    /// Remembered for later images (`seccompForbidsUserfaultfd`).
    func seccompRefusal(of tid: Int32, gadget: RemoteAddress) -> String? {
        if let known = seccompForbidsUserfaultfd { return known }
        guard let mode = try? ProcFS.seccompMode(of: tid), mode != 0 else { return nil }
        let refusal: String?
        if mode != 2 {
            refusal = "pid \(pid) runs in seccomp strict mode"
        } else {
            do {
                refusal = Self.noticedCall(
                    in: try Ptrace.seccompFilters(tid), gadget: gadget, pid: pid, helper: true)
            } catch {
                refusal = "pid \(pid) has a seccomp filter PageWatch cannot read (\(error))"
            }
        }
        seccompForbidsUserfaultfd = refusal
        return refusal
    }

    /// The first of the set-up's calls that one of `filters` answers in a
    /// way the program would notice, said as a reason; nil if none. An
    /// answer that fails the call (ERRNO; TRACE, which without
    /// `PTRACE_O_TRACESECCOMP` is ENOSYS, and under `run` is PageWatch's
    /// own stop) is seen by PageWatch alone; KILL, TRAP (a SIGSYS to the
    /// program) and USER_NOTIF (a supervisor would see the call) are not.
    /// `helper`: the helper thread's calls too.
    static func noticedCall(
        in filters: [[SeccompFilter.Instruction]], gadget: RemoteAddress, pid: Int32, helper: Bool
    ) -> String? {
        let ip = gadget.value &+ Arch.scratchGadgetSyscallEnd
        var calls: [(name: String, number: Int64, arguments: [UInt64])] = [
            ("userfaultfd", Arch.userfaultfdNumber, [WriteProtectFD.creationFlags, 0, 0, 0, 0, 0]),
            ("close", Arch.number(.close)!, [3, 0, 0, 0, 0, 0]),
        ]
        if helper {
            calls.append(("clone", Arch.number(.clone)!, [helperCloneFlags, 0, 0, 0, 0, 0]))
            calls.append(("exit", Arch.number(.exit)!, [0, 0, 0, 0, 0, 0]))
        }
        // KILL_PROCESS, KILL_THREAD, TRAP, USER_NOTIF.
        let noticed: Set<UInt32> = [0x8000_0000, 0, 0x0003_0000, 0x7fc0_0000]
        for call in calls {
            let data = SeccompData(
                nr: Int32(call.number), arch: Arch.auditArch, instructionPointer: ip, arguments: call.arguments)
            for filter in filters {
                let action = SeccompFilter.run(filter, on: data)
                if noticed.contains(action & 0xffff_0000) {
                    return
                        "the seccomp filter of pid \(pid) answers \(call.name) with \(SeccompFilter.actionName(action))"
                }
            }
        }
        return nil
    }
}
