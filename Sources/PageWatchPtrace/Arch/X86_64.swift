internal import CPtrace
import PageWatchAddressSpace

/// x86_64: registers, syscall convention and the injected code.
public enum X86_64: Architecture {
    public struct Registers: Sendable {
        var raw: user_regs_struct
    }

    public static let name = "x86_64"

    public static func readRegisters(tid: Int32) throws -> Registers {
        var r = user_regs_struct()
        try check(pw_ptrace_getregs(tid, &r), "PTRACE_GETREGS", tid: tid)
        return Registers(raw: r)
    }

    public static func writeRegisters(_ regs: Registers, tid: Int32) throws {
        var r = regs.raw
        try check(pw_ptrace_setregs(tid, &r), "PTRACE_SETREGS", tid: tid)
    }

    public static func instructionPointer(_ regs: Registers) -> RemoteAddress { RemoteAddress(regs.raw.rip) }
    public static func stackPointer(_ regs: Registers) -> RemoteAddress { RemoteAddress(regs.raw.rsp) }
    public static func syscallNumber(_ regs: Registers) -> Int64 { Int64(bitPattern: regs.raw.orig_rax) }

    public static func syscallArguments(_ regs: Registers) -> [UInt64] {
        let r = regs.raw
        return [r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9]
    }

    public static func preparingSyscall(_ regs: Registers, number: Int64, arguments: [UInt64],
                                        gadget: RemoteAddress) -> Registers {
        var r = regs.raw
        let a = arguments + Array(repeating: 0, count: max(0, 6 - arguments.count))
        r.rax = UInt64(bitPattern: number)
        // Also in r11, which the gadget copies to rax: at an event stop inside
        // a syscall (exec, clone) the kernel still writes that call's return
        // value into rax before the thread reaches the gadget.
        r.r11 = UInt64(bitPattern: number)
        r.rdi = a[0]; r.rsi = a[1]; r.rdx = a[2]; r.r10 = a[3]; r.r8 = a[4]; r.r9 = a[5]
        r.rip = gadget.value
        // orig_rax = -1: not in a syscall, so a pending -ERESTART* of an
        // interrupted call is not applied to the injected one (hazard 15).
        r.orig_rax = UInt64(bitPattern: -1)
        return Registers(raw: r)
    }

    public static func syscallResult(_ regs: Registers) -> Int64 { Int64(bitPattern: regs.raw.rax) }

    /// `mov rax, r11` (4c 89 d8), `syscall` (0f 05), `int3` (cc); the trap
    /// leaves rip after the int3. r11 is clobbered by `syscall` anyway.
    public static let syscallGadget: [UInt8] = [0x4c, 0x89, 0xd8, 0x0f, 0x05, 0xcc]
    public static let gadgetTrapOffset: UInt64 = 6

    /// The System V x86_64 ABI's 128-byte red zone.
    public static let redZone: UInt64 = 128

    public static let syscalls = SyscallNumbers(getpid: 39, mmap: 9, munmap: 11, mprotect: 10, clone: 56, clone3: 435)

    /// Blocking calls that write no user memory when interrupted and restarted.
    static let quietWhenInterrupted: Set<Int64> = [
        0, 1, 17, 18, 19, 20,  // read, write, pread64, pwrite64, readv, writev
        7, 34, 42, 43, 44, 45, 46, 47, 61, 72, 73,  // poll, pause, connect, accept, sendto, recvfrom, sendmsg, recvmsg, wait4, fcntl, flock
        128, 130, 202, 232, 247, 257, 281, 288, 299, 441,
        // rt_sigtimedwait, rt_sigsuspend, futex, epoll_wait, waitid, openat, epoll_pwait, accept4, recvmmsg, epoll_pwait2
    ]

    public static func memoryWrittenOnInterruption(number: Int64, arguments a: [UInt64]) -> [AddressRange]? {
        func block(_ address: UInt64, _ length: UInt64) -> [AddressRange] {
            address == 0 ? [] : [AddressRange(start: RemoteAddress(address), end: RemoteAddress(address) + length)]
        }
        let timespecSize: UInt64 = 16
        switch number {
        case _ where quietWhenInterrupted.contains(number): return []
        case 35: return block(a[1], timespecSize)  // nanosleep(req, rem)
        case 230: return a[1] & 1 != 0 ? [] : block(a[3], timespecSize)  // clock_nanosleep, unless TIMER_ABSTIME
        case 23, 270:  // select / pselect6: the fd sets and the timeout are written back
            let setBytes = (a[0] + 63) / 64 * 8
            return block(a[1], setBytes) + block(a[2], setBytes) + block(a[3], setBytes) + block(a[4], timespecSize)
        case 271: return block(a[2], timespecSize)  // ppoll's timeout
        default: return nil
        }
    }
}
