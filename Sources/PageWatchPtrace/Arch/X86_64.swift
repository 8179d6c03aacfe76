internal import CPtrace
import PageWatchAddressSpace

/// x86_64: registers, syscall convention and the injected code.
public enum X86_64: Architecture {
    public struct Registers: Sendable {
        var raw: user_regs_struct
    }

    public static let name = "x86_64"
    /// `userfaultfd(2)`, which PageWatch injects itself (the program's own
    /// calls are let through: it knows them by their ioctls).
    public static let userfaultfdNumber: Int64 = 323

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

    /// The instruction pointer alone (PTRACE_PEEKUSER/POKEUSER: one word,
    /// about half the cost of the whole set).
    public static func readInstructionPointer(tid: Int32) throws -> RemoteAddress {
        var value: UInt64 = 0
        try check(pw_ptrace_peekuser(tid, ripOffset, &value), "PTRACE_PEEKUSER", tid: tid)
        return RemoteAddress(value)
    }

    public static func writeInstructionPointer(_ ip: RemoteAddress, tid: Int32) throws {
        try check(pw_ptrace_pokeuser(tid, ripOffset, ip.value), "PTRACE_POKEUSER", tid: tid, address: ip)
    }

    static let ripOffset = UInt(MemoryLayout<user_regs_struct>.offset(of: \.rip)!)
    public static func stackPointer(_ regs: Registers) -> RemoteAddress { RemoteAddress(regs.raw.rsp) }
    public static func threadPointer(_ regs: Registers) -> RemoteAddress { RemoteAddress(regs.raw.fs_base) }
    public static func syscallNumber(_ regs: Registers) -> Int64 { Int64(bitPattern: regs.raw.orig_rax) }

    public static func syscallArguments(_ regs: Registers) -> [UInt64] {
        let r = regs.raw
        return [r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9]
    }

    public static func preparingSyscall(
        _ regs: Registers, number: Int64, arguments: [UInt64],
        gadget: RemoteAddress
    ) -> Registers {
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
        // interrupted call is not applied to the injected one.
        r.orig_rax = UInt64(bitPattern: -1)
        return Registers(raw: r)
    }

    public static func syscallResult(_ regs: Registers) -> Int64 { Int64(bitPattern: regs.raw.rax) }

    public static let syscallInstruction: [UInt8] = [0x0f, 0x05]

    /// The scratch page's gadget: the call, its result kept in r14, then the
    /// thread stops itself with SIGSTOP (`tkill(gettid(), SIGSTOP)`) instead
    /// of an `int3`: traced, that is a signal-delivery stop PageWatch
    /// suppresses, like the breakpoint's; should PageWatch die meanwhile, it
    /// stops the process instead of killing it with SIGTRAP, and the
    /// guardian puts the registers back.
    ///   mov rax, r11 ; syscall ; mov r14, rax ; mov eax, 186 (gettid) ; syscall
    ///   mov rdi, rax ; mov esi, 19 (SIGSTOP) ; mov eax, 200 (tkill) ; syscall
    ///   jmp (back to the gettid)
    public static let scratchGadget: [UInt8] = [0x4c, 0x89, 0xd8, 0x0f, 0x05, 0x49, 0x89, 0xc6] + selfStop + stopAgain
    static let selfStop: [UInt8] = [
        0xb8, 0xba, 0x00, 0x00, 0x00,  // mov eax, 186 (gettid)
        0x0f, 0x05,  // syscall
        0x48, 0x89, 0xc7,  // mov rdi, rax
        0xbe, 0x13, 0x00, 0x00, 0x00,  // mov esi, 19 (SIGSTOP)
        0xb8, 0xc8, 0x00, 0x00, 0x00,  // mov eax, 200 (tkill)
        0x0f, 0x05,  // syscall
    ]
    /// After the stop: `jmp` back to `selfStop`. PageWatch dying while the
    /// thread is at the stop releases it with the SIGSTOP dropped (the
    /// kernel delivers no signal of a signal-delivery stop whose tracer
    /// died): it stops itself again, for the guardian, instead of running
    /// on into the `int3` padding and dying of SIGTRAP.
    static let stopAgain: [UInt8] = [0xeb, 0xe8]  // jmp -24
    public static let scratchGadgetStopOffset = UInt64(scratchGadget.count - stopAgain.count)
    public static let scratchGadgetSyscallEnd: UInt64 = 5
    /// The injected call's result at the scratch gadget's stop.
    public static func scratchGadgetResult(_ regs: Registers) -> Int64 { Int64(bitPattern: regs.raw.r14) }

    /// The registers as words, for the guardian's journal, and back.
    public static func words(of regs: Registers) -> [UInt64] {
        withUnsafeBytes(of: regs.raw) { Array($0.bindMemory(to: UInt64.self)) }
    }

    public static func registers(words: [UInt64]) -> Registers? {
        guard words.count * 8 == MemoryLayout<user_regs_struct>.size else { return nil }
        var r = user_regs_struct()
        withUnsafeMutableBytes(of: &r) { raw in words.withUnsafeBytes { raw.copyMemory(from: $0) } }
        return Registers(raw: r)
    }

    public static var registerWordCount: Int { MemoryLayout<user_regs_struct>.size / 8 }

    // MARK: The fault trampoline (the one-stop fault path)

    /// Where PageWatch asks for its scratch pages (gadget and trampoline
    /// code, then the slots' data): a fixed address the seccomp filter,
    /// built before the exec, can let make syscalls untraced. Far from where
    /// the kernel places the program, its heap, its mmaps and its stack.
    public static let scratchAddressHint: UInt64 = 0x3f00_0000_0000

    /// Each slot's code, 128 bytes, with RIP-relative operands into its
    /// data: saves rax, rcx, r11 (the registers `syscall` clobbers) and rsi,
    /// rdi, rdx (its arguments) into the data, loads the arguments the
    /// tracer left there, `syscall` (mprotect), `mov [result], rax`, loads
    /// the six registers back and `jmp [rip]` to the faulting instruction.
    /// The slot saves the registers itself so that the tracer needs only the
    /// instruction pointer (PEEKUSER/POKEUSER cost about half of GETREGS/SETREGS).
    /// The flags are the program's throughout (the kernel restores them
    /// after `syscall`, and `mov` and `jmp` leave them alone); the stack is
    /// never touched.
    public static let trampolineSlotSize: UInt64 = 128
    /// The data words of a slot, in order: the six saved registers, then
    /// what the tracer writes at each entry (`trampolineEntryWords`).
    enum TrampolineWord: Int, CaseIterable { case rax, rcx, r11, rsi, rdi, rdx, result, start, length, protection, rip }
    static let savedRegisterWords: [TrampolineWord] = [.rax, .rcx, .r11, .rsi, .rdi, .rdx]
    /// Offsets in a slot's code: the first instruction that changes a
    /// register (the saves before it change none), the `syscall`'s end.
    static let trampolineFirstLoad: UInt64 = 6 * 7
    public static let trampolineSyscallEnd: UInt64 = 6 * 7 + 3 * 7 + 5 + 2

    public static func trampolineCode(at code: RemoteAddress, data: RemoteAddress) -> [UInt8] {
        var bytes: [UInt8] = []
        func ripRelative(_ opcode: [UInt8], _ word: TrampolineWord) {
            let next = Int64(bitPattern: code.value) + Int64(bytes.count + opcode.count + 4)
            let target = Int64(bitPattern: data.value) + Int64(word.rawValue * 8)
            let disp = Int32(truncatingIfNeeded: target - next)
            bytes += opcode + withUnsafeBytes(of: disp.littleEndian) { Array($0) }
        }
        // mov [rip+d], reg and mov reg, [rip+d], in savedRegisterWords' order.
        let stores: [[UInt8]] = [
            [0x48, 0x89, 0x05], [0x48, 0x89, 0x0d], [0x4c, 0x89, 0x1d],
            [0x48, 0x89, 0x35], [0x48, 0x89, 0x3d], [0x48, 0x89, 0x15],
        ]
        let loads: [[UInt8]] = [
            [0x48, 0x8b, 0x05], [0x48, 0x8b, 0x0d], [0x4c, 0x8b, 0x1d],
            [0x48, 0x8b, 0x35], [0x48, 0x8b, 0x3d], [0x48, 0x8b, 0x15],
        ]
        for (store, word) in zip(stores, savedRegisterWords) { ripRelative(store, word) }
        precondition(UInt64(bytes.count) == trampolineFirstLoad)
        ripRelative(loads[4], .start)  // mov rdi, [start]
        ripRelative(loads[3], .length)  // mov rsi, [length]
        ripRelative(loads[5], .protection)  // mov rdx, [protection]
        bytes += [0xb8] + withUnsafeBytes(of: UInt32(syscalls.mprotect).littleEndian) { Array($0) }  // mov eax, nr
        bytes += [0x0f, 0x05]  // syscall
        precondition(UInt64(bytes.count) == trampolineSyscallEnd)
        ripRelative(stores[0], .result)  // mov [result], rax
        for (load, word) in zip(loads, savedRegisterWords) { ripRelative(load, word) }
        ripRelative([0xff, 0x25], .rip)  // jmp [rip+d]
        precondition(UInt64(bytes.count) <= trampolineSlotSize)
        return bytes + Array(repeating: 0xcc, count: Int(trampolineSlotSize) - bytes.count)
    }

    /// The words the tracer writes into a slot's data to send a thread
    /// through it, from `trampolineEntryWord` on: the result set to 1 (no
    /// mprotect returns it), the call's arguments, where to return.
    public static func trampolineEntryWords(
        mprotect start: UInt64, length: UInt64, protection: UInt64,
        returningTo ip: RemoteAddress
    ) -> [UInt64] {
        [1, start, length, protection, ip.value]
    }
    public static let trampolineEntryWord = TrampolineWord.result.rawValue

    /// The registers the slot's code leaves the thread with, from wherever
    /// in it (`offset`) the thread is stopped: before its first load no
    /// register but the instruction pointer has changed; after it, all six
    /// are saved in the data (and stay there), so they are put back.
    public static func leavingTrampoline(_ regs: Registers, words: [UInt64], offset: UInt64) -> Registers {
        var r = regs.raw
        if offset >= trampolineFirstLoad {
            func word(_ w: TrampolineWord) -> UInt64 { words[w.rawValue] }
            r.rax = word(.rax); r.rcx = word(.rcx); r.r11 = word(.r11)
            r.rsi = word(.rsi); r.rdi = word(.rdi); r.rdx = word(.rdx)
        }
        r.rip = words[TrampolineWord.rip.rawValue]
        r.orig_rax = UInt64(bitPattern: -1)
        return Registers(raw: r)
    }

    /// The batch loop, in the code page's last 64 bytes: rbx = array of
    /// (argument 1, 2, 3, call number → result) entries, r12 = their count.
    ///   loop: test r12, r12 ; jz done ; mov rdi, [rbx] ; mov rsi, [rbx+8]
    ///         mov rdx, [rbx+16] ; mov eax, [rbx+24] ; nop ; syscall
    ///         mov [rbx+24], rax ; add rbx, 32 ; dec r12 ; jmp loop
    ///   done: tkill(gettid(), SIGSTOP), as the scratch gadget
    public static let batchCode: [UInt8] =
        [
            0x4d, 0x85, 0xe4,  // test r12, r12
            0x74, 0x1f,  // jz done (+31)
            0x48, 0x8b, 0x3b,  // mov rdi, [rbx]
            0x48, 0x8b, 0x73, 0x08,  // mov rsi, [rbx+8]
            0x48, 0x8b, 0x53, 0x10,  // mov rdx, [rbx+16]
            0x8b, 0x43, 0x18,  // mov eax, [rbx+24] (the call's number)
            0x66, 0x90,  // nop (keeps the jumps' offsets)
            0x0f, 0x05,  // syscall
            0x48, 0x89, 0x43, 0x18,  // mov [rbx+24], rax
            0x48, 0x83, 0xc3, 0x20,  // add rbx, 32
            0x49, 0xff, 0xcc,  // dec r12
            0xeb, 0xdc,  // jmp loop (-36)
        ] + selfStop + stopAgain  // done: stop, as the scratch gadget does
    public static let batchCodeOffset: UInt64 = 4096 - 64
    /// The instruction pointer at the loop's stop, from its start.
    public static let batchTrapOffset = UInt64(batchCode.count - stopAgain.count)

    public static func preparingBatch(_ regs: Registers, array: RemoteAddress, count: Int, code: RemoteAddress)
        -> Registers
    {
        var r = regs.raw
        r.rbx = array.value
        r.r12 = UInt64(count)
        r.rip = code.value
        r.orig_rax = UInt64(bitPattern: -1)  // no restart logic for the injected calls
        return Registers(raw: r)
    }

    public static let trampolineResultWord = TrampolineWord.result.rawValue
    public static let trampolineWordCount = TrampolineWord.allCases.count

    /// The System V x86_64 ABI's 128-byte red zone.
    public static let redZone: UInt64 = 128

    public static let auditArch: UInt32 = 0xC000_003E  // AUDIT_ARCH_X86_64

    /// x86_64's numbers (asm/unistd_64.h) of the calls of `SyscallTable`.
    /// Not numbered so far: semop (65) and semtimedop (220). Their rows say
    /// a stop ends them with EINTR, which PageWatch has never undone for
    /// them (`undoInterruptEINTR`); numbering them here turns that on.
    public static let syscallTable = SyscallNumbering([
        .read: 0, .write: 1, .open: 2, .close: 3, .stat: 4, .fstat: 5,
        .lstat: 6, .poll: 7, .lseek: 8, .mmap: 9, .mprotect: 10, .munmap: 11,
        .brk: 12, .rt_sigaction: 13, .rt_sigprocmask: 14, .rt_sigreturn: 15, .ioctl: 16, .pread64: 17,
        .pwrite64: 18, .readv: 19, .writev: 20, .access: 21, .pipe: 22, .select: 23,
        .sched_yield: 24, .mremap: 25, .msync: 26, .mincore: 27, .madvise: 28, .shmat: 30,
        .shmctl: 31, .dup: 32, .dup2: 33, .pause: 34, .nanosleep: 35, .getitimer: 36,
        .alarm: 37, .setitimer: 38, .getpid: 39, .sendfile: 40, .socket: 41, .connect: 42,
        .accept: 43, .sendto: 44, .recvfrom: 45, .sendmsg: 46, .recvmsg: 47, .shutdown: 48,
        .bind: 49, .listen: 50, .getsockname: 51, .getpeername: 52, .socketpair: 53, .setsockopt: 54,
        .getsockopt: 55, .clone: 56, .fork: 57, .vfork: 58, .execve: 59, .exit: 60,
        .wait4: 61, .kill: 62, .uname: 63, .semctl: 66, .shmdt: 67, .msgrcv: 70,
        .msgctl: 71, .fcntl: 72, .flock: 73, .fsync: 74, .fdatasync: 75, .truncate: 76,
        .ftruncate: 77, .getdents: 78, .getcwd: 79, .chdir: 80, .fchdir: 81, .rename: 82,
        .mkdir: 83, .rmdir: 84, .creat: 85, .link: 86, .unlink: 87, .symlink: 88,
        .readlink: 89, .chmod: 90, .fchmod: 91, .chown: 92, .fchown: 93, .lchown: 94,
        .umask: 95, .gettimeofday: 96, .getrlimit: 97, .getrusage: 98, .sysinfo: 99, .times: 100,
        .ptrace: 101, .getuid: 102, .getgid: 104, .setuid: 105, .setgid: 106, .geteuid: 107, .getegid: 108,
        .setpgid: 109, .getppid: 110, .getpgrp: 111, .setsid: 112, .setreuid: 113, .setregid: 114,
        .getgroups: 115, .setresuid: 117, .getresuid: 118, .setresgid: 119, .getresgid: 120, .getpgid: 121,
        .getsid: 124, .capget: 125, .rt_sigpending: 127, .rt_sigtimedwait: 128, .rt_sigqueueinfo: 129,
        .sigaltstack: 131,
        .statfs: 137, .fstatfs: 138, .getpriority: 140, .setpriority: 141, .sched_setparam: 142, .sched_getparam: 143,
        .sched_setscheduler: 144, .sched_getscheduler: 145, .mlock: 149, .munlock: 150, .mlockall: 151,
        .munlockall: 152,
        .prctl: 157, .arch_prctl: 158, .sync: 162, .mount: 165, .umount2: 166, .sethostname: 170,
        .gettid: 186, .tkill: 200, .time: 201, .futex: 202, .sched_setaffinity: 203, .sched_getaffinity: 204,
        .io_getevents: 208, .getdents64: 217, .set_tid_address: 218, .restart_syscall: 219, .fadvise64: 221,
        .timer_gettime: 224,
        .clock_gettime: 228, .clock_getres: 229, .clock_nanosleep: 230, .exit_group: 231, .epoll_wait: 232,
        .epoll_ctl: 233,
        .tgkill: 234, .get_mempolicy: 239, .waitid: 247, .inotify_add_watch: 254, .inotify_rm_watch: 255, .openat: 257,
        .mkdirat: 258, .fchownat: 260, .newfstatat: 262, .unlinkat: 263, .renameat: 264, .linkat: 265,
        .symlinkat: 266, .readlinkat: 267, .fchmodat: 268, .faccessat: 269, .pselect6: 270, .ppoll: 271,
        .set_robust_list: 273, .get_robust_list: 274, .splice: 275, .utimensat: 280, .epoll_pwait: 281,
        .timerfd_create: 283,
        .fallocate: 285, .timerfd_settime: 286, .timerfd_gettime: 287, .accept4: 288, .signalfd4: 289, .eventfd2: 290,
        .epoll_create1: 291, .dup3: 292, .pipe2: 293, .inotify_init1: 294, .preadv: 295, .pwritev: 296,
        .rt_tgsigqueueinfo: 297, .recvmmsg: 299, .prlimit64: 302, .syncfs: 306, .sendmmsg: 307, .getcpu: 309,
        .process_vm_readv: 310, .renameat2: 316, .seccomp: 317, .getrandom: 318, .memfd_create: 319, .execveat: 322,
        .membarrier: 324, .preadv2: 327, .pwritev2: 328, .pkey_mprotect: 329, .statx: 332, .rseq: 334,
        .pidfd_send_signal: 424, .pidfd_open: 434, .clone3: 435, .close_range: 436, .openat2: 437, .faccessat2: 439,
        .epoll_pwait2: 441,
        .io_uring_setup: 425, .io_uring_enter: 426, .io_uring_register: 427,
        .rt_sigsuspend: 130,
    ])

    public static let layout = ABILayout(
        stat: 144, statfs: 120, statx: 256, utsname: 390, sysinfo: 112, rusage: 144, rlimit: 16,
        kernelSigaction: 32, stackT: 24, timespec: 16, timeval: 16, itimerval: 32, itimerspec: 32,
        siginfo: 128, epollEvent: 12, pollfd: 8, ioEvent: 32, flock: 32, tms: 32, iovec: 16,
        msghdr: 56, mmsghdr: 64, pointer: 8)

    /// `syscall` is two bytes: stepping back over it re-runs the call.
    public static func rewindingSyscall(_ regs: Registers) -> Registers {
        var r = regs.raw
        r.rip &-= 2
        r.rax = r.orig_rax
        return Registers(raw: r)
    }

    /// `orig_rax = -1`: released from the entry stop, the kernel runs no
    /// call and leaves rax (the number) as it is; no restart fix-up either.
    public static func abandoningSyscall(_ regs: Registers) -> Registers {
        var r = rewindingSyscall(regs).raw
        r.orig_rax = UInt64.max
        return Registers(raw: r)
    }

    public static func settingSyscallResult(_ regs: Registers, _ value: Int64) -> Registers {
        var r = regs.raw
        r.rax = UInt64(bitPattern: value)
        return Registers(raw: r)
    }

    public static func settingSyscallArgument(_ regs: Registers, _ index: Int, to value: UInt64) -> Registers {
        var r = regs.raw
        switch index {
        case 0: r.rdi = value
        case 1: r.rsi = value
        case 2: r.rdx = value
        case 3: r.r10 = value
        case 4: r.r8 = value
        default: r.r9 = value
        }
        return Registers(raw: r)
    }
}
