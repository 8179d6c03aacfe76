import Glibc
import PageWatchPtrace

/// write(2) until done; EINTR retried. The errno of a failed write, or nil.
@discardableResult
func writeFully(_ fd: Int32, _ text: String) -> Errno? {
    var text = text
    return text.withUTF8 { bytes -> Errno? in
        var offset = 0
        while offset < bytes.count {
            let n = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if n < 0 { if errno == EINTR { continue }; return Errno(errno) }
            offset += n
        }
        return nil
    }
}

/// write(2) until done; EINTR retried; errors ignored (stderr).
func writeAll(_ fd: Int32, _ text: String) {
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
