import Foundation
import Testing
import PageWatchImage

/// The checksum against zlib's (python's zlib.crc32 gives the same values).
@Suite struct CRC32Tests {
    @Test func knownValues() {
        #expect(CRC32.checksum([]) == 0)
        #expect(CRC32.checksum(Array("123456789".utf8)) == 0xcbf4_3926)
        #expect(CRC32.checksum(Array("The quick brown fox jumps over the lazy dog".utf8)) == 0x414f_a339)
        // Every length around the 8-byte steps, pieces or whole alike.
        let bytes = (0..<1000).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
        #expect(CRC32.checksum(bytes) == 0xc390_5a1d)
        var pieces = CRC32()
        for chunk in stride(from: 0, to: 1000, by: 13) {
            bytes[chunk..<min(chunk + 13, 1000)].withUnsafeBytes { pieces.update($0) }
        }
        #expect(pieces.value == CRC32.checksum(bytes))
    }
}
