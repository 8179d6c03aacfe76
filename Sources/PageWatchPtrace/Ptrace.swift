internal import CPtrace
import PageWatchAddressSpace
import Glibc

/// The ptrace options every traced thread carries.
public struct TraceOptions: OptionSet, Sendable {
    public let rawValue: UInt
    public init(rawValue: UInt) { self.rawValue = rawValue }
    public static let traceSysGood = TraceOptions(rawValue: UInt(PW_O_TRACESYSGOOD))
    public static let traceFork = TraceOptions(rawValue: UInt(PW_O_TRACEFORK))
    public static let traceVfork = TraceOptions(rawValue: UInt(PW_O_TRACEVFORK))
    public static let traceClone = TraceOptions(rawValue: UInt(PW_O_TRACECLONE))
    public static let traceExec = TraceOptions(rawValue: UInt(PW_O_TRACEEXEC))
    public static let traceExit = TraceOptions(rawValue: UInt(PW_O_TRACEEXIT))
    public static let traceSeccomp = TraceOptions(rawValue: UInt(PW_O_TRACESECCOMP))
    /// The tracee is killed when the tracer exits (launch mode:
    /// a program left armed would die at its next write).
    public static let exitKill = TraceOptions(rawValue: UInt(PW_O_EXITKILL))
}

/// A raw siginfo held by the tracer, to deliver a signal later unchanged.
public struct HeldSignal: @unchecked Sendable {
    public let signal: Int32
    /// si_code and, for faults, si_addr: a held SIGSEGV may be a write fault
    /// that happened before PageWatch stopped the thread.
    public let code: Int32
    public let faultAddress: RemoteAddress
    var info: siginfo_t

    /// Raised by the instruction at the thread's program counter
    /// (`SignalInfo.isRaisedByItsInstruction`): it must not also be sent again.
    public var isRaisedByItsInstruction: Bool { SignalInfo.isRaisedByItsInstruction(signal: signal, code: code) }
}

/// The fields of a siginfo PageWatch decides on.
public struct SignalInfo: Sendable, Equatable {
    public var signal: Int32
    public var code: Int32
    public var faultAddress: RemoteAddress
    public var senderPid: Int32

    public static let SEGV_MAPERR: Int32 = 1
    public static let SEGV_ACCERR: Int32 = 2
    public static let SI_KERNEL: Int32 = 0x80

    /// A fault the kernel raised for the instruction at the thread's
    /// program counter (SIGSEGV, SIGBUS, SIGILL, SIGFPE with a positive
    /// `si_code` other than `SI_KERNEL`): that instruction has not run, so
    /// it runs again on the next resume and raises it again if the cause is
    /// still there.
    public var isRaisedByItsInstruction: Bool { Self.isRaisedByItsInstruction(signal: signal, code: code) }

    public static func isRaisedByItsInstruction(signal: Int32, code: Int32) -> Bool {
        [Signal.SIGSEGV, Signal.SIGBUS, Signal.SIGILL, Signal.SIGFPE].contains(signal) && code > 0 && code != SI_KERNEL
    }
}

/// A thread's registered rseq area.
public struct RseqArea: Sendable, Equatable {
    public var address: RemoteAddress
    public var size: UInt32
    public var range: AddressRange { AddressRange(start: address, end: address + UInt64(size)) }
}

/// Thin, typed wrappers over the ptrace requests PageWatch makes. Every call
/// happens on the one tracer thread; ESRCH surfaces as `TraceError.call` with
/// `.ESRCH`, which callers treat as the thread having gone.
public enum Ptrace {
    public static func seize(_ tid: Int32, options: TraceOptions) throws {
        try check(pw_ptrace_seize(tid, options.rawValue), "PTRACE_SEIZE", tid: tid)
    }

    public static func setOptions(_ tid: Int32, _ options: TraceOptions) throws {
        try check(pw_ptrace_setoptions(tid, options.rawValue), "PTRACE_SETOPTIONS", tid: tid)
    }

    /// Resume a stopped thread, delivering `signal` (0 = none).
    public static func cont(_ tid: Int32, signal: Int32 = 0) throws {
        try check(pw_ptrace_resume(Int32(PW_PTRACE_CONT), tid, signal), "PTRACE_CONT", tid: tid)
    }

    /// Resume a stopped thread for one instruction (a stepped `syscall`
    /// runs the whole call and stops after it).
    public static func singleStep(_ tid: Int32) throws {
        try check(pw_ptrace_resume(Int32(PW_PTRACE_SINGLESTEP), tid, 0), "PTRACE_SINGLESTEP", tid: tid)
    }

    /// Leave a group-stopped thread stopped but let it report SIGCONT (seize only).
    public static func listen(_ tid: Int32) throws {
        try check(pw_ptrace_resume(Int32(PW_PTRACE_LISTEN), tid, 0), "PTRACE_LISTEN", tid: tid)
    }

    public static func interrupt(_ tid: Int32) throws {
        try check(pw_ptrace_resume(Int32(PW_PTRACE_INTERRUPT), tid, 0), "PTRACE_INTERRUPT", tid: tid)
    }

    public static func detach(_ tid: Int32, signal: Int32 = 0) throws {
        try check(pw_ptrace_resume(Int32(PW_PTRACE_DETACH), tid, signal), "PTRACE_DETACH", tid: tid)
    }

    /// Detach a thread stopped at a signal-delivery stop, delivering `held` with its siginfo.
    public static func detach(_ tid: Int32, delivering held: HeldSignal) throws {
        var info = held.info
        try check(pw_ptrace_setsiginfo_raw(tid, &info), "PTRACE_SETSIGINFO", tid: tid)
        try detach(tid, signal: held.signal)
    }

    public static func eventMessage(_ tid: Int32) throws -> UInt {
        var m: UInt = 0
        try check(pw_ptrace_geteventmsg(tid, &m), "PTRACE_GETEVENTMSG", tid: tid)
        return m
    }

    public static func signalInfo(_ tid: Int32) throws -> SignalInfo {
        var i = pw_siginfo()
        try check(pw_ptrace_getsiginfo(tid, &i), "PTRACE_GETSIGINFO", tid: tid)
        return SignalInfo(
            signal: i.signo, code: i.code, faultAddress: RemoteAddress(i.fault_address),
            senderPid: i.sender_pid)
    }

    /// The siginfo of the signal the thread is stopped for, to be re-delivered later.
    public static func holdSignal(_ tid: Int32) throws -> HeldSignal {
        var info = siginfo_t()
        try check(pw_ptrace_getsiginfo_raw(tid, &info), "PTRACE_GETSIGINFO", tid: tid)
        let fields = try signalInfo(tid)
        return HeldSignal(signal: info.si_signo, code: fields.code, faultAddress: fields.faultAddress, info: info)
    }

    /// A thread that faulted just before a PTRACE_INTERRUPT reaches the
    /// interrupt stop with the SIGSEGV still pending: the kernel handles the
    /// interrupt first. Released like that (detached), it would take the
    /// signal and die even though its page is writable again. When the
    /// thread's own pending set holds a SIGSEGV, this runs the thread on to
    /// its signal-delivery-stops and returns what it took (the SIGSEGV last;
    /// the kernel takes synchronous signals first). The thread is left in
    /// that stop; resuming or detaching it with no signal discards it.
    public static func takePendingFault(_ tid: Int32) throws -> [HeldSignal] {
        // (A fault unblocks SIGSEGV; one the program sent itself while
        // blocking it stays pending and is none of ours.)
        let bit = UInt64(1) << UInt64(Signal.SIGSEGV - 1)
        guard try ProcFS.unblockedPendingSignals(of: tid, shared: false) & bit != 0 else { return [] }
        var taken: [HeldSignal] = []
        try cont(tid)
        while true {
            switch try Wait.nextUnlessDead(tid) {
            case .signalDelivery(_, let sig):
                taken.append(try holdSignal(tid))
                if sig == Signal.SIGSEGV || taken.count > 8 { return taken }
                try cont(tid)
            case .exited, .killed, .event(_, .exit):
                throw TraceError.traceeGone(tid: tid)
            case .groupStop:
                return taken  // stopped for good: the fault stays pending
            default:
                try cont(tid)
            }
        }
    }

    /// The thread's blocked-signal mask (bit N-1 for signal N).
    public static func signalMask(_ tid: Int32) throws -> UInt64 {
        var mask: UInt64 = 0
        try check(pw_ptrace_getsigmask(tid, &mask), "PTRACE_GETSIGMASK", tid: tid)
        return mask
    }

    public static func setSignalMask(_ tid: Int32, _ mask: UInt64) throws {
        try check(pw_ptrace_setsigmask(tid, mask), "PTRACE_SETSIGMASK", tid: tid)
    }

    /// Every seccomp filter of stopped tracee `tid`, newest first
    /// (`PTRACE_SECCOMP_GET_FILTER`: CAP_SYS_ADMIN; EINVAL for a thread
    /// not in filter mode).
    public static func seccompFilters(_ tid: Int32) throws -> [[SeccompFilter.Instruction]] {
        var filters: [[SeccompFilter.Instruction]] = []
        for index in 0... {
            let count = pw_seccomp_filter(tid, UInt(index), nil)
            if count == -Int(ENOENT) { return filters }
            try check(Int32(clamping: min(count, 0)), "PTRACE_SECCOMP_GET_FILTER", tid: tid)
            var raw = [UInt8](repeating: 0, count: count * 8)
            let got = raw.withUnsafeMutableBytes { pw_seccomp_filter(tid, UInt(index), $0.baseAddress) }
            try check(Int32(clamping: min(got, 0)), "PTRACE_SECCOMP_GET_FILTER", tid: tid)
            filters.append(SeccompFilter.decode(raw))
        }
        return filters
    }

    /// Resume a thread stopped in a signal-delivery-stop, delivering `held`
    /// with its original siginfo.
    public static func deliver(_ held: HeldSignal, to tid: Int32, mode: ResumeMode = .continuing) throws {
        var info = held.info
        try check(pw_ptrace_setsiginfo_raw(tid, &info), "PTRACE_SETSIGINFO", tid: tid)
        try resume(tid, signal: held.signal, mode: mode)
    }

    public static func rseqArea(_ tid: Int32) throws -> RseqArea? {
        var c = pw_rseq_configuration()
        try check(pw_ptrace_get_rseq_configuration(tid, &c), "PTRACE_GET_RSEQ_CONFIGURATION", tid: tid)
        guard c.rseq_abi_pointer != 0, c.rseq_abi_size != 0 else { return nil }
        return RseqArea(address: RemoteAddress(c.rseq_abi_pointer), size: c.rseq_abi_size)
    }

    /// The thread's robust-futex list head (`get_robust_list`); nil when none.
    public static func robustListHead(_ tid: Int32) throws -> RemoteAddress? {
        var head: UInt64 = 0
        try check(pw_get_robust_list(tid, &head), "get_robust_list", tid: tid)
        return head == 0 ? nil : RemoteAddress(head)
    }

    /// Every read of program memory PageWatch makes comes here. Where the
    /// program's own userfaultfd would be asked for a page, a read that
    /// would wait for its handler fails instead (`UserfaultRanges`).
    public static func readMemory(_ pid: Int32, _ address: RemoteAddress, count: Int) throws -> [UInt8] {
        if UserfaultRanges.shared.overlaps(address, count: count) {
            return try readMemoryAskingNoHandler(pid, address, count: count)
        }
        var buffer = [UInt8](repeating: 0, count: count)
        let n = buffer.withUnsafeMutableBytes { pw_read_memory(pid, address.value, $0.baseAddress, count) }
        if n < 0 { throw TraceError.call("process_vm_readv", Errno(Int32(-n)), tid: pid, address: address) }
        buffer.removeLast(count - n)
        return buffer
    }

    /// Reads `destination.count` bytes into `destination` (bulk copies
    /// such as a `--dump` into its mapped pages file); the bytes read.
    public static func readMemory(
        _ pid: Int32, _ address: RemoteAddress, into destination: UnsafeMutableRawBufferPointer
    )
        throws -> Int
    {
        if UserfaultRanges.shared.overlaps(address, count: destination.count) {
            let bytes = try readMemoryAskingNoHandler(pid, address, count: destination.count)
            bytes.withUnsafeBytes { destination.copyMemory(from: $0) }
            return bytes.count
        }
        let n = pw_read_memory(pid, address.value, destination.baseAddress, destination.count)
        if n < 0 { throw TraceError.call("process_vm_readv", Errno(Int32(-n)), tid: pid, address: address) }
        return n
    }

    public static func tgkill(_ tgid: Int32, _ tid: Int32, _ signal: Int32) throws {
        try check(pw_tgkill(tgid, tid, signal), "tgkill", tid: tid)
    }

    public static func kill(_ pid: Int32, _ signal: Int32) throws {
        try check(pw_kill(pid, signal), "kill", tid: pid)
    }
}

/// `waitpid` with `__WALL`, decoded: only the calling thread's children and
/// tracees (`__WNOTHREAD`), so another thread's children are left to it.
public enum Wait {
    /// Blocks for the next event of `pid` (-1: any tracee). Returns nil when
    /// interrupted by a signal (EINTR), so the caller can look at its timers.
    public static func next(_ pid: Int32 = -1) throws -> StopEvent? {
        var status: Int32 = 0
        let r = pw_wait(pid, &status, 0)
        if r == -Int32(EINTR) { return nil }
        try check(r, "waitpid", tid: pid)
        return StopEvent.decode(tid: r, status: status)
    }

    /// How long `nextSpinning` polls before it blocks. A tracer that blocks at
    /// once lets its CPU go idle, and waking an idle vCPU costs tens of
    /// microseconds per stop on virtual machines; a tracee that stops again
    /// soon (the next write fault, the injected call's trap) is caught by
    /// the poll instead. Set to 0 to always block.
    nonisolated(unsafe) public static var spinNs: UInt64 = 50_000

    /// Like `next`, but polls for up to `spinNs` first. Returns nil without
    /// blocking once `wake` is true: a signal whose handler ran before the
    /// blocking wait began (it was pending while blocked, and ran as it was
    /// unblocked) interrupts nothing, and the wait would outlast it.
    public static func nextSpinning(_ pid: Int32 = -1, wake: () -> Bool = { false }) throws -> StopEvent? {
        if spinNs > 0 {
            let deadline = monotonicNow() &+ spinNs
            repeat {
                if let e = try poll(pid) { return e }
                if wake() { return nil }
            } while monotonicNow() < deadline
        }
        if wake() { return nil }
        return try next(pid)
    }

    static func monotonicNow() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }

    /// The next event of `pid`, if one is waiting.
    public static func poll(_ pid: Int32 = -1) throws -> StopEvent? {
        var status: Int32 = 0
        let r = pw_wait(pid, &status, Int32(PW_WNOHANG))
        if r == 0 || r == -Int32(EINTR) { return nil }
        try check(r, "waitpid", tid: pid)
        return StopEvent.decode(tid: r, status: status)
    }

    /// The next event of one thread, `tid`, like `nextSpinning(tid)`; throws
    /// `traceeGone` once the thread is dead with no event to come. A
    /// thread-group leader killed without an exit stop (the process killed,
    /// or in `exit_group`, while PageWatch runs code in it) is reported
    /// only once every other thread is reaped, and those may be waiting at
    /// their exit stops for this tracer: a plain wait would never return.
    /// So the blocking wait is cut every `deathCheckNs` by a kernel timer's
    /// signal, to look at the thread's state; nothing polls meanwhile.
    public static func nextUnlessDead(_ tid: Int32) throws -> StopEvent {
        let spinUntil = monotonicNow() &+ spinNs
        repeat {
            if let e = try poll(tid) { return e }
        } while monotonicNow() < spinUntil
        // Without a timer (none left to the process): poll, sleeping a little longer each time.
        let timer =
            DeathCheck.ready
            ? try? KernelTimer(signal: DeathCheck.signal, firstNs: deathCheckNs, periodNs: deathCheckNs) : nil
        defer { timer?.cancel() }
        var pause = timespec(tv_sec: 0, tv_nsec: 20_000)
        while true {
            if timer != nil {
                setSignalBlocked(DeathCheck.signal, false)
                let e = Result { try next(tid) }
                setSignalBlocked(DeathCheck.signal, true)
                if let e = try e.get() { return e }
            } else {
                if let e = try poll(tid) { return e }
                nanosleep(&pause, nil)
                pause.tv_nsec = min(pause.tv_nsec * 2, 1_000_000)
            }
            let state = ProcFS.statusField("State", of: tid)?.first
            if state == nil || state == "Z" || state == "X" { throw TraceError.traceeGone(tid: tid) }
        }
    }

    /// How often `nextUnlessDead` looks at a thread it waits for.
    static let deathCheckNs: UInt64 = 10_000_000

    /// The signal that cuts `nextUnlessDead`'s wait: one PageWatch uses for
    /// nothing else, kept blocked but around that wait, its handler the
    /// wake-up one (no SA_RESTART: the wait returns EINTR).
    enum DeathCheck {
        static let signal = Signal.SIGVTALRM
        static let ready: Bool = {
            setSignalBlocked(signal, true)
            return (try? installWakeupHandler(signal)) != nil
        }()
    }

    /// Waits for a non-traced child to stop or exit (`WUNTRACED`).
    static func untraced(_ pid: Int32) throws -> Int32 {
        var status: Int32 = 0
        while true {
            let r = pw_wait(pid, &status, Int32(PW_WUNTRACED))
            if r == -Int32(EINTR) { continue }
            try check(r, "waitpid", tid: pid)
            return status
        }
    }
}

/// The calling thread's kernel tid.
public func currentThreadID() -> Int32 { pw_gettid() }

/// Install a handler for `signal` that only interrupts blocking calls (no SA_RESTART).
public func installWakeupHandler(_ signal: Int32) throws {
    try check(pw_install_wakeup_handler(signal), "sigaction", tid: getpid())
}

/// Forgets that a wake-up or flag handler ran (`wokenSinceCleared`). Called
/// while those signals are blocked, right before they are unblocked for a
/// wait: one that came meanwhile runs as they are unblocked, and counts.
public func clearWoken() { pw_clear_woken() }

/// Whether a wake-up or flag handler ran since `clearWoken`.
public func wokenSinceCleared() -> Bool { pw_woken_pending() != 0 }

/// Blocks or unblocks `signal` for the calling thread.
public func setSignalBlocked(_ signal: Int32, _ blocked: Bool) {
    _ = pw_block_signal(signal, blocked ? 1 : 0)
}

/// Blocks or unblocks the signals of `mask` (bit N-1 for signal N) for
/// the calling thread, in one call.
public func setSignalsBlocked(_ mask: UInt64, _ blocked: Bool) {
    _ = pw_block_signals(mask, blocked ? 1 : 0)
}

/// The mask of `signals`, bit N-1 for signal N.
public func signalMask(of signals: [Int32]) -> UInt64 {
    signals.reduce(UInt64(0)) { $0 | UInt64(1) << UInt64($1 - 1) }
}

/// Install a handler for `signal` that records it and interrupts blocking calls.
public func installFlagHandler(_ signal: Int32) throws {
    try check(pw_install_flag_handler(signal), "sigaction", tid: getpid())
}

/// The last signal a flag handler recorded since the previous call (nil: none).
public func takeRaisedSignal() -> Int32? {
    let s = pw_take_raised_signal()
    return s == 0 ? nil : s
}

/// How a stopped thread is resumed: `PTRACE_CONT`, or `PTRACE_SYSCALL` to
/// stop again at the next syscall entry or exit (attach mode, where no
/// seccomp filter can pick the calls).
public enum ResumeMode: Sendable {
    case continuing, syscallStops
}

/// The kind of syscall stop a thread is in (`PTRACE_GET_SYSCALL_INFO`).
public enum SyscallStopKind: Sendable {
    case entry, exit, seccomp, none
}

/// A syscall stop as `PTRACE_GET_SYSCALL_INFO` tells it: `number` and
/// `arguments` at an entry or seccomp stop, `result` at an exit.
public struct SyscallStopInfo: Sendable {
    public var kind: SyscallStopKind
    public var number: Int64
    public var arguments: [UInt64]
    public var instructionPointer: RemoteAddress
    public var result: Int64
}

extension Ptrace {
    /// Resume until the next syscall stop (here: the exit of the call the thread is in).
    public static func resumeToSyscallExit(_ tid: Int32, signal: Int32 = 0) throws {
        try check(pw_ptrace_resume(Int32(PW_PTRACE_SYSCALL), tid, signal), "PTRACE_SYSCALL", tid: tid)
    }

    public static func resume(_ tid: Int32, signal: Int32 = 0, mode: ResumeMode) throws {
        switch mode {
        case .continuing: try cont(tid, signal: signal)
        case .syscallStops: try resumeToSyscallExit(tid, signal: signal)
        }
    }

    /// The syscall stop `tid` is in, with the call's number and arguments
    /// at an entry or seccomp stop: what an entry needs, in one request.
    public static func syscallInfo(_ tid: Int32) throws -> SyscallStopInfo {
        var i = pw_syscall_info()
        try check(pw_ptrace_syscall_info(tid, &i), "PTRACE_GET_SYSCALL_INFO", tid: tid)
        let kind: SyscallStopKind =
            switch i.op {
            case 1: .entry
            case 2: .exit
            case 3: .seccomp
            default: .none
            }
        let a = i.args
        return SyscallStopInfo(
            kind: kind, number: i.nr, arguments: [a.0, a.1, a.2, a.3, a.4, a.5],
            instructionPointer: RemoteAddress(i.instruction_pointer), result: i.rval)
    }

    public static func syscallStopKind(_ tid: Int32) throws -> SyscallStopKind {
        let op = pw_ptrace_syscall_info_op(tid)
        try check(op < 0 ? op : 0, "PTRACE_GET_SYSCALL_INFO", tid: tid)
        switch op {
        case 1: return .entry
        case 2: return .exit
        case 3: return .seccomp
        default: return .none
        }
    }
}

/// A kernel timer (`timer_create` on CLOCK_MONOTONIC) that sends `signal` to
/// the thread that made it, first after `firstNs`, then every `periodNs` (0: once).
public final class KernelTimer {
    private var handle: UnsafeMutableRawPointer?

    public init(signal: Int32, firstNs: UInt64, periodNs: UInt64) throws {
        let r = pw_timer_start(signal, Int64(firstNs), Int64(periodNs), &handle)
        if r < 0 { throw TraceError.call("timer_create", Errno(-r), tid: getpid()) }
    }

    public func cancel() {
        if let handle { pw_timer_delete(handle) }
        handle = nil
    }

    deinit { cancel() }
}
