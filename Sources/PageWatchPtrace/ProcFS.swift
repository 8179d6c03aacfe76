import Glibc
import PageWatchAddressSpace

/// Reads of `/proc/PID/...`, with errors that carry the path and pid.
public enum ProcFS {
    /// The value of the `name:` line of a `/proc/PID/status` text, blanks trimmed.
    public static func statusField(_ name: String, in status: String) -> Substring? {
        status.split(separator: "\n").first { $0.hasPrefix(name + ":") }?
            .dropFirst(name.count + 1).drop { $0 == " " || $0 == "\t" }
    }

    /// `statusField` of thread `tid`'s status; nil when it cannot be read.
    public static func statusField(_ name: String, of tid: Int32) -> Substring? {
        (try? read("/proc/\(tid)/status", pid: tid)).flatMap { statusField(name, in: $0) }
    }

    /// The signals pending for thread `tid` that it does not block (bit N-1
    /// for signal N): its own, and with `shared` its process's too.
    public static func unblockedPendingSignals(of tid: Int32, shared: Bool) throws -> UInt64 {
        let status = try read("/proc/\(tid)/status", pid: tid)
        func mask(_ name: String) -> UInt64 { statusField(name, in: status).flatMap { UInt64($0, radix: 16) } ?? 0 }
        return (mask("SigPnd") | (shared ? mask("ShdPnd") : 0)) & ~mask("SigBlk")
    }

    /// The thread's seccomp mode (`Seccomp` of its status): 0 none, 1
    /// strict, 2 filters.
    public static func seccompMode(of tid: Int32) throws -> Int {
        let status = try read("/proc/\(tid)/status", pid: tid)
        return statusField("Seccomp", in: status).flatMap { Int($0) } ?? 0
    }

    /// The process's ignored and caught signals (bit N-1 for signal N): the
    /// `sigignore` and `sigcatch` fields of a thread's `/proc/PID/task/TID/stat`
    /// held open as `fd`, read again from offset 0 (about a third of the cost
    /// of opening it, and of `status`). Nil when the thread is gone.
    public static func signalDispositions(statFD fd: Int32) -> (ignored: UInt64, caught: UInt64)? {
        var buffer = [UInt8](repeating: 0, count: 1024)
        let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        // After the command name, which may hold spaces and parentheses, the
        // fields from `state` (field 3) on; sigignore is field 33, sigcatch 34.
        guard n > 0, let close = buffer[0..<n].lastIndex(of: UInt8(ascii: ")")) else { return nil }
        let fields = buffer[(close + 1)..<n].split(separator: UInt8(ascii: " "))
        guard fields.count > 31, let ignored = UInt64(String(decoding: fields[30], as: UTF8.self)),
            let caught = UInt64(String(decoding: fields[31], as: UTF8.self))
        else { return nil }
        return (ignored, caught)
    }

    /// The whole file (procfs files report size 0, so read until EOF).
    public static func read(_ path: String, pid: Int32) throws -> String {
        String(decoding: try readBytes(path, pid: pid), as: UTF8.self)
    }

    public static func readBytes(_ path: String, pid: Int32) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 { throw TraceError.call("open \(path)", Errno(errno), tid: pid) }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw TraceError.call("read \(path)", Errno(errno), tid: pid)
            }
            if n == 0 { break }
            bytes.append(contentsOf: chunk[0..<n])
        }
        return bytes
    }

    public static func maps(of pid: Int32) throws -> [Mapping] {
        try readBytes("/proc/\(pid)/maps", pid: pid).withUnsafeBufferPointer { try MapsParser.parse(bytes: $0) }
    }

    public static func executable(of pid: Int32) -> String? {
        var buffer = [CChar](repeating: 0, count: 4097)
        let n = readlink("/proc/\(pid)/exe", &buffer, 4096)
        guard n > 0 else { return nil }
        return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The process's command line (`/proc/PID/cmdline`), empty when it
    /// cannot be read. At an exec stop it is the new image's.
    public static func commandLine(of pid: Int32) -> [String] {
        let fd = open("/proc/\(pid)/cmdline", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return [] }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while bytes.count < 1 << 20 {
            let n = Glibc.read(fd, &chunk, chunk.count)
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { break }
            bytes += chunk[0..<n]
        }
        if bytes.last == 0 { bytes.removeLast() }
        guard !bytes.isEmpty else { return [] }
        return bytes.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
    }

    /// A value of the process's auxiliary vector (`/proc/PID/auxv`), or nil.
    public static func auxiliaryValue(pid: Int32, key: UInt64) throws -> UInt64? {
        let fd = open("/proc/\(pid)/auxv", O_RDONLY | O_CLOEXEC)
        if fd < 0 { throw TraceError.call("open /proc/\(pid)/auxv", Errno(errno), tid: pid) }
        defer { close(fd) }
        var pair = (UInt64(0), UInt64(0))
        while withUnsafeMutableBytes(of: &pair, { Glibc.read(fd, $0.baseAddress, 16) }) == 16 {
            if pair.0 == 0 { return nil }
            if pair.0 == key { return pair.1 }
        }
        return nil
    }

    /// What a thread is doing now, from `/proc/PID/task/TID/syscall`.
    public enum ThreadActivity: Equatable, Sendable {
        case running
        case inSyscall(number: Int64, arguments: [UInt64])
        /// Blocked, but not in a syscall ("-1 SP PC"): sleeping in a page
        /// fault (another thread holds the mappings' lock, the page is read
        /// in), or stopped.
        case outsideSyscall
        case unknown
    }

    public static func activity(pid: Int32, tid: Int32) -> ThreadActivity {
        guard let text = try? read("/proc/\(pid)/task/\(tid)/syscall", pid: tid) else { return .unknown }
        let fields = text.split(whereSeparator: { $0 == " " || $0 == "\n" })
        if fields.first == "running" { return .running }
        if fields.first == "-1" { return .outsideSyscall }
        guard fields.count >= 7, let nr = Int64(fields[0]) else { return .unknown }
        let args = fields[1...6].compactMap { UInt64($0.dropFirst(2), radix: 16) }
        return args.count == 6 ? .inSyscall(number: nr, arguments: args) : .unknown
    }
}
