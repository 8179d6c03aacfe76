import Testing
import PageWatchAddressSpace
@testable import PageWatchEngine

/// io_uring request decoding against a fake tracee memory.
@Suite struct IOUringDecoderTests {
    /// Tracee memory: little-endian words placed at addresses.
    final class Memory {
        var bytes: [UInt64: UInt8] = [:]
        func put(_ v: UInt64, at a: UInt64, size: Int = 8) {
            for i in 0..<size { bytes[a + UInt64(i)] = UInt8(truncatingIfNeeded: v >> UInt64(8 * i)) }
        }
        func read(_ a: RemoteAddress, _ n: Int) -> [UInt8] {
            var out: [UInt8] = []
            for i in 0..<n {
                guard let b = bytes[a.value + UInt64(i)] else { break }
                out.append(b)
            }
            return out
        }
    }

    func range(_ a: UInt64, _ n: UInt64) -> AddressRange { AddressRange(a, a + n) }

    func decoder(_ m: Memory) -> IOUringDecoder { IOUringDecoder(read: m.read) }

    @Test func paramsAreReadFromTheSetupStruct() {
        var b = [UInt8](repeating: 0, count: IOUringParams.size)
        func put(_ v: UInt32, _ at: Int) {
            for i in 0..<4 { b[at + i] = UInt8(truncatingIfNeeded: v >> UInt32(8 * i)) }
        }
        put(8, 0); put(16, 4); put(IOUringParams.cqe32, 8); put(1, 20)
        put(0, 40); put(64, 44); put(320, 64); put(128, 80); put(192, 84); put(256, 100)
        let p = IOUringParams(b)!
        #expect(p.sqEntries == 8 && p.cqEntries == 16)
        #expect(p.sqMask == 7 && p.cqMask == 15)
        #expect(p.sqTail == 64 && p.sqArray == 320 && p.cqTail == 192 && p.cqCqes == 256)
        #expect(p.cqeSize == 32 && p.sqeSize == 64 && p.singleMmap && p.hasSQArray)
        #expect(IOUringParams(Array(b.prefix(100))) == nil)
    }

    @Test func setupsWhoseBuffersCannotBeKnown() {
        #expect(IOUringParams.unknowable(setupFlags: 0) == nil)
        #expect(IOUringParams.unknowable(setupFlags: IOUringParams.sqe128 | IOUringParams.cqe32) == nil)
        #expect(IOUringParams.unknowable(setupFlags: IOUringParams.sqPoll)?.contains("SQPOLL") == true)
        #expect(IOUringParams.unknowable(setupFlags: IOUringParams.noMmap) != nil)
        #expect(IOUringParams.unknowable(setupFlags: IOUringParams.sqeMixed) != nil)
    }

    @Test func anEntryRoundTripsThroughItsBytes() {
        let s = IOUringSQE(
            opcode: 22, flags: 0x20, fd: -1, off: 7, addr: 0x1000, len: 99, opFlags: 3, userData: 42,
            addr3: 5, attrTypeMask: 0)
        #expect(IOUringSQE(s.bytes) == s)
        #expect(IOUringSQE(Array(s.bytes.prefix(63))) == nil)
    }

    @Test func readsNameTheirBuffers() {
        let m = Memory()
        m.put(0x5000, at: 0x100); m.put(64, at: 0x108); m.put(0x7064, at: 0x110); m.put(32, at: 0x118)
        let d = decoder(m)
        #expect(d.effect(of: IOUringSQE(opcode: 22, addr: 0x2fa0, len: 100)) == .writes([range(0x2fa0, 100)]))
        #expect(d.effect(of: IOUringSQE(opcode: 27, addr: 0x8000, len: 32)) == .writes([range(0x8000, 32)]))
        #expect(
            d.effect(of: IOUringSQE(opcode: 1, addr: 0x100, len: 2)) == .writes([range(0x5000, 64), range(0x7064, 32)]))
        // A selected buffer is a provided one, pinned when it was provided.
        #expect(d.effect(of: IOUringSQE(opcode: 22, flags: IOUringSQE.bufferSelect, len: 60)) == .none)
        #expect(d.effect(of: IOUringSQE(opcode: 4, addr: 0xe00a, len: 80)) == .none)
        #expect(
            d.effect(of: IOUringSQE(opcode: 22, addr: 0x2000, len: 8, attrTypeMask: 1)) != .writes([range(0x2000, 8)]))
    }

    @Test func otherWritingRequests() {
        let m = Memory()
        m.put(16, at: 0x900, size: 4)  // accept's addrlen
        // recvmsg: msghdr {name 0x3000, namelen 12, iov 0x100 (1: 0x5000, 64), control 0x4000, 24}
        m.put(0x3000, at: 0x800); m.put(12, at: 0x808, size: 4); m.put(0x100, at: 0x810); m.put(1, at: 0x818)
        m.put(0x4000, at: 0x820); m.put(24, at: 0x828)
        m.put(0x5000, at: 0x100); m.put(64, at: 0x108)
        let d = decoder(m)
        #expect(d.effect(of: IOUringSQE(opcode: 21, off: 0xb000)) == .writes([range(0xb000, 256)]))
        #expect(
            d.effect(of: IOUringSQE(opcode: 13, off: 0x900, addr: 0xa000))
                == .writes([range(0xa000, 16), range(0x900, 4)]))
        #expect(
            d.effect(of: IOUringSQE(opcode: 10, addr: 0x800))
                == .writes([range(0x800, 56), range(0x3000, 12), range(0x5000, 64), range(0x4000, 24)]))
        #expect(d.effect(of: IOUringSQE(opcode: 44, off: 0xc000, len: 40)) == .writes([range(0xc000, 40)]))
        #expect(d.effect(of: IOUringSQE(opcode: 62, addr: 0xd000)) == .writes([range(0xd000, 8)]))
        #expect(d.effect(of: IOUringSQE(opcode: 59, addr: 0xd000, len: 4)) == .writes([range(0xd000, 48)]))
        #expect(
            d.effect(of: IOUringSQE(opcode: 31, fd: 4, addr: 0xd000, len: 4096)) == .provides([range(0xd000, 4 * 4096)])
        )
        #expect(
            d.effect(of: IOUringSQE(opcode: 25, off: 8192, addr: 0xd000, opFlags: 4)) == .zeroes([range(0xd000, 8192)]))
        #expect(d.effect(of: IOUringSQE(opcode: 25, off: 8192, addr: 0xd000, opFlags: 3)) == .none)
        // Files update writes allocated indexes back only with IORING_FILE_INDEX_ALLOC.
        #expect(
            d.effect(of: IOUringSQE(opcode: 20, off: 0xffff_ffff, addr: 0xd000, len: 2)) == .writes([range(0xd000, 8)]))
        #expect(d.effect(of: IOUringSQE(opcode: 20, off: 3, addr: 0xd000, len: 2)) == .none)
    }

    @Test func requestsThatWriteNothingAndUnknownOnes() {
        let d = decoder(Memory())
        for op: UInt8 in [0, 2, 3, 5, 9, 23, 26, 18, 19, 6] {
            #expect(d.effect(of: IOUringSQE(opcode: op, addr: 0x1000, len: 10)) == .none, "opcode \(op)")
        }
        for op: UInt8 in [46, 58, 64, 65, 200] {
            guard case .unknowable = d.effect(of: IOUringSQE(opcode: op, addr: 0x1000, len: 10)) else {
                Issue.record("opcode \(op) must be unknowable")
                continue
            }
        }
    }

    @Test func registrations() {
        let m = Memory()
        m.put(0xe000, at: 0x100); m.put(8192, at: 0x108)
        // io_uring_rsrc_register {nr 1, flags 0, resv2, data 0x100}
        m.put(1, at: 0x200, size: 4); m.put(0, at: 0x204, size: 4); m.put(0x100, at: 0x210)
        // io_uring_rsrc_update2 {offset, resv, data 0x100, tags, nr 1}
        m.put(0x100, at: 0x308); m.put(1, at: 0x318, size: 4)
        let d = decoder(m)
        #expect(d.registration(opcode: 0, arg: 0x100, count: 1) == .pins([range(0xe000, 8192)]))
        #expect(d.registration(opcode: 0 | 0x8000_0000, arg: 0x100, count: 1) == .pins([range(0xe000, 8192)]))
        #expect(d.registration(opcode: 15, arg: 0x200, count: 32) == .pins([range(0xe000, 8192)]))
        #expect(d.registration(opcode: 16, arg: 0x300, count: 32) == .pins([range(0xe000, 8192)]))
        #expect(d.registration(opcode: 2, arg: 0x100, count: 1) == .none)
        for op: UInt64 in [22, 30, 32, 33, 34, 99] {
            guard case .unknowable = d.registration(opcode: op, arg: 0, count: 0) else {
                Issue.record("register opcode \(op) must be unknowable")
                continue
            }
        }
    }

    @Test func requestsLeaveAtTheirLastCompletion() {
        var f = IOUringInFlight()
        f.submitted(ring: 3, userData: 1, buffers: [range(0x1000, 10)])
        f.submitted(ring: 3, userData: 1, buffers: [range(0x3000, 10)])
        f.submitted(ring: 3, userData: 2, buffers: [range(0x5000, 10)])
        f.submitted(ring: 3, userData: 9, buffers: [])
        #expect(
            f.pages
                == PageSet([AddressRange(0x1000, 0x2000), AddressRange(0x3000, 0x4000), AddressRange(0x5000, 0x6000)]))
        f.completed(ring: 3, userData: 2, more: true)  // multishot: more to come
        f.completed(ring: 4, userData: 2, more: false)  // another ring's
        #expect(f.pages.contains(RemoteAddress(0x5000)))
        f.completed(ring: 3, userData: 2, more: false)
        #expect(!f.pages.contains(RemoteAddress(0x5000)))
        // Two requests share a user_data: both stay until both completed.
        f.completed(ring: 3, userData: 1, more: false)
        #expect(f.pages.contains(RemoteAddress(0x1000)) && f.pages.contains(RemoteAddress(0x3000)))
        f.completed(ring: 3, userData: 1, more: false)
        #expect(f.pages.isEmpty)
        #expect(!f.isEmpty)  // the request without buffers (user_data 9) is still counted
        f.completed(ring: 3, userData: 9, more: false)
        #expect(f.isEmpty)
    }

    /// A write whose record is reused for a read before the write's
    /// completion was read: that completion must not retire the read.
    @Test func aCompletionRetiresOneRequestOfItsKey() {
        var f = IOUringInFlight()
        f.submitted(ring: 3, userData: 0x7000, buffers: [])  // the write
        f.submitted(ring: 3, userData: 0x7000, buffers: [range(0x9000, 64)])  // a read, same record
        f.completed(ring: 3, userData: 0x7000, more: false)  // the write's
        #expect(f.pages.contains(RemoteAddress(0x9000)))
        f.completed(ring: 3, userData: 0x7000, more: false)
        #expect(f.isEmpty)
    }
}
