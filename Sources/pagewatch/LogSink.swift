import Glibc
import PageWatchLog
import PageWatchPtrace
import PageWatchReport

/// Where log records go: a JSON Lines file or stdout, else a summary on stderr.
final class LogSink {
    let fd: Int32?
    /// The log's name in messages: its path, or `stdout`.
    let name: String
    var summary = Summary()
    /// The first write error, as said on stderr: nothing is written after it.
    private(set) var failure: String?
    /// Called once, at the first write error, with the reason tracking stops.
    var onFailure: ((String) -> Void)?
    /// Bytes of whole lines written: a line cut by a full disk is cut back to here.
    private var whole: off_t = 0

    /// `keepingOld`: an existing regular file at `path` is renamed to
    /// `path.old` first (perf's habit), replacing an older one.
    init(path: String?, keepingOld: Bool = false) throws {
        switch path {
        case nil: fd = nil; name = "stderr"
        case "-": fd = STDOUT_FILENO; name = "stdout"
        case let p?:
            var st = stat()
            // A regular file itself, not through a symlink (/dev/stderr to a
            // file would rename the link), nor a FIFO or a device (/dev/null):
            // those are written to as they are.
            if keepingOld, lstat(p, &st) == 0, st.st_mode & S_IFMT == S_IFREG, rename(p, p + ".old") != 0 {
                throw LogSinkError.keepingOld(p + ".old", Errno(errno))
            }
            let f = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            guard f >= 0 else { throw Errno(errno) }
            fd = f
            name = p
        }
    }

    func write(_ record: LogRecord) {
        defer { StatusLine.shared.note(record) }
        if case let .untracked(pid, reason, _) = record, failure == nil {
            // Never only in the log: the user must know the report stops here.
            // (Not when the log's own failure stopped it: that was said.)
            writeAll(
                STDERR_FILENO, "pagewatch: pid \(pid): \(reason): tracking stopped; its later writes are not reported\n"
            )
        }
        if case let .missed(pid, seq, pages, ranges, _) = record, failure == nil {
            let first = ranges.prefix(3).map { "\($0.start)-\($0.end)" }.joined(separator: ", ")
            writeAll(
                STDERR_FILENO,
                "pagewatch: pid \(pid): missed write: \(pages) page(s) changed with no write seen before sweep \(seq): \(first)\(ranges.count > 3 ? ", ..." : "")\n"
            )
        }
        guard let fd else { summary.add(record); return }
        guard failure == nil else { return }
        let line = JSONLines.line(record)
        if let error = writeFully(fd, line) {
            failed(error)
        } else {
            whole += off_t(line.utf8.count)
        }
    }

    /// The log's write error: one line, then tracking stops. A partial last
    /// line is cut off where the file allows it, so the log ends with a
    /// whole record (`report` reads a cut one too, with a warning).
    private func failed(_ error: Errno) {
        if let fd, fd != STDOUT_FILENO { _ = ftruncate(fd, whole) }
        let reason = "the log could not be written to \(name): \(error)"
        failure = reason
        writeAll(
            STDERR_FILENO,
            "pagewatch: cannot write the log to '\(name)': \(error); tracking stopped, the program runs on untracked\n")
        onFailure?(reason)
    }

    func finish() {
        StatusLine.shared.clear()
        if let fd {
            // close(2) can report a delayed write error (NFS, quotas).
            if fd != STDOUT_FILENO, close(fd) != 0, failure == nil {
                let e = Errno(errno)
                failure = "closing \(name): \(e)"
                writeAll(STDERR_FILENO, "pagewatch: cannot write the log to '\(name)': \(e)\n")
            }
        } else {
            writeAll(STDERR_FILENO, summary.render())
        }
    }
}

enum LogSinkError: Error, CustomStringConvertible {
    case keepingOld(String, Errno)

    var description: String {
        switch self {
        case let .keepingOld(path, errno): "cannot keep the existing log as \(path): \(errno) (--force overwrites it)"
        }
    }
}
