import CUnwind
import Foundation
import Glibc
import Testing
import PageWatchAddressSpace
import PageWatchLog
import PageWatchPtrace
@testable import PageWatchAttribution

/// Live: fx_callsites runs under ptrace to a stop inside libc (raise(SIGSTOP),
/// or a SIGSEGV in memset) with the chain main → level_one → level_two →
/// writer_leaf beneath; the tests unwind and symbolize it there and compare
/// with the call sites the fixture printed ("site NAME LINE").
@Suite(.serialized) struct AttributionTests {
    static let chain = ["writer_leaf", "level_two", "level_one", "main"]

    /// Where SwiftPM put the fixtures: beside the test bundle.
    static func fixture(_ name: String) -> String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, 4095)
        let exe = String(decoding: buffer[0..<max(0, n)].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return String(exe[...(exe.lastIndex(of: "/") ?? exe.startIndex)]) + name
    }

    /// A traced fx_callsites held at the signal-delivery stop of `signal`.
    struct StoppedFixture {
        var pid: Int32
        var signal: Int32
        var output: Int32
        var maps: [Mapping]
    }

    func launchToStop(_ program: String, mode: String, signal: Int32) throws -> StoppedFixture {
        var output: [Int32] = [0, 0]
        #expect(pipe(&output) == 0)
        let pid = try Launcher.launch(
            [program, mode], options: [.exitKill, .traceExec],
            standardOutput: output[1], emptySignalMask: true)
        close(output[1])
        try Ptrace.cont(pid)
        while true {
            guard let e = try Wait.next(pid) else { continue }
            switch e {
            case .signalDelivery(_, let s) where s == signal:
                return StoppedFixture(pid: pid, signal: signal, output: output[0], maps: try ProcFS.maps(of: pid))
            case .signalDelivery(_, let s): try Ptrace.cont(pid, signal: s)
            case .exited, .killed: throw TestFailure("fx_callsites ended before \(Signal.name(signal)): \(e)")
            default: try Ptrace.cont(pid)
            }
        }
    }

    /// Lets the fixture finish (the SIGSTOP is suppressed, a SIGSEGV delivered
    /// to its handler); returns its exit status and its "site" lines, by name.
    func finish(_ f: StoppedFixture) throws -> (status: Int32, sites: [String: Int]) {
        try Ptrace.cont(f.pid, signal: f.signal == Signal.SIGSTOP ? 0 : f.signal)
        var status: Int32 = -1
        while status < 0 {
            guard let e = try Wait.next(f.pid) else { continue }
            switch e {
            case .exited(_, let code): status = code
            case .killed(_, let s, _): status = 128 + s
            case .signalDelivery(_, let s): try Ptrace.cont(f.pid, signal: s)
            case .groupStop: try Ptrace.listen(f.pid)
            default: try Ptrace.cont(f.pid)
            }
        }
        var text: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while case let n = read(f.output, &buffer, buffer.count), n > 0 { text += buffer[0..<n] }
        close(f.output)
        var sites: [String: Int] = [:]
        for line in String(decoding: text, as: UTF8.self).split(separator: "\n") {
            let fields = line.split(separator: " ")
            if fields.count == 3, fields[0] == "site", let n = Int(fields[2]) { sites[String(fields[1])] = n }
        }
        #expect(text.suffix(3) == Array("ok\n".utf8))
        return (status, sites)
    }

    /// The index of `writer_leaf` and a check that the chain follows it in order.
    func expectChain(_ frames: [Frame], sites: [String: Int], sourceInfo: Bool = true) -> Int? {
        guard let leaf = frames.firstIndex(where: { $0.function == "writer_leaf" }) else {
            Issue.record("no writer_leaf frame in \(frames.map(\.display))")
            return nil
        }
        let names = frames[leaf...].prefix(Self.chain.count).map(\.function)
        #expect(names == Self.chain, "\(frames.map(\.display))")
        if sourceInfo {
            for (name, frame) in zip(Self.chain, frames[leaf...]) {
                #expect(frame.file?.hasSuffix("/fx_callsites.c") == true, "\(name): \(frame)")
                #expect(frame.line != nil && frame.line == sites[name], "\(name): \(frame), site \(sites[name] ?? -1)")
            }
        }
        return leaf
    }

    @Test func namesTheCallChainWithFilesAndLinesAtARaise() throws {
        let f = try launchToStop(Self.fixture("fx_callsites"), mode: "stop", signal: Signal.SIGSTOP)
        let unwinder = try Unwinder(pid: f.pid)
        let ips = unwinder.callStack(tid: f.pid, maxDepth: 64)
        let registers = try HostArchitecture.readRegisters(tid: f.pid)
        #expect(ips.first == HostArchitecture.instructionPointer(registers).value)
        let frames = Symbolizer().frames(callStack: ips, in: f.maps)
        let (status, sites) = try finish(f)
        for frame in frames {
            print("attribution: \(frame.display) \(frame.file.map { "at \($0):\(frame.line ?? 0)" } ?? "")")
        }
        #expect(status == 0)
        #expect(Set(sites.keys) == Set(Self.chain))
        guard let leaf = expectChain(frames, sites: sites) else { return }

        // Above writer_leaf: libc, stopped in raise's kill syscall; named from
        // libc's symbols (its separate debug file when installed, else .dynsym).
        #expect(leaf > 0)
        for frame in frames[..<leaf] {
            #expect(frame.module?.contains("/libc.so") == true, "\(frame)")
        }
        #expect(
            frames[..<leaf].contains { $0.function.map { $0.contains("raise") || $0.contains("kill") } == true },
            "\(frames.map(\.display))")
        // Beneath main: libc's start code, and the stack ends there.
        #expect(frames.count > leaf + 4)
        #expect(frames.count < 64)
    }

    @Test func aStrippedCopyGivesModuleAndOffset() throws {
        let original = Self.fixture("fx_callsites")
        let directory = try TemporaryDirectory()
        let copy = directory.path + "/fx_callsites"
        try run(["/bin/cp", original, copy])
        try run(["strip", copy])

        func frames(of program: String) throws -> [Frame] {
            let f = try launchToStop(program, mode: "stop", signal: Signal.SIGSTOP)
            let ips = try Unwinder(pid: f.pid).callStack(tid: f.pid, maxDepth: 64)
            let frames = Symbolizer().frames(callStack: ips, in: f.maps)
            #expect(try finish(f).status == 0)
            return frames
        }
        let named = try frames(of: original)
        let stripped = try frames(of: copy)
        guard let leaf = named.firstIndex(where: { $0.function == "writer_leaf" }) else {
            Issue.record("no writer_leaf frame in \(named.map(\.display))")
            return
        }
        #expect(stripped.count == named.count, "\(stripped.map(\.display))")
        // The chain's frames: at the same offsets (strip keeps the loaded
        // layout), none named, each shown as module+offset.
        for (frame, twin) in zip(stripped[leaf...], named[leaf...]).prefix(Self.chain.count) {
            #expect(frame.module == copy && frame.offset == twin.offset, "\(frame) vs \(twin)")
            #expect(frame.function == nil && frame.file == nil && frame.line == nil)
            #expect(frame.display == "\(copy)+0x\(String(frame.offset ?? 0, radix: 16))")
        }
        // libc is still named.
        #expect(stripped.first?.function != nil && stripped.first?.function == named.first?.function)
    }

    @Test func aFaultInMemsetShowsLibcThenItsCaller() throws {
        let f = try launchToStop(Self.fixture("fx_callsites"), mode: "memset", signal: Signal.SIGSEGV)
        let ips = try Unwinder(pid: f.pid).callStack(tid: f.pid, maxDepth: 64)
        let frames = Symbolizer().frames(callStack: ips, in: f.maps)
        let (status, sites) = try finish(f)
        #expect(status == 0)
        let libc = try #require(frames.first?.module)
        #expect(libc.contains("/libc.so"), "\(frames.map(\.display))")
        // The memset variant that ran (__memset_avx2_unaligned_erms, ...) is a
        // local symbol: named only with libc's debug file (libc6-dbg), else libc+offset.
        if let id = ElfFile(path: libc)?.buildID,
            access("/usr/lib/debug/.build-id/\(id.prefix(2))/\(id.dropFirst(2)).debug", R_OK) == 0
        {
            #expect(frames.first?.function?.contains("memset") == true, "\(frames.map(\.display))")
        } else {
            #expect(frames.first?.function == nil || frames.first?.function?.contains("memset") == true)
        }
        #expect(expectChain(frames, sites: sites) == 1)
    }

    @Test func unwindingTwiceGivesTheSameStackFromTheCache() throws {
        let f = try launchToStop(Self.fixture("fx_callsites"), mode: "stop", signal: Signal.SIGSTOP)
        defer { _ = try? finish(f) }
        let unwinder = try Unwinder(pid: f.pid)
        let first = unwinder.callStack(tid: f.pid, maxDepth: 64)
        let afterFirst = unwinder.statistics
        let second = unwinder.callStack(tid: f.pid, maxDepth: 64)
        let afterSecond = unwinder.statistics
        #expect(first.count > 6)
        #expect(first == second)

        // The delegated find_proc_info reads through the cache, the cache
        // absorbs most word reads, and nothing fell back to PTRACE_PEEKDATA.
        #expect(afterFirst.procInfoMemoryReads > 0)
        #expect(afterFirst.wordPeeks == 0)
        #expect(afterFirst.pageFills * 4 < afterFirst.memoryReads, "\(afterFirst)")
        #expect(afterFirst.registerReads > 0)
        // Second time: unwind info comes from libunwind's cache, and only stack
        // pages are read again, in one process_vm_readv (the pages above the
        // first missed one are read with it).
        let secondFills = afterSecond.pageFills - afterFirst.pageFills
        #expect(afterSecond.procInfoMemoryReads == afterFirst.procInfoMemoryReads, "\(afterSecond)")
        #expect(secondFills > 0 && secondFills <= 4, "\(afterSecond)")
        #expect(afterSecond.pageReads - afterFirst.pageReads == 1, "\(afterSecond)")

        // The stock accessors (one PTRACE_PEEKDATA per word) find the same stack.
        let thread = try #require(cu_thread_create(f.pid))
        defer { cu_thread_destroy(thread) }
        var stock = [UInt64](repeating: 0, count: 64)
        let n = cu_stock_call_stack(thread, &stock, 64)
        #expect(Array(stock.prefix(Int(max(0, n)))) == first)

        // After a flush the stack is the same again.
        unwinder.mappingsChanged()
        #expect(unwinder.callStack(tid: f.pid, maxDepth: 64) == first)
    }

    /// libunwind's two sigprocmask calls per step (Debian builds it with
    /// --enable-block-signals) reach cunwind's definition, a no-op while a
    /// call stack is taken; anywhere else it must be glibc's, and an unwind
    /// must leave the thread's mask as it was.
    @Test func sigprocmaskIsOursForLibunwindAndGlibcsOtherwise() throws {
        // What a library's undefined reference resolves to (RTLD_DEFAULT: the
        // global scope, the executable first), against libc's own.
        let found = try #require(dlsym(nil, "sigprocmask"))
        let libc = try #require(dlopen("libc.so.6", RTLD_NOLOAD | RTLD_NOW))
        defer { dlclose(libc) }
        #expect(found != dlsym(libc, "sigprocmask"))

        var usr1 = sigset_t(), old = sigset_t(), now = sigset_t()
        sigemptyset(&usr1)
        sigaddset(&usr1, SIGUSR1)
        #expect(sigprocmask(SIG_BLOCK, &usr1, &old) == 0)
        defer { sigprocmask(SIG_SETMASK, &old, nil) }
        pthread_sigmask(SIG_SETMASK, nil, &now)
        #expect(sigismember(&now, SIGUSR1) == 1)

        let f = try launchToStop(Self.fixture("fx_callsites"), mode: "stop", signal: Signal.SIGSTOP)
        defer { _ = try? finish(f) }
        #expect(try Unwinder(pid: f.pid).callStack(tid: f.pid, maxDepth: 64).count > 6)
        var after = sigset_t()
        pthread_sigmask(SIG_SETMASK, nil, &after)
        #expect((1..<32).allSatisfy { sigismember(&after, $0) == sigismember(&now, $0) })
    }

    @Test func depthLimitsAndGoneThreads() throws {
        let f = try launchToStop(Self.fixture("fx_callsites"), mode: "stop", signal: Signal.SIGSTOP)
        let unwinder = try Unwinder(pid: f.pid)
        let full = unwinder.callStack(tid: f.pid, maxDepth: 64)
        #expect(unwinder.callStack(tid: f.pid, maxDepth: 0) == [])
        #expect(unwinder.callStack(tid: f.pid, maxDepth: -1) == [])
        #expect(unwinder.callStack(tid: f.pid, maxDepth: 1) == Array(full.prefix(1)))
        #expect(unwinder.callStack(tid: f.pid, maxDepth: 3) == Array(full.prefix(3)))
        // A thread that is not ours (not traced by us): no stack, no crash.
        #expect(unwinder.callStack(tid: getpid(), maxDepth: 16) == [])
        unwinder.threadGone(tid: getpid())
        _ = try finish(f)
        // The process has exited and been reaped.
        #expect(unwinder.callStack(tid: f.pid, maxDepth: 16) == [])
        unwinder.threadGone(tid: f.pid)
        unwinder.mappingsChanged()
        #expect(unwinder.callStack(tid: f.pid, maxDepth: 16) == [])
    }

    /// Printed, not asserted: timings depend on the machine and its load.
    @Test func measureMicrosecondsPerUnwind() throws {
        let f = try launchToStop(Self.fixture("fx_callsites"), mode: "deep", signal: Signal.SIGSTOP)
        defer { _ = try? finish(f) }
        let unwinder = try Unwinder(pid: f.pid)
        var start = monotonicMicroseconds()
        let depth = unwinder.callStack(tid: f.pid, maxDepth: 16).count
        let first = monotonicMicroseconds() - start
        #expect(depth == 16)
        let cold = unwinder.statistics
        let rounds = 2000
        start = monotonicMicroseconds()
        for _ in 0..<rounds { _ = unwinder.callStack(tid: f.pid, maxDepth: 16) }
        let cached = (monotonicMicroseconds() - start) / Double(rounds)

        let warm = unwinder.statistics
        // After mappingsChanged: maps read again, modules looked up again by libunwind-ptrace.
        unwinder.mappingsChanged()
        start = monotonicMicroseconds()
        _ = unwinder.callStack(tid: f.pid, maxDepth: 16)
        let flushed = monotonicMicroseconds() - start
        // The same with the maps handed over, as the engine can (it reads them after a change anyway).
        unwinder.mappingsChanged(maps: f.maps)
        start = monotonicMicroseconds()
        _ = unwinder.callStack(tid: f.pid, maxDepth: 16)
        let flushedWithMaps = monotonicMicroseconds() - start

        let thread = try #require(cu_thread_create(f.pid))
        defer { cu_thread_destroy(thread) }
        var ips = [UInt64](repeating: 0, count: 16)
        let stockRounds = 50
        start = monotonicMicroseconds()
        for _ in 0..<stockRounds { _ = cu_stock_call_stack(thread, &ips, 16) }
        let stock = (monotonicMicroseconds() - start) / Double(stockRounds)
        print(
            "attribution: \(depth)-frame unwind: \(format(first)) µs the first time,",
            "\(format(cached)) µs with the page cache (warm), \(format(flushed)) µs after mappingsChanged() (\(format(flushedWithMaps)) µs given the maps),",
            "\(format(stock)) µs with libunwind-ptrace's stock accessors;",
            "first unwind \(cold.memoryReads) word reads in \(cold.pageFills) page reads,",
            "then per unwind \((warm.memoryReads - cold.memoryReads) / UInt64(rounds)) word reads in",
            "\(format(Double(warm.pageFills - cold.pageFills) / Double(rounds))) page reads")
    }

    @Test func demanglesSwiftAndCxxNames() {
        #expect(Demangler.demangle("$sSi") == "Swift.Int")
        #expect(Demangler.demangle("$s4main3fooyyF") == "main.foo() -> ()")
        #expect(Demangler.demangle("_$s4main3fooyyF") == "main.foo() -> ()")
        #expect(Demangler.demangle("_ZN9pagewatch5Probe4fireEi") == "pagewatch::Probe::fire(int)")
        #expect(Demangler.demangle("writer_leaf") == "writer_leaf")
        #expect(Demangler.demangle("_Znot-a-name") == "_Znot-a-name")
    }

    @Test func framesWithoutSymbolsDisplayModuleOffsetOrAddress() {
        #expect(Frame(ip: 0x1234, module: "/bin/x", offset: 0x34, function: "f").display == "f")
        #expect(Frame(ip: 0x1234, module: "/bin/x", offset: 0x34).display == "/bin/x+0x34")
        #expect(Frame(ip: 0x1234).display == "0x1234")
        // Anonymous memory has no module; an address outside every mapping neither.
        let maps = [
            Mapping(
                range: AddressRange(0x1000, 0x3000), protection: [.read, .execute], isPrivate: true,
                offset: 0x5000, device: "08:01", inode: 7, path: "/nonexistent/lib.so"),
            Mapping(range: AddressRange(0x8000, 0x9000), protection: [.read, .execute], isPrivate: true),
        ]
        let symbolizer = Symbolizer()
        #expect(
            symbolizer.frame(ip: 0x1010, in: maps) == Frame(ip: 0x1010, module: "/nonexistent/lib.so", offset: 0x5010))
        #expect(symbolizer.frame(ip: 0x8010, in: maps) == Frame(ip: 0x8010))
        #expect(symbolizer.frame(ip: 0x4000, in: maps) == Frame(ip: 0x4000))
    }

    /// Code in anonymous executable memory is named by the process's perf
    /// map, read again when it grew; other anonymous memory is not looked up.
    @Test func jitCodeIsNamedByThePerfMapAsItGrows() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("symbolizer-perfmap-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let path = dir.appendingPathComponent("perf-77.map").path
        try Data("8000 20 JS:*fill /w.js:1:1\n".utf8).write(to: URL(fileURLWithPath: path))
        let maps = [
            Mapping(range: AddressRange(0x8000, 0x9000), protection: [.read, .execute], isPrivate: true),
            Mapping(range: AddressRange(0xa000, 0xb000), protection: [.read, .write], isPrivate: true),
        ]
        let symbolizer = Symbolizer(debugRoot: "/nonexistent", perfMapPath: { "\(dir.path)/perf-\($0).map" })
        #expect(
            symbolizer.frame(ip: 0x8010, in: maps, pid: 77)
                == Frame(ip: 0x8010, function: "JS:*fill /w.js:1:1", jit: true))
        // A return address just past the function is its call's.
        #expect(symbolizer.frame(ip: 0x8020, in: maps, isReturnAddress: true, pid: 77).function == "JS:*fill /w.js:1:1")
        #expect(symbolizer.frame(ip: 0x8020, in: maps, pid: 77) == Frame(ip: 0x8020))
        #expect(symbolizer.frame(ip: 0x8010, in: maps, pid: 78) == Frame(ip: 0x8010))
        #expect(symbolizer.frame(ip: 0xa010, in: maps, pid: 77) == Frame(ip: 0xa010))
        // Compiled since: the next lookup of it reads the map's new tail.
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        try h.seekToEnd()
        try h.write(contentsOf: Data("8100 40 void W.fill(long[], long)\n".utf8))
        try h.close()
        usleep(20_000)  // past the millisecond between two reads (and the coarse clock's tick)
        #expect(
            symbolizer.frame(ip: 0x8120, in: maps, pid: 77)
                == Frame(ip: 0x8120, function: "void W.fill(long[], long)", jit: true))
        // Without a pid (a report's old caller), as before.
        #expect(symbolizer.frame(ip: 0x8010, in: maps) == Frame(ip: 0x8010))
    }

    @Test func functionTableLooksUpByContainment() {
        let table = FunctionTable(
            symbols: [
                FunctionSymbol(address: 0x100, size: 0x10, name: "alias_local", isGlobal: false),
                FunctionSymbol(address: 0x100, size: 0x10, name: "global", isGlobal: true),
                FunctionSymbol(address: 0x200, size: 0, name: "marker", isGlobal: true),
                FunctionSymbol(address: 0x300, size: 0x100, name: "outer", isGlobal: true),
                FunctionSymbol(address: 0x340, size: 0x10, name: "inner", isGlobal: false),
            ].sorted { ($0.address, $0.isGlobal ? 0 : 1) < ($1.address, $1.isGlobal ? 0 : 1) })
        #expect(table.function(containing: 0xff)?.name == nil)
        #expect(table.function(containing: 0x100)?.name == "global")
        #expect(table.function(containing: 0x10f)?.name == "global")
        #expect(table.function(containing: 0x110)?.name == nil)
        #expect(table.function(containing: 0x200)?.name == "marker")
        #expect(table.function(containing: 0x201)?.name == nil)
        #expect(table.function(containing: 0x345)?.name == "inner")
        #expect(table.function(containing: 0x350)?.name == "outer")
        #expect(table.function(containing: 0x400)?.name == nil)
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// A fresh directory under /tmp, removed with its files when released.
final class TemporaryDirectory {
    let path: String
    init() throws {
        var template = Array("/tmp/pagewatch-attribution-XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw TestFailure("mkdtemp: \(errno)") }
        path = String(cString: p)
    }
    deinit { try? run(["/bin/rm", "-rf", path]) }
}

/// Runs a command to completion; throws unless it exits 0.
func run(_ command: [String]) throws {
    var pid: pid_t = 0
    var argv: [UnsafeMutablePointer<CChar>?] = command.map { strdup($0) } + [nil]
    defer { for p in argv { free(p) } }
    let r = posix_spawnp(&pid, command[0], nil, nil, &argv, environ)
    guard r == 0 else { throw TestFailure("cannot run \(command[0]): errno \(r)") }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    guard status == 0 else { throw TestFailure("\(command) failed with status \(status)") }
}

func monotonicMicroseconds() -> Double {
    var t = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t)
    return Double(t.tv_sec) * 1e6 + Double(t.tv_nsec) / 1e3
}

func format(_ value: Double) -> String {
    let tenths = (value * 10).rounded()
    return "\(Int(tenths) / 10).\(Int(tenths) % 10)"
}
