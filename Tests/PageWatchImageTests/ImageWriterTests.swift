import Foundation
import Testing
import PageWatchAddressSpace
@testable import PageWatchImage

/// ImageWriter and ImageDirectory on made-up memory: what is written is
/// what is read back, at each sweep, through a mapped pages file and
/// through a buffer alike.
@Suite struct ImageWriterTests {
    static let base: UInt64 = 0x5000_0000
    static func page(_ n: UInt64) -> AddressRange { AddressRange(base + n * 4096, base + (n + 1) * 4096) }
    static func pages(_ a: UInt64, _ b: UInt64) -> AddressRange { AddressRange(base + a * 4096, base + b * 4096) }

    /// The made-up memory: page n filled with byte n + 16 × version.
    static func contents(_ range: AddressRange, version: UInt8) -> [UInt8] {
        stride(from: range.start.value, to: range.end.value, by: 4096).flatMap { a in
            [UInt8](repeating: UInt8((a - base) / 4096) &+ 16 &* version, count: 4096)
        }
    }

    func writeImage() throws -> String {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("image-\(UUID().uuidString)").path
        try ImageWriter.prepare(root: root)
        let writer = try ImageWriter(
            root: root, pid: 42, manifest: ImageManifest(pid: 42, pageSize: 4096, command: ["p"], pagewatchVersion: "t")
        )
        var version: UInt8 = 1
        let read = { (range: AddressRange, into: UnsafeMutableRawBufferPointer) -> Bool in
            // Page 8 is unmapped while sweep 1 reads it.
            if range.overlaps(Self.page(8)) && version == 1 { return false }
            Self.contents(range, version: version).withUnsafeBytes { into.copyMemory(from: $0) }
            return true
        }
        // Sweep 1: 0-2 data, 3-4 zero, 5-7 a file's, 8 gone while read.
        try writer.write(
            seq: 1, reason: "signal", timeNs: 1, tracked: PageSet([Self.pages(0, 9)]),
            pieces: [
                (Self.pages(0, 3), .data, "[anon]"), (Self.pages(3, 5), .zero, "[anon]"),
                (Self.pages(5, 8), .file, "/lib/x.so"), (Self.page(8), .data, "[anon]"),
            ], read: read)
        // Sweep 2: page 1 rewritten, 3 written; 6-8 no longer tracked.
        version = 2
        try writer.write(
            seq: 2, reason: "exit", timeNs: 2, tracked: PageSet([Self.pages(0, 6)]),
            pieces: [(Self.page(1), .data, "[anon]"), (Self.page(3), .data, "[anon]")], read: read)
        return root
    }

    @Test func whatIsWrittenIsReadBack() throws {
        let image = try ImageDirectory(path: try writeImage())
        #expect(image.pids() == [42])
        #expect(image.verify().problems == [])
        #expect(image.verify().processes == 1 && image.verify().sweeps == 2)
        let zeros = [UInt8](repeating: 0, count: 2 * 4096)
        #expect(
            try image.read(pid: 42, at: 1, range: Self.pages(0, 5)) == Self.contents(Self.pages(0, 3), version: 1)
                + zeros)
        #expect(try image.read(pid: 42, at: 1, range: Self.pages(5, 8)) == Self.contents(Self.pages(5, 8), version: 1))
        #expect(throws: ImageError.notHeld(page: Self.base + 8 * 4096, seq: 1, pid: 42)) {
            try image.read(pid: 42, at: 1, range: Self.pages(7, 9))
        }
        let expected =
            Self.contents(Self.page(0), version: 1) + Self.contents(Self.page(1), version: 2)
            + Self.contents(Self.page(2), version: 1) + Self.contents(Self.page(3), version: 2)
            + [UInt8](repeating: 0, count: 4096) + Self.contents(Self.page(5), version: 1)
        #expect(try image.read(pid: 42, at: 2, range: Self.pages(0, 6)) == expected)
        #expect(throws: ImageError.notHeld(page: Self.base + 6 * 4096, seq: 2, pid: 42)) {
            try image.read(pid: 42, at: 2, range: Self.pages(5, 7))
        }
        let sweeps = try image.sweeps(pid: 42)
        #expect(sweeps.map(\.gone) == [[], [ImageRange(Self.pages(6, 9))]])
        #expect(sweeps[0].ranges.map(\.kind) == [.data, .zero, .file, .gone])
        #expect(sweeps[0].ranges[2].mapping == "/lib/x.so")
        #expect(
            sweeps[0].ranges[0].xxh64 == IndexedRange.hex16(XXH64.hash(Self.contents(Self.pages(0, 3), version: 1))))
        // Built: the held pages in address order, and where each run is.
        let built = image.path + "/built"
        let result = try image.build(pid: 42, at: 2, output: built)
        #expect(result.pages == 6)
        #expect(try [UInt8](Data(contentsOf: URL(fileURLWithPath: built))) == expected)
    }

    @Test func anExistingImageIsRefused() throws {
        let root = try writeImage()
        #expect(throws: ImageError.exists(path: root)) { try ImageWriter.prepare(root: root) }
    }
}
