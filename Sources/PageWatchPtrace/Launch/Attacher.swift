import Glibc

/// Takes a running process under ptrace (`pagewatch attach`): checks it is
/// a process PageWatch can and may trace, then seizes every thread.
public enum Attacher {
    /// Refuses, with a clear reason and nothing done to it, a target that is
    /// gone, PageWatch itself, a zombie, a kernel thread, or traced already.
    public static func check(_ pid: Int32) throws {
        func refuse(_ reason: String, _ hint: String? = nil) -> TraceError {
            .cannotAttach(pid: pid, reason: reason, hint: hint)
        }
        guard pid > 0 else { throw refuse("not a process id") }
        guard pid != getpid() else { throw refuse("that is PageWatch itself") }
        guard let status = try? ProcFS.read("/proc/\(pid)/status", pid: pid) else {
            throw refuse("no such process")
        }
        func field(_ name: String) -> Substring? { ProcFS.statusField(name, in: status) }
        if let tgid = field("Tgid").flatMap({ Int32($0) }), tgid != pid {
            throw refuse("it is a thread of process \(tgid)", "attach to the process: pagewatch attach \(tgid)")
        }
        if field("State")?.first == "Z" { throw refuse("it is a zombie (it has exited; its parent has not reaped it)") }
        if isKernelThread(pid) { throw refuse("it is a kernel thread, which has no user memory") }
        if let tracer = field("TracerPid").flatMap({ Int32($0) }), tracer != 0 {
            let name =
                (try? ProcFS.read("/proc/\(tracer)/comm", pid: tracer))?.split(separator: "\n").first.map(String.init)
                ?? "?"
            throw refuse(
                "it is already traced by pid \(tracer) (\(name))",
                "a process has one tracer: detach the debugger or strace first")
        }
    }

    /// PF_KTHREAD in /proc/PID/stat's flags (field 9).
    static func isKernelThread(_ pid: Int32) -> Bool {
        guard let stat = try? ProcFS.read("/proc/\(pid)/stat", pid: pid), let close = stat.lastIndex(of: ")") else {
            return false
        }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 6, let flags = UInt64(fields[6]) else { return false }
        return flags & 0x0020_0000 != 0
    }

    /// The thread ids of `pid` now.
    public static func threads(of pid: Int32) -> [Int32] {
        guard let dir = opendir("/proc/\(pid)/task") else { return [] }
        defer { closedir(dir) }
        var tids: [Int32] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) {
                String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self)
            }
            if let tid = Int32(name) { tids.append(tid) }
        }
        return tids.sorted()
    }

    /// Why PTRACE_SEIZE of a thread other than the leader may fail with
    /// EPERM and be no error: a thread seized before it created it, so it is
    /// traced from birth (TRACECLONE); or it has exited (the kernel refuses
    /// a task with an exit state) and is about to vanish.
    static func isSeizedOrGone(_ tid: Int32) -> Bool {
        guard let status = try? ProcFS.read("/proc/\(tid)/status", pid: tid) else { return true }
        if let state = ProcFS.statusField("State", in: status)?.first, state == "Z" || state == "X" { return true }
        return ProcFS.statusField("TracerPid", in: status).flatMap { Int32($0) } == getpid()
    }

    /// The tracer of `tid` and its name, when it is not PageWatch.
    static func otherTracer(of tid: Int32) -> (Int32, String)? {
        guard let tracer = ProcFS.statusField("TracerPid", of: tid).flatMap({ Int32($0) }), tracer != 0,
            tracer != getpid()
        else {
            return nil
        }
        let name =
            (try? ProcFS.read("/proc/\(tracer)/comm", pid: tracer))?.split(separator: "\n").first.map(String.init)
            ?? "?"
        return (tracer, name)
    }

    /// Seizes every thread of `pid`, race-free against threads being
    /// created meanwhile: `/proc/PID/task` is read again until a pass finds
    /// no thread not yet seized (threads a seized thread creates are traced
    /// from birth by `PTRACE_O_TRACECLONE`). Threads that exit meanwhile are
    /// skipped. Returns the seized tids; the threads keep running.
    public static func seizeAll(_ pid: Int32, options: TraceOptions) throws -> [Int32] {
        var seized: [Int32] = []
        var known = Set<Int32>()
        while true {
            let fresh = threads(of: pid).filter { !known.contains($0) }
            if fresh.isEmpty { break }
            for tid in fresh {
                known.insert(tid)
                do {
                    try Ptrace.seize(tid, options: options)
                    seized.append(tid)
                } catch TraceError.call(_, let errno, _, _) where errno == .ESRCH && tid != pid {
                    continue  // the thread exited meanwhile
                } catch TraceError.call(_, let errno, _, _) where errno == .EPERM && tid != pid && isSeizedOrGone(tid) {
                    continue
                } catch TraceError.call(_, let errno, _, _) where errno == .EPERM && tid != pid {
                    // One thread traced by another tracer (a debugger on it
                    // alone): it could not be kept off armed pages. Refused;
                    // the threads seized so far are let go when this
                    // (tracer) process exits.
                    if let (tracer, name) = otherTracer(of: tid) {
                        throw TraceError.cannotAttach(
                            pid: pid, reason: "its thread \(tid) is traced by pid \(tracer) (\(name))",
                            hint: "a thread has one tracer: detach the debugger or strace from it first")
                    }
                    throw TraceError.call("ptrace(PTRACE_SEIZE)", errno, tid: tid)
                }
            }
        }
        guard !seized.isEmpty else { throw TraceError.cannotAttach(pid: pid, reason: "no such process", hint: nil) }
        return seized
    }
}
