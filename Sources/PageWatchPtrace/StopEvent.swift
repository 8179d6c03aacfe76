import PageWatchLog

/// `PTRACE_EVENT_*` stops.
public enum PtraceEvent: Int32, Sendable {
    case fork = 1, vfork = 2, clone = 3, exec = 4, vforkDone = 5, exit = 6, seccomp = 7
}

/// A decoded `waitpid` status. Nothing else in PageWatch looks at raw statuses.
/// Each case says how the thread must be resumed.
public enum StopEvent: Equatable, Sendable {
    /// The thread (or process) exited with `status`. Already reaped: never resumed.
    case exited(tid: Int32, status: Int32)
    /// Killed by `signal`. Already reaped: never resumed.
    case killed(tid: Int32, signal: Int32, coreDumped: Bool)
    /// Signal-delivery-stop: resume with the signal to deliver it, or 0 to suppress it.
    case signalDelivery(tid: Int32, signal: Int32)
    /// Group-stop of a seized thread (SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU):
    /// resume with `PTRACE_LISTEN` so it stays stopped until SIGCONT.
    case groupStop(tid: Int32, signal: Int32)
    /// `PTRACE_EVENT_STOP` that is not a group-stop: a `PTRACE_INTERRUPT`, or a
    /// new thread's first stop. Resume with `PTRACE_CONT`, signal 0.
    case interruptStop(tid: Int32)
    /// Syscall-enter or -exit stop (`PTRACE_O_TRACESYSGOOD`). Resume with signal 0.
    case syscallStop(tid: Int32)
    /// An event stop: resume with signal 0. For `.exit` the thread is about to
    /// die and can no longer run injected code.
    case event(tid: Int32, PtraceEvent)
    /// A status PageWatch does not know; resumed with `PTRACE_CONT`, signal 0.
    case unknown(tid: Int32, status: Int32)

    public var tid: Int32 {
        switch self {
        case let .exited(t, _), let .killed(t, _, _), let .signalDelivery(t, _), let .groupStop(t, _),
            let .interruptStop(t), let .syscallStop(t), let .event(t, _), let .unknown(t, _):
            return t
        }
    }

    static let eventStop: Int32 = 128  // PTRACE_EVENT_STOP

    public static func decode(tid: Int32, status: Int32) -> StopEvent {
        let low = status & 0x7f
        if low == 0 { return .exited(tid: tid, status: (status >> 8) & 0xff) }
        if low != 0x7f { return .killed(tid: tid, signal: low, coreDumped: status & 0x80 != 0) }
        let signal = (status >> 8) & 0xff
        let event = (status >> 16) & 0xffff
        if event == eventStop {
            switch signal {
            case Signal.SIGSTOP, Signal.SIGTSTP, Signal.SIGTTIN, Signal.SIGTTOU:
                return .groupStop(tid: tid, signal: signal)
            default:
                return .interruptStop(tid: tid)
            }
        }
        if event != 0 {
            if let e = PtraceEvent(rawValue: event) { return .event(tid: tid, e) }
            return .unknown(tid: tid, status: status)
        }
        if signal == Signal.SIGTRAP | 0x80 { return .syscallStop(tid: tid) }
        return .signalDelivery(tid: tid, signal: signal)
    }
}

/// Signal numbers and names (Linux, the same on x86_64 and aarch64).
public enum Signal {
    public static let SIGHUP: Int32 = 1, SIGINT: Int32 = 2, SIGQUIT: Int32 = 3, SIGILL: Int32 = 4,
        SIGTRAP: Int32 = 5, SIGABRT: Int32 = 6, SIGBUS: Int32 = 7, SIGFPE: Int32 = 8, SIGKILL: Int32 = 9,
        SIGUSR1: Int32 = 10, SIGSEGV: Int32 = 11, SIGUSR2: Int32 = 12, SIGPIPE: Int32 = 13,
        SIGALRM: Int32 = 14, SIGTERM: Int32 = 15, SIGCHLD: Int32 = 17, SIGCONT: Int32 = 18,
        SIGSTOP: Int32 = 19, SIGTSTP: Int32 = 20, SIGTTIN: Int32 = 21, SIGTTOU: Int32 = 22,
        SIGURG: Int32 = 23, SIGXCPU: Int32 = 24, SIGXFSZ: Int32 = 25, SIGVTALRM: Int32 = 26,
        SIGPROF: Int32 = 27, SIGWINCH: Int32 = 28, SIGIO: Int32 = 29, SIGPWR: Int32 = 30, SIGSYS: Int32 = 31

    // The names are PageWatchLog's (`SignalNames`): the reports name signals too.

    /// `USR2`, `SIGUSR2`, `sigusr2`, `12`, `RTMIN+3` → the number; nil if unknown.
    public static func parse(_ text: String) -> Int32? { SignalNames.number(text) }

    public static func name(_ n: Int32) -> String { SignalNames.name(n) }
}
