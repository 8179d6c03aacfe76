import Glibc

/// `pagewatch run` passes SIGTERM and SIGHUP on to the program: a service
/// manager, `timeout` or a closed terminal means the program, and PageWatch
/// traces on until it ends, so the log ends with its `end` record.
/// (SIGINT and SIGQUIT come from the terminal to the whole process group:
/// the program has its own and PageWatch ignores them.)
enum SignalForwarding {
    /// The program's pid for the handler; 0 before it is known.
    nonisolated(unsafe) static var target: Int32 = 0

    static let forwarded: [Int32] = [SIGTERM, SIGHUP]

    /// From now on SIGTERM and SIGHUP go to `pid`. Called once the program
    /// runs (its `start` record), so it was started with the dispositions
    /// PageWatch had. Also ignores the signals of log write errors: they
    /// must not end PageWatch and, through PTRACE_O_EXITKILL, the program.
    static func forward(to pid: Int32) {
        target = pid
        for sig in forwarded {
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { sig in
                // Only async-signal-safe calls here: kill(2) is one.
                if SignalForwarding.target > 0 { _ = kill(SignalForwarding.target, sig) }
            }
            action.sa_flags = SA_RESTART
            sigemptyset(&action.sa_mask)
            sigaction(sig, &action, nil)
        }
        ignoreLogWriteSignals()
    }

    /// SIGPIPE (a log on a pipe whose reader is gone) and SIGXFSZ (a log
    /// beyond RLIMIT_FSIZE) made errors of the write (EPIPE, EFBIG), which
    /// PageWatch reports and survives.
    static func ignoreLogWriteSignals() {
        signal(SIGPIPE, SIG_IGN)
        signal(SIGXFSZ, SIG_IGN)
    }
}
