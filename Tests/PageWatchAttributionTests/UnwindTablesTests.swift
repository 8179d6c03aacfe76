import Glibc
import Testing
import PageWatchAddressSpace
import PageWatchPtrace
@testable import PageWatchAttribution

/// The unwinder's module table (`UnwindTables`): unwind tables found in the
/// session's parsed files, read from the tracer's own mapping of them, each
/// file opened once a session; `unmapped` drops what went.
@Suite(.serialized) struct UnwindTablesTests {
    let live = AttributionTests()

    @Test func tablesComeFromTheFilesOncePerSession() throws {
        let f = try live.launchToStop(AttributionTests.fixture("fx_callsites"), mode: "stop", signal: Signal.SIGSTOP)
        defer { _ = try? live.finish(f) }
        let images = UnwindImageCache()
        let unwinder = try Unwinder(pid: f.pid, images: images)
        let stack = unwinder.callStack(tid: f.pid, maxDepth: 64)
        let stats = unwinder.statistics
        #expect(stack.count > 6)
        // Every frame's table came from the module table, none from libunwind-ptrace.
        #expect(stats.tableLookups >= UInt64(stack.count - 1), "\(stats)")
        #expect(stats.moduleMisses == 0, "\(stats)")
        // The search tables, FDEs and CIEs were read from the files.
        #expect(stats.procInfoMemoryReads > 0 && stats.windowReads >= stats.procInfoMemoryReads, "\(stats)")
        #expect(stats.wordPeeks == 0)
        // The fixture and libc (and ld.so) each have a module with a table; each IP is in one.
        for ip in stack {
            #expect(unwinder.modules.contains { $0.range.contains(RemoteAddress(ip)) && $0.hasTable }, "\(ip)")
        }
        let loads = images.loads
        #expect(loads >= 2)

        // A second process's unwinder (as after a fork) and a change of the
        // maps reuse the parsed files: nothing opened again, same stack.
        let again = try Unwinder(pid: f.pid, images: images)
        #expect(again.callStack(tid: f.pid, maxDepth: 64) == stack)
        unwinder.mappingsChanged(maps: f.maps)
        #expect(unwinder.callStack(tid: f.pid, maxDepth: 64) == stack)
        #expect(images.loads == loads)

        // libc unmapped (as the engine reports a munmap): its modules leave
        // the table without a maps read; the file stays while `again` maps it.
        let libc = f.maps.filter { $0.path.contains("/libc.so") }
        let libcRange = AddressRange(start: libc.map(\.range.start).min()!, end: libc.map(\.range.end).max()!)
        let before = unwinder.modules.count
        unwinder.unmapped(libcRange)
        #expect(unwinder.modules.count < before)
        #expect(!unwinder.modules.contains { $0.range.overlaps(libcRange) })
        #expect(images.count == loads)
        // With both unwinders gone the session keeps no file.
        withExtendedLifetime(again) {}
        withExtendedLifetime(unwinder) {}
    }

    @Test func theSessionForgetsFilesWithTheirLastUnwinder() throws {
        let f = try live.launchToStop(AttributionTests.fixture("fx_callsites"), mode: "stop", signal: Signal.SIGSTOP)
        defer { _ = try? live.finish(f) }
        let images = UnwindImageCache()
        var first: Unwinder? = try Unwinder(pid: f.pid, images: images)
        var second: Unwinder? = try Unwinder(pid: f.pid, images: images)
        #expect(first?.callStack(tid: f.pid, maxDepth: 64).isEmpty == false)
        #expect(second?.callStack(tid: f.pid, maxDepth: 64).isEmpty == false)
        let count = images.count
        #expect(count >= 2)
        first = nil
        #expect(images.count == count)  // the second still maps them
        second = nil
        #expect(images.count == 0)
        _ = (first, second)
    }

    @Test func aFileWithoutEhFrameHdrGetsAModuleWithoutATable() throws {
        // The fixture's copy with .eh_frame_hdr's program header turned into
        // PT_NULL: no table, so libunwind follows frame pointers (fx_callsites keeps them).
        let directory = try TemporaryDirectory()
        let copy = directory.path + "/fx_callsites"
        var bytes = try readFile(AttributionTests.fixture("fx_callsites"))
        let phoff = Int(load(bytes, 0x20, 8)), phentsize = Int(load(bytes, 0x36, 2)), phnum = Int(load(bytes, 0x38, 2))
        var patched = false
        for i in 0..<phnum where load(bytes, phoff + i * phentsize, 4) == 0x6474_e550 {
            for k in 0..<4 { bytes[phoff + i * phentsize + k] = 0 }
            patched = true
        }
        #expect(patched)
        let fd = open(copy, O_WRONLY | O_CREAT | O_TRUNC, 0o755)
        #expect(fd >= 0)
        #expect(write(fd, bytes, bytes.count) == bytes.count)
        close(fd)

        let f = try live.launchToStop(copy, mode: "stop", signal: Signal.SIGSTOP)
        defer { _ = try? live.finish(f) }
        let unwinder = try Unwinder(pid: f.pid)
        let stack = unwinder.callStack(tid: f.pid, maxDepth: 64)
        let program = try #require(f.maps.first { $0.path == copy && $0.protection.contains(.execute) })
        #expect(unwinder.modules.contains { $0.range.overlaps(program.range) && !$0.hasTable })
        // Through frame pointers: the chain is still there, by name.
        let frames = Symbolizer().frames(callStack: stack, in: f.maps)
        let names = frames.compactMap(\.function)
        for name in AttributionTests.chain {
            #expect(names.contains(name), "\(frames.map(\.display))")
        }
    }

    /// A stack page the program made PROT_NONE (here: injected mprotect):
    /// process_vm_readv refuses it, /proc/PID/mem reads it, the stack is the same.
    @Test func aProtNonePageIsReadThroughProcMem() throws {
        let f = try live.launchToStop(AttributionTests.fixture("fx_callsites"), mode: "stop", signal: Signal.SIGSTOP)
        defer { _ = try? live.finish(f) }
        let expected = try Unwinder(pid: f.pid).callStack(tid: f.pid, maxDepth: 64)
        #expect(expected.count > 6)
        let sp = HostArchitecture.stackPointer(try HostArchitecture.readRegisters(tid: f.pid))
        let page = AddressRange(start: Page.floor(sp), end: Page.floor(sp) + Page.size)
        let injector = try RemoteSyscall.bootstrap(in: f.pid).0
        _ = try injector.mprotect(page, [], in: f.pid)
        let unwinder = try Unwinder(pid: f.pid)
        let stack = unwinder.callStack(tid: f.pid, maxDepth: 64)
        _ = try injector.mprotect(page, [.read, .write], in: f.pid)
        #expect(stack == expected)
        #expect(unwinder.statistics.forcedPageReads > 0, "\(unwinder.statistics)")
        #expect(unwinder.statistics.wordPeeks == 0, "\(unwinder.statistics)")
    }

    func readFile(_ path: String) throws -> [UInt8] {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw TestFailure("open \(path): \(errno)") }
        defer { close(fd) }
        var result: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while case let n = read(fd, &buffer, buffer.count), n > 0 { result += buffer[0..<n] }
        return result
    }

    func load(_ bytes: [UInt8], _ at: Int, _ n: Int) -> UInt64 {
        (0..<n).reduce(0) { $0 | UInt64(bytes[at + $1]) << (8 * $1) }
    }
}
