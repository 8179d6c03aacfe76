import ArgumentParser
import PageWatchEngine
import PageWatchPtrace

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run PROGRAM and report the pages it writes, sweep by sweep.",
        discussion: """
            Tracked memory is made read-only; each first write to a page is caught, recorded, \
            and the page made writable again. A sweep reports the pages written since the \
            previous sweep and re-arms them. Tracking starts at the first sweep, which reports \
            every selected page (all of it is new to PageWatch): those that hold data in ranges, \
            the rest in zero_ranges and file_ranges.

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

    // As strace, perf and valgrind: the first argument that is not one of
    // pagewatch's options starts the program's command line, and what
    // follows is the program's own, dashes included. A `--` before it is
    // still taken.
    @Argument(
        parsing: .captureForPassthrough,
        help: ArgumentHelp("The program and its arguments (a -- before them is optional).", valueName: "PROGRAM"))
    var words: [String] = []

    /// The program's command line: `words` without the `--` before it.
    var program: [String] { words.first == "--" ? Array(words.dropFirst()) : words }

    func validate() throws {
        // Passthrough parsing captures what it does not know, flags too:
        // the help flags, and a mistyped option, before the program.
        if let first = words.first, first.hasPrefix("-"), first != "--" {
            if ["-h", "--help"].contains(first) { throw CleanExit.helpRequest(self) }
            throw ValidationError("unknown option '\(first)' (a program whose name starts with - goes after --)")
        }
        if program.isEmpty {
            throw ValidationError("missing PROGRAM (pagewatch run [OPTIONS] [--] PROGRAM [ARGS...])")
        }
    }

    func run() throws {
        let configuration = try tracking.configuration(command: program)
        let sink = tracking.openSink()
        var tracker: Tracker!
        tracker = Tracker(configuration: configuration) { record in
            if case .start(let pid, _, _, _, _, _, _, _, _) = record { SignalForwarding.forward(to: pid) }
            sink.write(record)
        }
        tracker.onWarning = warning
        // A log that cannot be written: the program finishes untracked, PageWatch exits 1.
        sink.onFailure = { tracker.giveUpTracking(because: $0) }
        do {
            let end = try tracker.run()
            sink.finish()
            if sink.failure != nil || tracker.dumpFailure != nil { throw ExitCode(1) }
            if tracker.missedPages > 0 { throw ExitCode(missedWrites(tracker.missedPages)) }
            throw ExitCode(end.shellStatus)
        } catch let error as TraceError {
            if tracker.started { sink.finish() }
            if case .execFailed = error { fail(error.description, status: 127) }
            fail(error.description, hint: error.hint, status: 1)
        }
    }
}
