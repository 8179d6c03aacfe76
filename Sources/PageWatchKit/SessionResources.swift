import Glibc
import Synchronization

/// The program's standard output, in an unlinked temporary file rather than
/// a pipe: the tracer thread cannot drain a pipe while it traces, and a full
/// pipe would block the program for good.
struct OutputCapture {
    let descriptor: Int32

    init() throws {
        var template = Array(
            ((getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp") + "/pagewatch-output-XXXXXX").utf8CString)
        let fd = mkstemp(&template)
        guard fd >= 0 else { throw WatchError.outputCapture(call: "mkstemp", errno: errno) }
        unlink(template)
        // CLOEXEC: the program gets it only as its fd 1 (dup2 clears the flag there).
        guard fcntl(fd, F_SETFD, FD_CLOEXEC) == 0 else {
            let e = errno
            _ = Glibc.close(fd)
            throw WatchError.outputCapture(call: "fcntl(F_SETFD)", errno: e)
        }
        descriptor = fd
    }

    /// Everything written so far, as UTF-8.
    func contents() throws -> String {
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        var offset: off_t = 0
        while true {
            let n = buffer.withUnsafeMutableBytes { pread(descriptor, $0.baseAddress, $0.count, offset) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw WatchError.outputCapture(call: "pread", errno: errno) }
            if n == 0 { break }
            bytes += buffer[0..<n]
            offset += off_t(n)
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    func close() { _ = Glibc.close(descriptor) }
}

/// `Tracker.run` ignores SIGINT and SIGQUIT in this process for good (the
/// program shares the terminal: a Ctrl-C is its own), which suits the CLI,
/// which exits then, but not a test runner. Sessions may overlap on several
/// threads: the first to start saves the dispositions, the last to end puts
/// them back.
enum TerminalSignals {
    private struct State: ~Copyable {
        var sessions = 0
        var saved: [(Int32, sigaction)] = []
    }

    private static let state = Mutex(State())

    static func preserved<T>(_ body: () throws -> T) throws -> T {
        state.withLock { s in
            if s.sessions == 0 {
                s.saved = [SIGINT, SIGQUIT].map { sig in
                    var old = sigaction()
                    sigaction(sig, nil, &old)
                    return (sig, old)
                }
            }
            s.sessions += 1
        }
        defer {
            state.withLock { s in
                s.sessions -= 1
                guard s.sessions == 0 else { return }
                for (sig, var old) in s.saved { sigaction(sig, &old, nil) }
            }
        }
        return try body()
    }
}
