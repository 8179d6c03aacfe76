import Glibc
import Testing
import PageWatchAddressSpace
@testable import PageWatchPtrace

/// Where the program's own userfaultfd would be asked, and the reads kept out of it.
@Suite(.serialized) struct UserfaultRangesTests {
    let pid: Int32 = 1000

    @Test func smapsVmFlagsNameTheRegisteredMappings() {
        let smaps = """
            370000000000-370000010000 rw-p 00000000 00:00 0
            Size:                 64 kB
            VmFlags: rd wr mr mw me ac um
            370000010000-370000020000 rw-p 00000000 00:00 0
            Size:                 64 kB
            VmFlags: rd wr mr mw me ac uw
            370000020000-370000030000 rw-s 00000000 00:01 12 /memfd:x (deleted)
            Size:                 64 kB
            VmFlags: rd wr sh mr mw me ms ui
            7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
            VmFlags: rd wr mr mw me gd ac
            """
        let found = UserfaultRanges.registered(inSmaps: smaps)
        #expect(
            found.map(\.range) == [
                AddressRange(0x3700_0000_0000, 0x3700_0001_0000), AddressRange(0x3700_0001_0000, 0x3700_0002_0000),
                AddressRange(0x3700_0002_0000, 0x3700_0003_0000),
            ])
        #expect(
            found.map(\.mode) == [
                UserfaultRanges.modeMissing, UserfaultRanges.modeWriteProtect, UserfaultRanges.modeMinor,
            ])
        // Write-protect mode alone (uw) never makes a read wait, but is kept apart.
        var ranges = UserfaultRanges()
        for (range, mode) in found { ranges.register(range, mode: mode, pid: pid) }
        #expect(!ranges.overlaps(RemoteAddress(0x3700_0001_0000), count: 8))
        #expect(ranges.writeProtected(of: pid) == [AddressRange(0x3700_0001_0000, 0x3700_0002_0000)])
    }

    @Test func registeredRangesComeAndGo() {
        var ranges = UserfaultRanges()
        let base: UInt64 = 0x3770_0000_0000
        let before = ranges.generation
        ranges.register(AddressRange(base, base + 0x4000), mode: UserfaultRanges.modeWriteProtect, pid: pid)
        #expect(!ranges.overlaps(RemoteAddress(base), count: 8))
        #expect(ranges.generation == before)
        #expect(ranges.writeProtected(of: pid) == [AddressRange(base, base + 0x4000)])
        ranges.register(AddressRange(base, base + 0x4000), mode: UserfaultRanges.modeMissing, pid: pid)
        #expect(ranges.generation != before)
        #expect(ranges.overlaps(RemoteAddress(base + 0x3ff8), count: 8))
        #expect(ranges.overlaps(RemoteAddress(base - 4), count: 8))  // straddles the start
        #expect(!ranges.overlaps(RemoteAddress(base - 8), count: 8))
        #expect(!ranges.overlaps(RemoteAddress(base + 0x4000), count: 8))
        ranges.forked(from: pid, child: pid - 1)
        ranges.remove(AddressRange(base, base + 0x2000), pid: pid)
        #expect(ranges.ranges(of: pid) == [AddressRange(base + 0x2000, base + 0x4000)])
        #expect(ranges.ranges(of: pid - 1) == [AddressRange(base, base + 0x4000)])
        #expect(ranges.writeProtected(of: pid) == [AddressRange(base + 0x2000, base + 0x4000)])
        #expect(ranges.writeProtected(of: pid - 1) == [AddressRange(base, base + 0x4000)])
        ranges.forget(pid: pid - 1)
        #expect(ranges.writeProtected(of: pid - 1).isEmpty)
        #expect(!ranges.overlaps(RemoteAddress(base), count: 8))
        #expect(ranges.overlaps(RemoteAddress(base + 0x2000), count: 8))
    }

    /// The path that never asks a handler reads what process_vm_readv reads,
    /// and stops at the first page it cannot read.
    @Test func readingWithoutAskingAHandlerReadsTheSame() throws {
        let size = 2 * 4096
        let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)!
        var mapped = size
        defer { munmap(p, mapped) }  // not the page unmapped below: another thread may have it by now
        let bytes = p.assumingMemoryBound(to: UInt8.self)
        for i in 0..<4096 { bytes[i] = UInt8(truncatingIfNeeded: i &* 7) }
        let at = RemoteAddress(UInt64(UInt(bitPattern: p)))
        let direct = try Ptrace.readMemory(getpid(), at + 4000, count: 96)
        let viaMem = try Ptrace.readMemoryAskingNoHandler(getpid(), at + 4000, count: 96)
        #expect(viaMem == direct)
        #expect(viaMem.count == 96)
        // The second page unmapped: a short read, then an error.
        munmap(p + 4096, 4096)
        mapped = 4096
        #expect(try Ptrace.readMemoryAskingNoHandler(getpid(), at + 4000, count: 200).count == 96)
        #expect(throws: TraceError.self) { try Ptrace.readMemoryAskingNoHandler(getpid(), at + 4096, count: 8) }
    }
}
