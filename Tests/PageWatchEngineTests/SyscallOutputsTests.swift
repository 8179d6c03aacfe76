import Testing
import PageWatchAddressSpace
import PageWatchPtrace
@testable import PageWatchEngine

/// `SyscallOutputs`: the table's outputs evaluated from a call's arguments.
@Suite struct SyscallOutputsTests {
    typealias Arch = HostArchitecture
    let buffer: UInt64 = 0x7000_0000_1010
    let outputs = SyscallOutputs(read: { _, n in [UInt8](repeating: 0, count: n) })

    func range(_ start: UInt64, _ length: UInt64) -> AddressRange { AddressRange(start, start + length) }

    @Test func rowsGiveTheirBuffers() {
        #expect(outputs.ranges(.read, [3, buffer, 100, 0, 0, 0]) == [range(buffer, 100)])
        #expect(outputs.ranges(.fstat, [3, buffer, 0, 0, 0, 0]) == [range(buffer, Arch.layout.stat)])
        #expect(outputs.ranges(.newfstatat, [3, 1, buffer, 0, 0, 0]) == [range(buffer, Arch.layout.stat)])
        // At most 1 << 20 events.
        #expect(outputs.ranges(.epoll_wait, [3, buffer, 1 << 30, 0, 0, 0]) == [range(buffer, (1 << 20) * 12)])
        #expect(outputs.ranges(.gettimeofday, [buffer, 0, 0, 0, 0, 0]) == [range(buffer, 16)])
        #expect(outputs.ranges(.read, [3, 0, 100, 0, 0, 0]) == [])
        #expect(outputs.ranges(.prctl, [0, 0, 0, 0, 0, 0]) == nil)
        #expect(outputs.ranges(.mmap, [0, 4096, 3, 0x22, 0, 0]) == [])
    }

    @Test func everyCallHandledByNameHasAnAnswer() {
        for row in SyscallTable.rows where row.kind == .named || row.kind == .memory {
            _ = outputs.ranges(row.call, [buffer, 0, buffer, 0, buffer, buffer])
        }
    }

    @Test func interruptedCallsWriteWhatTheTableSays() {
        func written(_ call: Syscall, _ a: [UInt64]) -> [AddressRange]? {
            SyscallOutputs.writtenOnInterruption(number: Arch.number(call)!, arguments: a)
        }
        #expect(written(.read, [3, buffer, 100, 0, 0, 0]) == [])
        #expect(written(.nanosleep, [buffer, buffer + 16, 0, 0, 0, 0]) == [range(buffer + 16, 16)])
        #expect(written(.clock_nanosleep, [1, 0, buffer, buffer + 16, 0, 0]) == [range(buffer + 16, 16)])
        #expect(written(.clock_nanosleep, [1, 1, buffer, buffer + 16, 0, 0]) == [])  // TIMER_ABSTIME
        #expect(
            written(.select, [65, buffer, 0, buffer + 64, buffer + 128, 0])
                == [range(buffer, 16), range(buffer + 64, 16), range(buffer + 128, 16)])
        #expect(written(.poll, [buffer, 3, 1000, 0, 0, 0]) == [range(buffer, 24)])
        #expect(written(.ioctl, [3, 0x5401, buffer, 0, 0, 0]) == nil)  // not known: not interrupted
        #expect(written(.rt_sigsuspend, [buffer, 8, 0, 0, 0, 0]) == [])
        #expect(SyscallOutputs.writtenOnInterruption(number: 999, arguments: [0, 0, 0, 0, 0, 0]) == nil)
    }
}
