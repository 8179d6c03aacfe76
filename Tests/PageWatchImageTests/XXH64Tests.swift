import Testing
import PageWatchImage

/// The checksum against the reference implementation's values (Python's
/// xxhash.xxh64, seed 0), whole and fed in pieces.
@Suite struct XXH64Tests {
    static let bytes = (0..<1000).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }

    @Test func knownValues() {
        #expect(XXH64.hash([]) == 0xef46_db37_51d8_e999)
        #expect(XXH64.hash(Array("abc".utf8)) == 0x44bc_2cf5_ad77_0999)
        #expect(XXH64.hash(Array("The quick brown fox jumps over the lazy dog".utf8)) == 0x0b24_2d36_1fda_71bc)
        #expect(XXH64.hash(Array(Self.bytes.prefix(45))) == 0xfc00_3d35_5fa5_8a61)
        #expect(XXH64.hash(Self.bytes) == 0x128d_a10c_fbdc_59d9)
    }

    @Test(arguments: [1, 7, 13, 32, 100, 999]) func piecesGiveTheSameHash(size: Int) {
        var x = XXH64()
        for start in stride(from: 0, to: 1000, by: size) {
            Self.bytes[start..<min(start + size, 1000)].withUnsafeBytes { x.update($0) }
        }
        #expect(x.value == 0x128d_a10c_fbdc_59d9)
    }
}
