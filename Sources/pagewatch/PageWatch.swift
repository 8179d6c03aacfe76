import ArgumentParser
import Glibc
import PageWatchAddressSpace
import PageWatchEngine
import PageWatchLog
import PageWatchPtrace
import PageWatchReport

@main
struct PageWatch: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pagewatch",
        abstract: "Report which memory pages a process writes, on any Linux kernel (ptrace + mprotect).",
        subcommands: [Run.self, Attach.self, Report.self, GuardianCommand.self]
    )

    /// Usage errors exit 2, as in most Linux tools (ArgumentParser's default is 64).
    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            let code = exitCode(for: error)
            if code == .validationFailure {
                var message = fullMessage(for: error)
                if message.hasPrefix("Error: ") { message.removeFirst(7) }
                writeAll(STDERR_FILENO, "pagewatch: " + message + "\n")
                Glibc.exit(2)
            }
            exit(withError: error)
        }
    }
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run PROGRAM and report the pages it writes, sweep by sweep.",
        discussion: """
        Tracked memory is made read-only; each first write to a page is caught, recorded, \
        and the page made writable again. A sweep reports the pages written since the \
        previous sweep and re-arms them. Tracking starts at the first sweep, which reports \
        every selected page (all of it is new to PageWatch).

        Shared mappings (MAP_SHARED, SysV shm, memfd), [vdso], [vvar] and [vsyscall] are \
        never tracked.

        The program runs under ptrace with PTRACE_O_EXITKILL: if pagewatch dies, the program \
        is killed with it. Ctrl-C goes to the program, and SIGTERM or SIGHUP sent to pagewatch \
        are passed to it; pagewatch traces on and reports how it ended.

        A log that cannot be written (a full disk) is one line on stderr: tracking stops, every \
        protection is given back and the program finishes untracked.

        Exit status: the program's, or 128+N when signal N killed it; 127 when it cannot be \
        started; 2 for a usage error; 1 when tracing fails or the log cannot be written.
        """
    )

    @OptionGroup var tracking: TrackingOptions

    @Argument(parsing: .postTerminator, help: ArgumentHelp("The program and its arguments, after --.", valueName: "PROGRAM"))
    var program: [String] = []

    func validate() throws {
        if program.isEmpty { throw ValidationError("missing PROGRAM after -- (pagewatch run [OPTIONS] -- PROGRAM [ARGS...])") }
    }

    func run() throws {
        let configuration = try tracking.configuration(command: program)
        let sink = tracking.openSink()
        var tracker: Tracker!
        tracker = Tracker(configuration: configuration) { record in
            if case .start(let pid, _, _, _, _, _) = record { SignalForwarding.forward(to: pid) }
            sink.write(record)
        }
        tracker.onWarning = warning
        // A log that cannot be written: the program finishes untracked, PageWatch exits 1.
        sink.onFailure = { tracker.giveUpTracking(because: $0) }
        do {
            let end = try tracker.run()
            sink.finish()
            if sink.failure != nil { throw ExitCode(1) }
            if tracker.missedPages > 0 { throw ExitCode(missedWrites(tracker.missedPages)) }
            throw ExitCode(end.shellStatus)
        } catch let error as TraceError {
            if tracker.started { sink.finish() }
            if case .execFailed = error { fail(error.description, status: 127) }
            fail(error.description, hint: error.hint, status: 1)
        }
    }
}

/// The options `run` and `attach` share (a public interface: names and meanings stay).
struct TrackingOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "What to track (repeatable): writable, anon, heap, stack, file:PATH, or 0xSTART-0xEND.",
        discussion: "writable = every private writable mapping (default); anon = private anonymous memory including heap and stacks; stack = the main and all thread stacks.",
        valueName: "SPEC"))
    var track: [String] = []

    @Option(name: .long, help: ArgumentHelp("Time between periodic sweeps: 250ms, 2s, ...; 0 = none.", valueName: "DURATION"))
    var interval: String = "1s"

    @Option(name: .long, help: ArgumentHelp("Each delivery of this signal to the program triggers a sweep and is swallowed (e.g. USR2).", valueName: "SIG"))
    var sweepSignal: String?

    @Option(name: .long, help: ArgumentHelp("Write the JSON Lines log (schema pagewatch/1) here; - for stdout. Without it a summary goes to stderr.", valueName: "PATH"))
    var output: String?

    @Option(name: .long, help: ArgumentHelp("Frames recorded for each page's writer (its call stack at the first write, or at the syscall the kernel wrote for); 0 = no attribution, a cheaper fault path.", valueName: "N"))
    var stackDepth: Int = 16

    @Flag(name: .long, help: ArgumentHelp("Track the processes the program forks too: each gets its own sweeps, and every record carries its pid.",
                                           discussion: "Without it, forked children get the program's protections back and run untracked (still traced)."))
    var followForks = false

    @Option(name: .long, help: ArgumentHelp("Poll for the next stop this long before sleeping in waitpid: keeps PageWatch's CPU awake for the program's next fault; 0 = always sleep.",
                                             discussion: "Costs at most this much of PageWatch's CPU per stop (docs/performance.md).",
                                             valueName: "DURATION"))
    var spinWait: String = "50us"

    @Flag(name: .customLong("idle-poll"), inversion: .prefixedNo,
          help: ArgumentHelp("While tracing, ask the kernel to keep idle CPUs polling instead of sleeping (a CPU latency request of 0 through /dev/cpu_dma_latency; root only, skipped otherwise).",
                             discussion: "A sleeping CPU's wake-up is most of a fault's cost on many VMs; this halves it here, at the price of idle CPUs kept busy system-wide while PageWatch runs (docs/performance.md)."))
    var idlePoll = true

    @Flag(name: .long, help: ArgumentHelp("Check PageWatch itself: keep a copy of every write-protected page and, at each sweep, report the pages whose contents changed with no write seen (missed writes: a stderr line, a `missed` record, exit status 3).",
                                           discussion: "For programs that do not know their own truth. Costs a read of the tracked memory at each sweep and a copy of it in PageWatch's memory; a write of the same bytes stays invisible."))
    var verifyContents = false

    func validate() throws {
        if IntervalParser.parse(spinWait).map({ $0 > 1_000_000_000 }) ?? true {
            throw ValidationError("invalid --spin-wait '\(spinWait)' (expected 0 or a duration up to 1s: 50us, 200us)")
        }
        for t in track {
            do { _ = try TrackSpec.parse(t) } catch { throw ValidationError(String(describing: error)) }
        }
        if IntervalParser.parse(interval) == nil {
            throw ValidationError("invalid --interval '\(interval)' (expected 0, or a number with ns, us, ms, s, m or h: 250ms, 2s)")
        }
        if !(0...256).contains(stackDepth) {
            throw ValidationError("invalid --stack-depth \(stackDepth) (expected 0 to 256)")
        }
        if let s = sweepSignal, Signal.parse(s) == nil {
            throw ValidationError("invalid --sweep-signal '\(s)' (expected a signal name or number: USR2, SIGUSR1, 12)")
        }
        if let s = sweepSignal.flatMap(Signal.parse), [Signal.SIGKILL, Signal.SIGSTOP].contains(s) {
            throw ValidationError("--sweep-signal cannot be \(Signal.name(s)): the kernel never lets a tracer see it")
        }
    }

    func configuration(command: [String]) throws -> TrackerConfiguration {
        var c = TrackerConfiguration(command: command, selection: Selection(try track.map(TrackSpec.parse)),
                                     intervalNs: IntervalParser.parse(interval)!, sweepSignal: sweepSignal.flatMap(Signal.parse),
                                     followForks: followForks, stackDepth: stackDepth)
        c.spinNs = IntervalParser.parse(spinWait)!
        c.idlePolling = idlePoll
        c.verifyContents = verifyContents
        return c
    }

    func openSink() -> LogSink {
        do {
            return try LogSink(path: output)
        } catch {
            fail("cannot open --output '\(output ?? "")': \(error)", status: 1)
        }
    }
}

struct Attach: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Attach to a running process, report the pages it writes, and detach without a trace.",
        discussion: """
        Every thread is seized (PTRACE_SEIZE); the first sweep (reason attach) arms the \
        selection and reports every selected page. Without a seccomp filter (it would outlive \
        the detach), every syscall of the program stops twice: expect it to run slower while \
        attached.

        Ctrl-C, SIGTERM or SIGHUP, --duration or --sweeps: a final sweep (reason detach), every \
        page's protection restored to the program's own, PageWatch's scratch pages removed, \
        every thread detached with its pending signals. The program runs on. The tracing runs \
        in a child process: killing this one (even with SIGKILL) makes it detach the same way; \
        should the tracer itself die, a guardian process gives the program its protections back.

        Exit status: 0 after a detach; the program's shell status if it ended while attached \
        (128+N when signal N killed it); 1 when the process cannot be attached to, tracing \
        fails or the log cannot be written (PageWatch then detaches); 2 for a usage error.
        """
    )

    @OptionGroup var tracking: TrackingOptions

    @Option(name: .long, help: ArgumentHelp("Detach after this long: 500ms, 10s, 2m.", valueName: "DURATION"))
    var duration: String?

    @Option(name: .long, help: ArgumentHelp("Detach once this many sweeps have been made (the detach adds its own).", valueName: "N"))
    var sweeps: Int?

    @Argument(help: ArgumentHelp("The process to attach to.", valueName: "PID"))
    var pid: Int32

    func validate() throws {
        if let d = duration, IntervalParser.parse(d) == nil || IntervalParser.parse(d) == 0 {
            throw ValidationError("invalid --duration '\(d)' (expected a number with ns, us, ms, s, m or h: 500ms, 10s)")
        }
        if let n = sweeps, n < 1 { throw ValidationError("invalid --sweeps \(n) (expected 1 or more)") }
    }

    /// The tracing runs in a child process (`TracerProcess`): SIGKILL to
    /// this one makes the child detach cleanly (hazard 20).
    func run() throws {
        let end: TracerProcess.End
        do {
            end = try TracerProcess.run { trace() }
        } catch let error as TraceError {
            fail(error.description, hint: error.hint, status: 1)
        }
        switch end {
        case .exited(0): return
        case .exited(let status): throw ExitCode(status)
        case .killed(let sig):
            writeAll(STDERR_FILENO, "pagewatch: its tracer process was killed by \(Signal.name(sig)); the guardian gives pid \(pid) back\n")
            throw ExitCode(128 + sig)
        }
    }

    /// The tracer child's work; its exit status.
    func trace() -> Int32 {
        let cmdline = (try? String(contentsOfProcFile: "/proc/\(pid)/cmdline")) ?? ""
        let sink: LogSink
        let tracker: Tracker
        do {
            var configuration = try tracking.configuration(command: cmdline.split(separator: "\0").map(String.init))
            configuration.durationNs = duration.flatMap(IntervalParser.parse)
            configuration.maxSweeps = sweeps
            sink = tracking.openSink()
            tracker = Tracker(configuration: configuration) { sink.write($0) }
        } catch {
            fail("\(error)", status: 2)
        }
        tracker.onWarning = warning
        // A log that cannot be written: PageWatch detaches, the program runs on, exit 1.
        sink.onFailure = { [unowned tracker] in tracker.giveUpTracking(because: $0) }
        SignalForwarding.ignoreLogWriteSignals()
        do {
            let end = try tracker.attach(pid: pid)
            sink.finish()
            if sink.failure != nil { return 1 }
            if tracker.missedPages > 0 { return missedWrites(tracker.missedPages) }
            if case .programEnded(let how) = end {
                writeAll(STDERR_FILENO, "pagewatch: pid \(pid) ended while attached (status \(how.shellStatus))\n")
                return how.shellStatus
            }
            return 0
        } catch let error as TraceError {
            if tracker.started { sink.finish() }
            fail(error.description, hint: error.hint, status: 1)
        } catch {
            fail("\(error)", status: 1)
        }
    }
}

/// The watchdog `attach` starts (hazard 20); not for people.
struct GuardianCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "guardian", abstract: "Internal: restores an attached process if pagewatch dies.",
        shouldDisplay: false)

    func run() throws {
        throw ExitCode(Guardian.watch())
    }
}

extension String {
    /// A /proc file read whole (stat-size 0 files included).
    init(contentsOfProcFile path: String) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw Errno(errno) }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, 4096) }
            if n <= 0 { break }
            bytes += chunk[0..<n]
        }
        self = String(decoding: bytes, as: UTF8.self)
    }
}

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

    init(path: String?) throws {
        switch path {
        case nil: fd = nil; name = "stderr"
        case "-": fd = STDOUT_FILENO; name = "stdout"
        case let p?:
            let f = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            guard f >= 0 else { throw Errno(errno) }
            fd = f
            name = p
        }
    }

    func write(_ record: LogRecord) {
        if case let .untracked(pid, reason, _) = record, failure == nil {
            // Never only in the log: the user must know the report stops here.
            // (Not when the log's own failure stopped it: that was said.)
            writeAll(STDERR_FILENO, "pagewatch: pid \(pid): \(reason): tracking stopped; its later writes are not reported\n")
        }
        if case let .missed(pid, seq, pages, ranges, _) = record, failure == nil {
            let first = ranges.prefix(3).map { "\($0.start)-\($0.end)" }.joined(separator: ", ")
            writeAll(STDERR_FILENO, "pagewatch: pid \(pid): missed write: \(pages) page(s) changed with no write seen before sweep \(seq): \(first)\(ranges.count > 3 ? ", ..." : "")\n")
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
        writeAll(STDERR_FILENO, "pagewatch: cannot write the log to '\(name)': \(error); tracking stopped, the program runs on untracked\n")
        onFailure?(reason)
    }

    func finish() {
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
    writeAll(STDERR_FILENO, "pagewatch: --verify-contents: \(pages) page(s) changed with no write seen; the log's `missed` records name them\n")
    return 3
}
