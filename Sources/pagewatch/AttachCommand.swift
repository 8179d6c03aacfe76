import ArgumentParser
import Glibc
import PageWatchEngine
import PageWatchPtrace

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

    @Option(
        name: .long,
        help: ArgumentHelp("Detach once this many sweeps have been made (the detach adds its own).", valueName: "N"))
    var sweeps: Int?

    @Argument(help: ArgumentHelp("The process to attach to.", valueName: "PID"))
    var pid: Int32

    func validate() throws {
        if let d = duration, IntervalParser.parse(d) == nil || IntervalParser.parse(d) == 0 {
            throw ValidationError(
                "invalid --duration '\(d)' (expected a number with ns, us, ms, s, m or h: 500ms, 10s)")
        }
        if let n = sweeps, n < 1 { throw ValidationError("invalid --sweeps \(n) (expected 1 or more)") }
    }

    /// The tracing runs in a child process (`TracerProcess`): SIGKILL to
    /// this one makes the child detach cleanly.
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
            writeAll(
                STDERR_FILENO,
                "pagewatch: its tracer process was killed by \(Signal.name(sig)); the guardian gives pid \(pid) back\n")
            throw ExitCode(128 + sig)
        }
    }

    /// The tracer child's work; its exit status.
    func trace() -> Int32 {
        let cmdline = (try? ProcFS.read("/proc/\(pid)/cmdline", pid: pid)) ?? ""
        let sink: LogSink
        let tracker: Tracker
        do {
            var configuration = try tracking.configuration(command: cmdline.split(separator: "\0").map(String.init))
            configuration.durationNs = duration.flatMap(IntervalParser.parse)
            configuration.maxSweeps = sweeps
            sink = tracking.openSink()
            // At a terminal, say that it is attached and how it ends (scripts see nothing of it).
            let durationText = duration.map { " for \($0)" } ?? ""
            let logName = sink.name
            tracker = Tracker(configuration: configuration) { record in
                if case let .attach(p, threads, _) = record, !tracking.quiet, isatty(STDERR_FILENO) == 1 {
                    writeAll(
                        STDERR_FILENO,
                        "pagewatch: attached to pid \(p) (\(threads) thread(s))\(durationText), log: \(logName); "
                            + "Ctrl-C detaches, the program runs on\n")
                }
                sink.write(record)
            }
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
            if sink.failure != nil || tracker.dumpFailure != nil { return 1 }
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
