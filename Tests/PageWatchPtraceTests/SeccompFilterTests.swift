import Testing
import PageWatchAddressSpace
@testable import PageWatchPtrace

/// The launch-mode filter, run through its own BPF interpreter.
@Suite struct SeccompFilterTests {
    typealias Arch = HostArchitecture
    let filter = SeccompFilter(
        auditArch: Arch.auditArch,
        allowing: Arch.syscallTable.numbers(of: .harmless),
        futex: Arch.number(.futex)!, futexWakeOp: 5,
        scratch: AddressRange(
            start: RemoteAddress(Arch.scratchAddressHint),
            end: RemoteAddress(Arch.scratchAddressHint) + RemoteSyscall.scratchSize))

    func traced(_ name: String, arg1: UInt64 = 0, arch: UInt32 = Arch.auditArch) -> Bool {
        filter.traces(nr: Arch.number(Syscall(rawValue: name)!)!, arch: arch, arg1: arg1)
    }

    @Test func allowsCallsThatNeverWriteUserMemory() {
        for name in ["write", "close", "getpid", "openat", "lseek", "sendto"] { #expect(!traced(name), "\(name)") }
    }

    @Test func tracesCopyOutMemoryAndUnknownCalls() {
        for name in ["read", "fstat", "mmap", "mprotect", "clone3", "rseq", "prctl", "ioctl"] {
            #expect(traced(name), "\(name)")
        }
        #expect(filter.traces(nr: 999, arch: Arch.auditArch))
    }

    /// Private futexes only for FUTEX_WAKE_OP (it writes *uaddr2); shared
    /// ones always (EFAULT on a read-only anonymous page).
    @Test func tracesFutexOnlyForWakeOpOrShared() {
        #expect(!traced("futex", arg1: 128 | 0))  // FUTEX_WAIT | FUTEX_PRIVATE_FLAG
        #expect(!traced("futex", arg1: 128 | 1))  // FUTEX_WAKE | FUTEX_PRIVATE_FLAG
        #expect(!traced("futex", arg1: 128 | 9))  // FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG
        #expect(traced("futex", arg1: 5))  // FUTEX_WAKE_OP
        #expect(traced("futex", arg1: 128 | 5))  // FUTEX_WAKE_OP | FUTEX_PRIVATE_FLAG
        #expect(traced("futex", arg1: 0))  // FUTEX_WAIT, shared
        #expect(traced("futex", arg1: 256 | 9))  // FUTEX_WAIT_BITSET | FUTEX_CLOCK_REALTIME (pthread_join)
    }

    /// The fault trampoline's mprotect runs untraced from the scratch pages;
    /// the same call a byte outside them (or with another high word) is traced.
    @Test func letsCallsFromTheScratchPagesRun() {
        let base = Arch.scratchAddressHint, nr = Arch.number(.mprotect)!
        for ip in [base, base + 64 + 2, base + RemoteSyscall.scratchSize - 1] {
            #expect(!filter.traces(nr: nr, arch: Arch.auditArch, ip: ip), "\(ip)")
        }
        for ip in [base - 1, base + RemoteSyscall.scratchSize, base + (1 << 32), UInt64(0x7f00_0000_1000)] {
            #expect(filter.traces(nr: nr, arch: Arch.auditArch, ip: ip), "\(ip)")
        }
    }

    @Test func letsOtherABIsRun() {
        #expect(!traced("read", arch: 0x4000_0003))  // AUDIT_ARCH_I386
    }

    @Test func jumpsStayInsideTheProgram() {
        for (i, ins) in filter.instructions.enumerated() where ins.code & 0x07 == 0x05 {
            #expect(i + 1 + Int(ins.jt) < filter.instructions.count)
            #expect(i + 1 + Int(ins.jf) < filter.instructions.count)
        }
    }
}
