import Glibc
import PageWatchLog
import PageWatchPtrace
import PageWatchReport

/// write(2) until done; EINTR retried. The errno of a failed write, or nil.
@discardableResult
func writeFully(_ fd: Int32, _ text: String) -> Errno? {
    writeFully(fd, Array(text.utf8))
}

/// The same for bytes (a binary report, or text as UTF-8).
@discardableResult
func writeFully(_ fd: Int32, _ bytes: [UInt8]) -> Errno? {
    bytes.withUnsafeBufferPointer { buffer -> Errno? in
        var offset = 0
        while offset < buffer.count {
            let n = Glibc.write(fd, buffer.baseAddress! + offset, buffer.count - offset)
            if n < 0 { if errno == EINTR { continue }; return Errno(errno) }
            offset += n
        }
        return nil
    }
}

/// Writes `bytes` to `path` (created or truncated), or to stdout when
/// `path` is nil or `-`; any failure is one line naming `what` and exit 1,
/// never a silently short file. SIGPIPE and SIGXFSZ become errors.
func writeOutput(_ bytes: [UInt8], to path: String?, what: String) {
    SignalForwarding.ignoreLogWriteSignals()
    guard let path, path != "-" else {
        if let error = writeFully(STDOUT_FILENO, bytes) { fail("cannot write \(what) to stdout: \(error)", status: 1) }
        return
    }
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else { fail("cannot open --output '\(path)': \(String(cString: strerror(errno)))", status: 1) }
    if let error = writeFully(fd, bytes) { fail("cannot write \(what) to '\(path)': \(error)", status: 1) }
    if close(fd) != 0 { fail("cannot write \(what) to '\(path)': \(Errno(errno))", status: 1) }
}

/// write(2) until done; EINTR retried; errors ignored (stderr). Text for
/// stderr takes the live status line off first.
func writeAll(_ fd: Int32, _ text: String) {
    if fd == STDERR_FILENO { StatusLine.shared.clear() }
    writeFully(fd, text)
}

/// A warning of the engine's: one line on stderr.
func warning(_ message: String) {
    writeAll(STDERR_FILENO, "pagewatch: warning: \(message)\n")
}

/// Prints `pagewatch: MESSAGE` (and a hint line) and exits.
func fail(_ message: String, hint: String? = nil, status: Int32) -> Never {
    writeAll(STDERR_FILENO, "pagewatch: \(message)\n" + (hint.map { "hint: \($0)\n" } ?? ""))
    exit(status)
}

/// `--verify-contents` found pages changed with no write seen: one closing
/// line (each sweep's pages were named already) and exit status 3.
func missedWrites(_ pages: Int) -> Int32 {
    writeAll(
        STDERR_FILENO,
        "pagewatch: --verify-contents: \(pages) page(s) changed with no write seen; the log's `missed` records name them\n"
    )
    return 3
}

/// The live view: while tracing, one line on stderr updated in place, when
/// stderr is a terminal (never in the log, never in a file or pipe).
/// Whatever else PageWatch writes to stderr clears it first; the next
/// record draws it again. At most four draws a second.
final class StatusLine {
    nonisolated(unsafe) static let shared = StatusLine()

    /// Off unless turned on (`run`, `attach` without `--quiet`) and stderr is a terminal.
    private(set) var enabled = false
    private var drawn = false
    private var lastDrawNs: UInt64 = 0
    private var startNs: UInt64 = 0
    private var programPid: Int32 = 0
    private var sweeps = 0
    private var lastPages: UInt64 = 0
    private var ratePages: UInt64 = 0
    private var firstSweepNs: UInt64?
    private var lastSweepNs: UInt64 = 0
    private var faults = 0
    private var processes: Set<Int32> = []
    private var destination = ""

    func start(destination: String) {
        enabled = isatty(STDERR_FILENO) == 1
        self.destination = destination
        startNs = Self.now()
    }

    func note(_ record: LogRecord) {
        guard enabled else { return }
        switch record {
        case let .start(pid, _, _, _, _, _, _, _, _), let .attach(pid, _, _):
            programPid = pid
            processes = [pid]
        case .sweep(let s):
            sweeps += 1
            faults += s.faults
            let now = Self.now()
            if s.pid == programPid {
                lastPages = s.dirtyPages
                if firstSweepNs == nil { firstSweepNs = now } else { ratePages += s.dirtyPages }
                lastSweepNs = now
            }
        case let .fork(pid, _, _): processes.insert(pid)
        case let .exit(pid, _, _, _, _): processes.remove(pid)
        default: break
        }
        let now = Self.now()
        guard now - lastDrawNs >= 250_000_000 else { return }
        lastDrawNs = now
        draw(now)
    }

    private func draw(_ now: UInt64) {
        let seconds = Double(now - startNs) / 1e9
        var parts = ["pagewatch: \(Format.fixed(seconds, 1)) s", "\(sweeps) sweeps", "last \(lastPages) pages"]
        if let first = firstSweepNs, lastSweepNs > first {
            let rate = Double(ratePages) / (Double(lastSweepNs - first) / 1e9)
            parts.append("\(Format.fixed(rate * 4096 / 1_048_576, 1)) MiB/s (\(Int(rate)) pages/s)")
        }
        if seconds > 0 { parts.append("\(Int(Double(faults) / seconds)) faults/s") }
        if processes.count > 1 { parts.append("\(processes.count) processes") }
        parts.append("log: \(destination)")
        var line = parts.joined(separator: ", ")
        var size = winsize()
        let width = ioctl(STDERR_FILENO, UInt(TIOCGWINSZ), &size) == 0 && size.ws_col > 0 ? Int(size.ws_col) : 80
        if line.count >= width { line = String(line.prefix(width - 1)) }
        writeFully(STDERR_FILENO, "\r\u{1b}[K" + line)
        drawn = true
    }

    /// Takes the line off the terminal (before any other stderr output, and at the end).
    func clear() {
        guard drawn else { return }
        drawn = false
        writeFully(STDERR_FILENO, "\r\u{1b}[K")
    }

    static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}
