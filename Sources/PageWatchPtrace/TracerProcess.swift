internal import CPtrace
import Glibc

/// `pagewatch attach` traces from a child process, so that the process the
/// user started (and may SIGKILL) is not the tracer. The child
/// gets SIGHUP when its parent dies (`PR_SET_PDEATHSIG`), which it takes
/// like Ctrl-C: a clean detach, with every page given back, while it is
/// still alive to do it. The parent forwards SIGINT, SIGTERM and SIGHUP to
/// it and exits with its status. (The guardian still covers the tracer
/// child itself being killed.)
public enum TracerProcess {
    /// The signals forwarded to the child, blocked across the fork so that
    /// none is lost before the child's own handlers are in place.
    static let forwarded: [Int32] = [SIGINT, SIGTERM, SIGHUP]

    /// How the child ended.
    public enum End: Sendable, Equatable {
        case exited(Int32)
        case killed(signal: Int32)
    }

    /// Runs `trace` in a child process, whose exit status it returns.
    public static func run(_ trace: () -> Int32) throws -> End {
        for s in forwarded { setSignalBlocked(s, true) }
        let child = pw_fork_tracer()
        if child < 0 { throw TraceError.call("fork", Errno(-child), tid: getpid()) }
        if child == 0 { exit(trace()) }
        for s in forwarded { try installFlagHandler(s) }
        for s in forwarded { setSignalBlocked(s, false) }
        var status: Int32 = 0
        while true {
            let r = waitpid(child, &status, 0)
            if r == child { break }
            if r < 0 && errno != EINTR { throw TraceError.call("waitpid", Errno(errno), tid: child) }
            while let s = takeRaisedSignal() { kill(child, s) }
        }
        if status & 0x7f == 0 { return .exited((status >> 8) & 0xff) }
        return .killed(signal: status & 0x7f)
    }
}
