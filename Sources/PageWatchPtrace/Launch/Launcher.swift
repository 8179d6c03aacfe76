internal import CPtrace
import Glibc

/// Starts a program traced from its first instruction (`pagewatch run`).
public enum Launcher {
    /// Forks, lets the child stop itself, seizes it with `options`, and runs
    /// it to its `PTRACE_EVENT_EXEC` stop. Returns the pid, stopped there.
    /// Throws `TraceError.execFailed` when the program cannot be executed.
    /// The program inherits the caller's signal mask, as from a shell, unless
    /// `emptySignalMask` (for callers on threads that block signals).
    public static func launch(
        _ command: [String], options: TraceOptions,
        standardInput: Int32 = -1, standardOutput: Int32 = -1,
        emptySignalMask: Bool = false, seccompFilter: SeccompFilter? = nil
    ) throws -> Int32 {
        precondition(!command.isEmpty)
        var errorFD: Int32 = -1
        let instructions = (seccompFilter?.instructions ?? []).map {
            pw_bpf_instruction(code: $0.code, jt: $0.jt, jf: $0.jf, k: $0.k)
        }
        let pid: Int32 = withCStrings(command) { argv in
            instructions.withUnsafeBufferPointer { filter in
                pw_spawn_stopped(
                    argv[0], argv, standardInput, standardOutput, emptySignalMask ? 1 : 0,
                    seccompFilter == nil ? nil : filter.baseAddress, Int32(filter.count), &errorFD)
            }
        }
        if pid < 0 { throw TraceError.call("fork", Errno(-pid), tid: getpid()) }
        defer { close(errorFD) }

        // The child stops itself before exec; seize it there.
        let status = try Wait.untraced(pid)
        guard status & 0xff == 0x7f else {
            throw TraceError.traceeGone(tid: pid)
        }
        do {
            // The exec event is how the launch knows the program started.
            try Ptrace.seize(pid, options: options.union(.traceExec))
        } catch {
            _ = pw_kill(pid, Signal.SIGKILL)
            _ = try? Wait.untraced(pid)
            throw error
        }
        try Ptrace.kill(pid, Signal.SIGCONT)
        while true {
            guard let event = try Wait.next(pid) else { continue }
            switch event {
            case .event(_, .exec):
                return pid
            case .groupStop:
                try Ptrace.listen(pid)
            case .signalDelivery(_, let sig):
                // SIGCONT (ours) and anything else before exec: deliver as is.
                try Ptrace.cont(pid, signal: sig)
            case .exited(_, let code):
                var report: (Int32, Int32) = (0, 0)
                if withUnsafeMutableBytes(of: &report, { read(errorFD, $0.baseAddress, 8) }) == 8 {
                    if report.0 == 1 {
                        throw TraceError.call("seccomp(SECCOMP_SET_MODE_FILTER)", Errno(report.1), tid: pid)
                    }
                    throw TraceError.execFailed(path: command[0], Errno(report.1))
                }
                throw TraceError.execFailed(path: command[0], Errno(code == 127 ? 2 : code))
            case .killed:
                throw TraceError.traceeGone(tid: pid)
            default:
                try Ptrace.cont(pid)
            }
        }
    }
}

/// Calls `body` with a NULL-terminated C argv for `strings`.
func withCStrings<R>(_ strings: [String], _ body: ([UnsafeMutablePointer<CChar>?]) -> R) -> R {
    let pointers = strings.map { strdup($0) }
    defer { pointers.forEach { free($0) } }
    return body(pointers + [nil])
}
