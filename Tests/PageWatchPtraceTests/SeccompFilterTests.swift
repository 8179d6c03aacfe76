import Testing
@testable import PageWatchPtrace

/// The launch-mode filter, run through its own BPF interpreter.
@Suite struct SeccompFilterTests {
    typealias Arch = HostArchitecture
    let filter = SeccompFilter(auditArch: Arch.auditArch,
                               allowing: Syscall.neverWritesUserMemory.compactMap { Arch.syscallNumbers[$0] },
                               futex: Arch.number(.futex)!, futexWakeOp: 5)

    func traced(_ name: String, arg1: UInt64 = 0, arch: UInt32 = Arch.auditArch) -> Bool {
        filter.traces(nr: Arch.syscallNumbers[name]!, arch: arch, arg1: arg1)
    }

    @Test func allowsCallsThatNeverWriteUserMemory() {
        for name in ["write", "close", "getpid", "openat", "lseek", "sendto"] { #expect(!traced(name), "\(name)") }
    }

    @Test func tracesCopyOutMemoryAndUnknownCalls() {
        for name in ["read", "fstat", "mmap", "mprotect", "clone3", "rseq", "prctl", "ioctl"] { #expect(traced(name), "\(name)") }
        #expect(filter.traces(nr: 999, arch: Arch.auditArch))
    }

    @Test func tracesFutexOnlyForWakeOp() {
        #expect(!traced("futex", arg1: 0))          // FUTEX_WAIT
        #expect(!traced("futex", arg1: 128 | 1))    // FUTEX_WAKE | FUTEX_PRIVATE_FLAG
        #expect(traced("futex", arg1: 5))           // FUTEX_WAKE_OP
        #expect(traced("futex", arg1: 128 | 5))     // FUTEX_WAKE_OP | FUTEX_PRIVATE_FLAG
    }

    @Test func letsOtherABIsRun() {
        #expect(!traced("read", arch: 0x4000_0003))  // AUDIT_ARCH_I386
    }

    @Test func jumpsStayInsideTheProgram() {
        for (i, ins) in filter.instructions.enumerated() where ins.code == 0x15 {
            #expect(i + 1 + Int(ins.jt) < filter.instructions.count)
            #expect(i + 1 + Int(ins.jf) < filter.instructions.count)
        }
    }
}
