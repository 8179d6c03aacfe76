/// XXH64 (xxHash, 64 bits, seed 0; github.com/Cyan4973/xxHash's
/// specification): the image's checksum per range. A dump checksums every
/// byte it copies; this runs at about ten times the speed of a table CRC-32
/// here, which took as long as the copy. `xxhsum -H1` (Debian's xxhash) and
/// Python's `xxhash.xxh64` compute the same.
public struct XXH64: Sendable {
    static let p1: UInt64 = 0x9E37_79B1_85EB_CA87
    static let p2: UInt64 = 0xC2B2_AE3D_27D4_EB4F
    static let p3: UInt64 = 0x1656_67B1_9E37_79F9
    static let p4: UInt64 = 0x85EB_CA77_C2B2_AE63
    static let p5: UInt64 = 0x27D4_EB2F_1656_67C5

    var v1 = p1 &+ p2, v2 = p2, v3: UInt64 = 0, v4: UInt64 = 0 &- p1
    var length: UInt64 = 0
    /// Bytes of an unfinished 32-byte stripe.
    var pending: [UInt8] = []

    public init() {}

    @inline(__always) static func round(_ acc: UInt64, _ input: UInt64) -> UInt64 {
        let a = acc &+ input &* p2
        return ((a << 31) | (a >> 33)) &* p1
    }

    @inline(__always) static func merge(_ acc: UInt64, _ v: UInt64) -> UInt64 { (acc ^ round(0, v)) &* p1 &+ p4 }

    @inline(__always) static func word(_ base: UnsafeRawPointer, _ at: Int) -> UInt64 {
        base.loadUnaligned(fromByteOffset: at, as: UInt64.self).littleEndian
    }

    /// Continues the hash over `bytes`.
    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        guard var base = bytes.baseAddress, !bytes.isEmpty else { return }
        var n = bytes.count
        length += UInt64(n)
        if !pending.isEmpty {
            let take = min(32 - pending.count, n)
            pending += UnsafeRawBufferPointer(start: base, count: take)
            base += take
            n -= take
            guard pending.count == 32 else { return }
            pending.withUnsafeBytes { stripes($0.baseAddress!, 32) }
            pending = []
        }
        let whole = n & ~31
        stripes(base, whole)
        if whole < n { pending = Array(UnsafeRawBufferPointer(start: base + whole, count: n - whole)) }
    }

    @inline(__always) mutating func stripes(_ base: UnsafeRawPointer, _ count: Int) {
        var a = v1, b = v2, c = v3, d = v4
        var i = 0
        while i < count {
            a = Self.round(a, Self.word(base, i))
            b = Self.round(b, Self.word(base, i + 8))
            c = Self.round(c, Self.word(base, i + 16))
            d = Self.round(d, Self.word(base, i + 24))
            i += 32
        }
        v1 = a
        v2 = b
        v3 = c
        v4 = d
    }

    /// The hash of everything given to `update`.
    public var value: UInt64 {
        var h: UInt64
        if length >= 32 {
            h =
                ((v1 << 1) | (v1 >> 63)) &+ ((v2 << 7) | (v2 >> 57)) &+ ((v3 << 12) | (v3 >> 52))
                &+ ((v4 << 18) | (v4 >> 46))
            h = Self.merge(Self.merge(Self.merge(Self.merge(h, v1), v2), v3), v4)
        } else {
            h = Self.p5
        }
        h = h &+ length
        pending.withUnsafeBytes { tail in
            let n = tail.count
            var i = 0
            while i + 8 <= n {
                h ^= Self.round(0, Self.word(tail.baseAddress!, i))
                h = ((h << 27) | (h >> 37)) &* Self.p1 &+ Self.p4
                i += 8
            }
            if i + 4 <= n {
                h ^= UInt64(tail.loadUnaligned(fromByteOffset: i, as: UInt32.self).littleEndian) &* Self.p1
                h = ((h << 23) | (h >> 41)) &* Self.p2 &+ Self.p3
                i += 4
            }
            while i < n {
                h ^= UInt64(tail[i]) &* Self.p5
                h = ((h << 11) | (h >> 53)) &* Self.p1
                i += 1
            }
        }
        h ^= h >> 33
        h = h &* Self.p2
        h ^= h >> 29
        h = h &* Self.p3
        h ^= h >> 32
        return h
    }

    public static func hash(_ bytes: [UInt8]) -> UInt64 {
        var x = XXH64()
        bytes.withUnsafeBytes { x.update($0) }
        return x.value
    }
}
