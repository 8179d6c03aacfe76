import Testing
import PageWatchAddressSpace
@testable import PageWatchEngine

/// The program's userfaultfd ioctls, decoded from their argument structs.
@Suite struct UserfaultfdIoctlTests {
    static func ioctl(write: Bool, read: Bool, _ nr: UInt64, size: UInt64) -> UInt64 {
        (write ? 1 << 30 : 0) | (read ? 2 << 30 : 0) | size << 16 | 0xAA << 8 | nr
    }
    static func bytes(_ words: [UInt64]) -> [UInt8] {
        words.flatMap { w in (0..<8).map { UInt8(truncatingIfNeeded: w >> (8 * $0)) } }
    }
    let arg: UInt64 = 0x7000_0000_1000

    @Test func copyWritesItsDestinationAndItsResultField() throws {
        let cmd = Self.ioctl(write: true, read: true, 0x03, size: 40)
        #expect(UserfaultfdIoctl.isUserfaultfd(cmd))
        #expect(!UserfaultfdIoctl.isUserfaultfd(0x5401))  // TCGETS
        let d = try #require(
            UserfaultfdIoctl.decode(
                cmd, argument: arg,
                raw: Self.bytes([0x3700_0001_0000, 0x5000, 0x2000, 0, 0])))
        #expect(d.name == "UFFDIO_COPY")
        #expect(d.fills == [AddressRange(0x3700_0001_0000, 0x3700_0001_2000)])
        #expect(d.writes == [AddressRange(arg + 32, arg + 40)])
        // A struct read short: not decoded.
        #expect(UserfaultfdIoctl.decode(cmd, argument: arg, raw: Array(Self.bytes([1, 2, 3, 4, 5]).prefix(16))) == nil)
    }

    @Test func zeropageMoveRegisterAndUnregister() throws {
        let zero = try #require(
            UserfaultfdIoctl.decode(
                Self.ioctl(write: true, read: true, 0x04, size: 32), argument: arg,
                raw: Self.bytes([0x1000_0000, 0x1000, 0, 0])))
        #expect(zero.fills == [AddressRange(0x1000_0000, 0x1000_1000)])
        #expect(zero.writes == [AddressRange(arg + 24, arg + 32)])
        let move = try #require(
            UserfaultfdIoctl.decode(
                Self.ioctl(write: true, read: true, 0x05, size: 40), argument: arg,
                raw: Self.bytes([0x2000_0000, 0x3000_0000, 0x1000, 0, 0])))
        #expect(
            move.writes == [
                AddressRange(0x2000_0000, 0x2000_1000), AddressRange(0x3000_0000, 0x3000_1000),
                AddressRange(arg + 32, arg + 40),
            ])
        #expect(move.fills.isEmpty)
        let register = try #require(
            UserfaultfdIoctl.decode(
                Self.ioctl(write: true, read: true, 0x00, size: 32), argument: arg,
                raw: Self.bytes([0x4000_0000, 0x8000, 1, 0])))
        #expect(register.registers?.range == AddressRange(0x4000_0000, 0x4000_8000))
        #expect(register.registers?.mode == 1)
        #expect(register.writes == [AddressRange(arg + 24, arg + 32)])  // the ioctls field
        // Declared _IOR, but it writes nothing.
        let unregister = try #require(
            UserfaultfdIoctl.decode(
                Self.ioctl(write: false, read: true, 0x01, size: 16), argument: arg,
                raw: Self.bytes([0x4000_0000, 0x8000])))
        #expect(unregister.writes.isEmpty)
        #expect(unregister.unregisters == AddressRange(0x4000_0000, 0x4000_8000))
    }
}
