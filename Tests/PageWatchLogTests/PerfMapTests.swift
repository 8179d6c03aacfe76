import Foundation
import Testing
@testable import PageWatchLog

@Suite struct PerfMapTests {
    static func temporaryMap(_ name: String) -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("perfmap-\(getpid())")
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let path = dir.appendingPathComponent(name).path
        try? FileManager.default.removeItem(atPath: path)
        return path
    }

    static func append(_ text: String, to path: String) throws {
        if !FileManager.default.fileExists(atPath: path) { FileManager.default.createFile(atPath: path, contents: nil) }
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        try h.seekToEnd()
        try h.write(contentsOf: Data(text.utf8))
        try h.close()
    }

    @Test func parsesLinesAsPerfDoes() {
        // node and jcmd write bare hex, OpenJDK's DumpPerfMapAtExit `0x` and leading zeros.
        #expect(
            PerfMap.entry(ArraySlice("7fc5dc005b80 2c4 JS:*fill /tmp/w.js:1:19".utf8))
                == PerfMap.Entry(start: 0x7fc5_dc00_5b80, size: 0x2c4, name: "JS:*fill /tmp/w.js:1:19"))
        #expect(
            PerfMap.entry(ArraySlice("0x00007fe824ec7620 0x00000000000000f8 void W.fill(long[], long)".utf8))
                == PerfMap.Entry(start: 0x7fe8_24ec_7620, size: 0xf8, name: "void W.fill(long[], long)"))
        #expect(PerfMap.entry(ArraySlice("1000 10 py::f:/x.py\r".utf8))?.name == "py::f:/x.py")
        // Not a line perf would take: skipped.
        for bad in ["", "1000", "1000 10", "1000 10 ", "zz 10 f", "1000 0 empty", "10000000000000000 1 f", "1000 g f"] {
            #expect(PerfMap.entry(ArraySlice(bad.utf8)) == nil, "\(bad)")
        }
    }

    @Test func aLaterEntryWinsWhereCodeWasReused() throws {
        let path = Self.temporaryMap("reuse.map")
        try Self.append("1000 100 old\n2000 10 other\n1080 40 new\n3000 1000 big\n", to: path)
        let map = PerfMap(path: path)
        #expect(map.name(at: 0x1000) == nil)  // not read yet
        #expect(map.refresh())
        #expect(map.name(at: 0x1000) == "old")
        #expect(map.name(at: 0x107f) == "old")
        #expect(map.name(at: 0x1080) == "new")
        #expect(map.name(at: 0x10bf) == "new")
        #expect(map.name(at: 0x10c0) == "old")
        #expect(map.name(at: 0x1100) == nil)
        #expect(map.name(at: 0x200f) == "other")
        #expect(map.name(at: 0x2010) == nil)
        #expect(map.name(at: 0x3fff) == "big")
        #expect(map.name(at: 0xfff) == nil)
    }

    @Test func readsOnlyWhatWasAppendedAndWholeLines() throws {
        let path = Self.temporaryMap("grow.map")
        #expect(!PerfMap(path: path).refresh())  // no file yet
        try Self.append("1000 10 first\n2000 1", to: path)
        let map = PerfMap(path: path)
        #expect(map.refresh())
        #expect(map.reads == 1)
        #expect(map.entries.map(\.name) == ["first"])
        // The line being written is left for later: its size may still grow.
        #expect(map.parsedBytes == UInt64("1000 10 first\n".utf8.count))
        #expect(map.name(at: 0x2000) == nil)
        // Unchanged: no read.
        #expect(!map.refresh())
        #expect(map.reads == 1)
        try Self.append("0 second\n3000 8 third\n", to: path)
        #expect(map.refresh())
        #expect(map.reads == 2)
        #expect(map.entries.map(\.name) == ["first", "second", "third"])
        #expect(map.name(at: 0x200f) == "second")
        #expect(map.name(at: 0x3007) == "third")
    }

    @Test func looksAtTheFileAtMostOnceAMillisecondWhenAskedToo() throws {
        let path = Self.temporaryMap("due.map")
        try Self.append("1000 10 first\n", to: path)
        let map = PerfMap(path: path)
        #expect(map.refreshIfDue(intervalNs: 1_000_000_000))
        try Self.append("2000 10 second\n", to: path)
        #expect(!map.refreshIfDue(intervalNs: 1_000_000_000))
        #expect(map.entries.map(\.name) == ["first"])
        usleep(20_000)
        #expect(map.refreshIfDue(intervalNs: 1_000_000))
        #expect(map.entries.map(\.name) == ["first", "second"])
    }

    @Test func readsAReplacedOrShortenedFileAnew() throws {
        let path = Self.temporaryMap("replace.map")
        try Self.append("1000 10 first\n2000 10 second\n", to: path)
        let map = PerfMap(path: path)
        #expect(map.refresh())
        // A process with the pid used again writes its own map: shorter.
        try FileManager.default.removeItem(atPath: path)
        try Self.append("5000 10 fresh\n", to: path)
        #expect(map.refresh())
        #expect(map.entries.map(\.name) == ["fresh"])
        #expect(map.name(at: 0x1000) == nil)
        #expect(map.name(at: 0x5000) == "fresh")
    }
}
