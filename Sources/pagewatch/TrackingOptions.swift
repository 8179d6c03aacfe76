import Glibc
import ArgumentParser
import PageWatchEngine
import PageWatchImage
import PageWatchLog
import PageWatchPtrace

/// The options `run` and `attach` share (a public interface: names and meanings stay).
struct TrackingOptions: ParsableArguments {
    @Option(
        name: .long,
        help: ArgumentHelp(
            "What to track (repeatable): writable, anon, heap, stack, file:PATH, or 0xSTART-0xEND.",
            discussion:
                "writable = every private writable mapping (default); anon = private anonymous memory including heap and stacks; stack = the main and all thread stacks.",
            valueName: "SPEC"))
    var track: [String] = []

    // Unconditional: `--interval -1` is a bad value, not a missing one.
    @Option(
        name: .long, parsing: .unconditional,
        help: ArgumentHelp("Time between periodic sweeps: 250ms, 2s, ...; 0 = none.", valueName: "DURATION"))
    var interval: String = "1s"

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Each delivery of this signal to the program triggers a sweep and is swallowed (e.g. USR2).",
            valueName: "SIG"))
    var sweepSignal: String?

    @Option(
        name: [.customShort("o"), .long],
        help: ArgumentHelp(
            "Write the JSON Lines log (schema pagewatch/2, see --schema) here; - for stdout. Without it a summary goes to stderr.",
            discussion:
                "An existing file is kept as PATH.old (replacing an older one) unless --force. With -, `run` gives the program PageWatch's stderr as its stdout, so that the log can be piped (pagewatch run -o - PROG | pagewatch report -).",
            valueName: "PATH"))
    var output: String?

    @Flag(name: .long, help: "Overwrite an existing --output file instead of keeping it as PATH.old.")
    var force = false

    @Flag(
        name: [.customShort("q"), .long],
        help:
            "No live status line on a terminal (elapsed time, sweeps, dirty rate, faults per second, where the log goes)."
    )
    var quiet = false

    @Option(
        name: .long, parsing: .unconditional,
        help: ArgumentHelp(
            "Frames recorded for each page's writer (its call stack at the first write, or at the syscall the kernel wrote for); 0 = no attribution, a cheaper fault path.",
            valueName: "N"))
    var stackDepth: Int = 16

    @Option(
        name: .long,
        help: ArgumentHelp(
            "How writes to private anonymous memory are tracked: auto, ptrace or uffd.",
            discussion:
                "uffd: asynchronous userfaultfd write-protection and PAGEMAP_SCAN sweeps (Linux 6.7+): a first write costs under a microsecond and no stop, but has no writer, so it needs --stack-depth 0. Private file mappings (a library's .data) stay on ptrace. Where the kernel or the process cannot have it, it falls back to ptrace with a warning. auto (default): uffd where the kernel offers it and --stack-depth is 0, else ptrace. ptrace: always ptrace, mprotect and write faults (docs/design.md).",
            valueName: "BACKEND"))
    var backend: String = "auto"

    @Flag(
        name: .long,
        help: ArgumentHelp(
            "Track the processes the program forks too: each gets its own sweeps, and every record carries its pid.",
            discussion:
                "Without it, forked children get the program's protections back and run untracked (still traced)."))
    var followForks = false

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Poll for the next stop this long before sleeping in waitpid: keeps PageWatch's CPU awake for the program's next fault; 0 = always sleep.",
            discussion: "Costs at most this much of PageWatch's CPU per stop (docs/performance.md).",
            valueName: "DURATION"))
    var spinWait: String = "50us"

    @Flag(
        name: .customLong("idle-poll"), inversion: .prefixedNo,
        help: ArgumentHelp(
            "While tracing, ask the kernel to keep idle CPUs polling instead of sleeping (a CPU latency request of 0 through /dev/cpu_dma_latency; root only, skipped otherwise).",
            discussion:
                "A sleeping CPU's wake-up is most of a fault's cost on many VMs; this halves it here, at the price of idle CPUs kept busy system-wide while PageWatch runs (docs/performance.md)."
        ))
    var idlePoll = true

    @Flag(
        name: .long,
        help: ArgumentHelp(
            "Check PageWatch itself: keep a copy of every write-protected page and, at each sweep, report the pages whose contents changed with no write seen (missed writes: a stderr line, a `missed` record, exit status 3).",
            discussion:
                "For programs that do not know their own truth. Costs a read of the tracked memory at each sweep and a copy of it in PageWatch's memory; a write of the same bytes stays invisible."
        ))
    var verifyContents = false

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Copy each sweep's pages into a memory image in DIR: sweep 1 a full image of the tracked memory, each later sweep an increment (pagewatch image reads it).",
            discussion:
                "Pages that read as zeros are recorded as zero, not copied. A write error (a full disk) stops tracking with one line and exit status 1: the image is never short. docs/image-format.md.",
            valueName: "DIR"))
    var dump: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "When pages rewritten at every sweep may be left writable and reported without a fault: auto, never or always.",
            discussion:
                "auto (default): only at interval sweeps after an interval in which PageWatch's work took more than a quarter of the time (the program starves otherwise). Such pages are reported by every sweep, written or not, and re-armed every 8 to 64 sweeps to check; the log names them (`presumed`). never: every reported page was seen written. Either way no write is missed.",
            valueName: "WHEN"))
    var presume: String = "auto"

    @Option(
        name: .long,
        help: ArgumentHelp(
            "The log's schema: 2 (default) or 1, for readers written before pagewatch/2.",
            discussion:
                "pagewatch/2 reports pages new to PageWatch that hold nothing of the program's own apart, in zero_ranges (they read as zeros) and file_ranges (their file's contents), by reading /proc/PID/pagemap. pagewatch/1 keeps them in ranges (docs/format.md, Migrating).",
            valueName: "N"))
    var schema: String = "2"

    func validate() throws {
        if IntervalParser.parse(spinWait).map({ $0 > 1_000_000_000 }) ?? true {
            throw ValidationError("invalid --spin-wait '\(spinWait)' (expected 0 or a duration up to 1s: 50us, 200us)")
        }
        for t in track {
            do { _ = try TrackSpec.parse(t) } catch { throw ValidationError(String(describing: error)) }
        }
        if IntervalParser.parse(interval) == nil {
            throw ValidationError(
                "invalid --interval '\(interval)' (expected 0, or a number with ns, us, ms, s, m or h: 250ms, 2s)")
        }
        if LogSchema(name: schema) == nil {
            throw ValidationError("invalid --schema '\(schema)' (expected 2 or 1, or pagewatch/2 or pagewatch/1)")
        }
        if PresumeMode(rawValue: presume) == nil {
            throw ValidationError("invalid --presume '\(presume)' (expected auto, never or always)")
        }
        guard let chosen = WriteTrackingBackend(rawValue: backend) else {
            throw ValidationError("invalid --backend '\(backend)' (expected auto, ptrace or uffd)")
        }
        if chosen == .uffd, stackDepth != 0 {
            throw ValidationError(
                "--backend uffd records no writer (the kernel resolves the write fault itself): add --stack-depth 0")
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
        var c = TrackerConfiguration(
            command: command, selection: Selection(try track.map(TrackSpec.parse)),
            intervalNs: IntervalParser.parse(interval)!, sweepSignal: sweepSignal.flatMap(Signal.parse),
            followForks: followForks, stackDepth: stackDepth)
        c.spinNs = IntervalParser.parse(spinWait)!
        c.idlePolling = idlePoll
        c.verifyContents = verifyContents
        c.dumpDirectory = dump
        c.presume = PresumeMode(rawValue: presume)!
        c.schema = LogSchema(name: schema)!
        c.backend = WriteTrackingBackend(rawValue: backend)!
        // The log owns stdout: the program's output must not run into it.
        if output == "-" { c.standardOutput = STDERR_FILENO }
        return c
    }

    /// `--dump DIR` made and checked before the program starts: a directory
    /// that cannot be written is refused at once (exit 1), not at the first sweep.
    func prepareDump() {
        guard let dump else { return }
        do { try ImageWriter.prepare(root: dump) } catch {
            fail("--dump: \(error)", status: 1)
        }
    }

    func openSink() -> LogSink {
        prepareDump()
        do {
            let sink = try LogSink(path: output, keepingOld: !force)
            if !quiet {
                StatusLine.shared.start(destination: output == nil ? "a summary at the end" : sink.name)
                // On by default because faults cost about 1.6 times more without it on VMs
                // (docs/performance.md); it changes the whole machine, so a person is told.
                if idlePoll, StatusLine.shared.enabled, access("/dev/cpu_dma_latency", W_OK) == 0 {
                    writeAll(
                        STDERR_FILENO,
                        "pagewatch: idle CPUs are kept polling while tracing (faster faults on VMs); --no-idle-poll turns it off\n"
                    )
                }
            }
            return sink
        } catch {
            fail("cannot open --output '\(output ?? "")': \(error)", status: 1)
        }
    }
}
