import Foundation
import Testing

@testable import PageWatchReport

/// The pieces of the pprof writer that go tool pprof's test does not reach.
@Suite struct PprofTests {
    /// Stored deflate blocks hold 65,535 bytes at most: a larger profile
    /// spans several, and gzip itself reads it back.
    @Test func gzipOfSeveralBlocksIsReadByGzip() throws {
        let data = (0..<200_000).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 9) }
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("pprof-\(UUID().uuidString).gz").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        #expect(FileManager.default.createFile(atPath: path, contents: Data(Gzip.stored(data))))
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/gzip")
        p.arguments = ["-dc", path]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let back = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        #expect(p.terminationStatus == 0)
        #expect(back == Data(data))
        #expect(Gzip.stored([]).count == 10 + 5 + 8)  // header, one empty final block, trailer
    }

    @Test func varintsAreLittleEndianBase128() {
        var w = ProtoWriter()
        w.varint(1, 300)
        #expect(w.bytes == [0x08, 0xac, 0x02])
        var p = ProtoWriter()
        p.packed(2, [1, 150])
        #expect(p.bytes == [0x12, 0x03, 0x01, 0x96, 0x01])
    }
}
