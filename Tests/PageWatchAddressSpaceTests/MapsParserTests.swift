import Foundation
import Testing
@testable import PageWatchAddressSpace

@Suite struct MapsParserTests {
    @Test func parsesAnonymousFileAndPseudoPaths() throws {
        let text = """
            55d0c3a00000-55d0c3a02000 r--p 00000000 fe:01 1234                       /usr/bin/cat
            55d0c3a02000-55d0c3a03000 rw-p 00002000 fe:01 1234                       /usr/bin/cat
            55d0c4000000-55d0c4021000 rw-p 00000000 00:00 0                          [heap]
            7f0000000000-7f0000010000 rw-p 00000000 00:00 0 
            7f0000010000-7f0000011000 rw-s 00000000 00:05 77                         /dev/zero (deleted)
            7f0000020000-7f0000022000 rw-p 00000000 00:00 0                          [anon:my region]
            7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
            7ffd00100000-7ffd00102000 r-xp 00000000 00:00 0                          [vdso]
            ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
            """
        let maps = try MapsParser.parse(text)
        #expect(maps.count == 9)
        #expect(maps[0].path == "/usr/bin/cat")
        #expect(maps[0].protection == [.read])
        #expect(maps[1].protection == [.read, .write])
        #expect(maps[1].offset == 0x2000)
        #expect(maps[1].isFileBacked)
        #expect(maps[2].isHeap && maps[2].isAnonymous)
        #expect(maps[3].path == "" && maps[3].isAnonymous)
        #expect(maps[4].isPrivate == false)
        #expect(maps[4].isDeleted && maps[4].path == "/dev/zero")
        #expect(maps[5].path == "[anon:my region]" && maps[5].isAnonymous)
        #expect(maps[6].isMainStack)
        #expect(maps[7].isSpecialKernelMapping && !maps[7].isAnonymous)
        #expect(maps[8].range == AddressRange(0xffffffffff600000, 0xffffffffff601000))
    }

    @Test func keepsSpacesInPaths() throws {
        let m = MapsParser.parseLine("7f0000000000-7f0000001000 rw-p 00001000 fe:01 99    /tmp/a dir/my file (deleted)")
        #expect(m?.path == "/tmp/a dir/my file")
        #expect(m?.isDeleted == true)
        #expect(m?.inode == 99)
    }

    @Test func rejectsMalformedLines() {
        #expect(throws: MapsParseError.self) { try MapsParser.parse("not a maps line\n") }
        #expect(MapsParser.parseLine("1000-0fff rw-p 0 00:00 0") == nil)
        #expect(MapsParser.parseLine("1000-2000 rwz 0 00:00 0") == nil)
        // Digits past 64 bits, a missing field, a sharing flag other than p or s, a decimal inode in hex.
        #expect(MapsParser.parseLine("10000000000000000-10000000000001000 rw-p 0 00:00 0") == nil)
        #expect(MapsParser.parseLine("1000-2000 rw-p 0 00:00") == nil)
        #expect(MapsParser.parseLine("1000-2000 rw-x 0 00:00 0") == nil)
        #expect(MapsParser.parseLine("1000-2000 rw-p 0 00:00 1f") == nil)
        #expect(MapsParser.parseLine("1000 rw-p 0 00:00 0") == nil)
    }

    /// Every field, as the kernel prints it, into the `Mapping` the engine expects.
    @Test func readsEveryField() throws {
        let m = try #require(
            MapsParser.parseLine("7f3a1c000000-7f3a1c021000 r-xs 0001a000 fd:01 4294967301          /usr/lib/x.so"))
        #expect(m.range == AddressRange(0x7f3a_1c00_0000, 0x7f3a_1c02_1000))
        #expect(m.protection == [.read, .execute])
        #expect(!m.isPrivate)
        #expect(m.offset == 0x1a000)
        #expect(m.device == "fd:01")
        #expect(m.inode == 4_294_967_301)
        #expect(m.path == "/usr/lib/x.so")
        #expect(!m.isDeleted)
        let anon = try #require(MapsParser.parseLine("ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0"))
        #expect(anon.path.isEmpty && anon.protection == [.execute] && anon.isPrivate)
        // Several lines, blank ones skipped; a bad one is named by its number.
        #expect(try MapsParser.parse("1000-2000 rw-p 0 00:00 0\n\n3000-4000 r--p 0 00:00 0 [heap]\n").count == 2)
        #expect(throws: MapsParseError.malformedLine(number: 2, line: "3000-4000")) {
            try MapsParser.parse("1000-2000 rw-p 0 00:00 0\n3000-4000\n")
        }
    }

    @Test func readsThisProcessMaps() throws {
        // procfs reports size 0: read to the end rather than by size.
        let handle = try #require(FileHandle(forReadingAtPath: "/proc/self/maps"))
        let text = String(decoding: handle.readDataToEndOfFile(), as: UTF8.self)
        let maps = try MapsParser.parse(text)
        #expect(maps.contains { $0.isMainStack })
        #expect(maps.allSatisfy { Page.isAligned($0.range.start) && Page.isAligned($0.range.end) })
    }
}
