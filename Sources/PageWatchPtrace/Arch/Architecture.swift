import PageWatchAddressSpace

/// What generic code needs to know about an instruction set. Generic code
/// never names a register or a syscall number; each arch implements this once
/// in its own file (`X86_64.swift`; `AArch64.swift` to follow).
public protocol Architecture {
    associatedtype Registers: Sendable

    static var name: String { get }

    static func readRegisters(tid: Int32) throws -> Registers
    static func writeRegisters(_ regs: Registers, tid: Int32) throws

    static func instructionPointer(_ regs: Registers) -> RemoteAddress
    /// The instruction pointer alone, read or written without the whole set.
    static func readInstructionPointer(tid: Int32) throws -> RemoteAddress
    static func writeInstructionPointer(_ ip: RemoteAddress, tid: Int32) throws
    static func stackPointer(_ regs: Registers) -> RemoteAddress
    /// The thread pointer (TLS base), where glibc and musl keep the thread control block.
    static func threadPointer(_ regs: Registers) -> RemoteAddress
    /// The syscall number the thread entered (x86_64 `orig_rax`), or -1 outside a syscall.
    static func syscallNumber(_ regs: Registers) -> Int64
    /// The first six syscall arguments as the thread entered the call.
    static func syscallArguments(_ regs: Registers) -> [UInt64]

    /// Registers for running syscall `number(arguments)` at `gadget`. Marks the
    /// thread as not being inside a syscall so the kernel applies no restart
    /// logic to the injected call.
    static func preparingSyscall(_ regs: Registers, number: Int64, arguments: [UInt64], gadget: RemoteAddress)
        -> Registers
    /// The injected call's raw return value (a negative errno on failure).
    static func syscallResult(_ regs: Registers) -> Int64

    /// The syscall instruction, searched for in the tracee's code and
    /// single-stepped before the scratch page exists (and to remove it).
    static var syscallInstruction: [UInt8] { get }
    /// The scratch page's gadget, which stops its thread with SIGSTOP (not a
    /// breakpoint, fatal once untraced); where it stops; its call's result there.
    static var scratchGadget: [UInt8] { get }
    static var scratchGadgetStopOffset: UInt64 { get }
    /// The instruction pointer just past the scratch gadget's call (what a
    /// seccomp filter sees for it).
    static var scratchGadgetSyscallEnd: UInt64 { get }
    static func scratchGadgetResult(_ regs: Registers) -> Int64
    /// All registers as words (the guardian's journal), and back.
    static func words(of regs: Registers) -> [UInt64]
    static func registers(words: [UInt64]) -> Registers?
    static var registerWordCount: Int { get }

    /// The one-stop fault path (`FaultTrampoline`): where the scratch pages
    /// are asked for, each slot's code size, and the code itself.
    static var scratchAddressHint: UInt64 { get }
    static var trampolineSlotSize: UInt64 { get }
    /// The instruction pointer's offset in a slot once its syscall has run.
    static var trampolineSyscallEnd: UInt64 { get }
    static var trampolineResultWord: Int { get }
    static var trampolineWordCount: Int { get }
    static func trampolineCode(at code: RemoteAddress, data: RemoteAddress) -> [UInt8]
    /// What the tracer writes at the slot's data word `trampolineEntryWord`
    /// to send a thread through it (the slot saves the registers itself).
    static var trampolineEntryWord: Int { get }
    static func trampolineEntryWords(
        mprotect start: UInt64, length: UInt64, protection: UInt64,
        returningTo ip: RemoteAddress
    ) -> [UInt64]
    /// The registers of a thread stopped at `offset` in a slot's code, once
    /// the slot's work is done or undone: back at its faulting instruction.
    static func leavingTrampoline(_ regs: Registers, words: [UInt64], offset: UInt64) -> Registers

    /// The sweep's batch loop (`RemoteSyscall.mprotectBatch`): its code, where
    /// it sits in the code page, the offset after its breakpoint, and the
    /// registers that run it over `count` entries at `array`.
    static var batchCode: [UInt8] { get }
    static var batchCodeOffset: UInt64 { get }
    static var batchTrapOffset: UInt64 { get }
    static func preparingBatch(_ regs: Registers, array: RemoteAddress, count: Int, code: RemoteAddress) -> Registers

    /// Bytes below the stack pointer a leaf function may use without moving it.
    static var redZone: UInt64 { get }

    /// `AUDIT_ARCH_*` as seccomp's `seccomp_data.arch` reports it.
    static var auditArch: UInt32 { get }
    /// This architecture's numbers of the calls of `SyscallTable`, indexed once.
    static var syscallTable: SyscallNumbering { get }
    /// Sizes of the kernel structures syscalls copy out.
    static var layout: ABILayout { get }
    /// Registers that make the thread execute its syscall instruction again
    /// (after PageWatch ran code at a syscall-entry stop, abandoning the call).
    static func rewindingSyscall(_ regs: Registers) -> Registers
    /// At a syscall-entry stop, before PageWatch runs code there: the call
    /// skipped (no number) and the thread already rewound, so that resumed
    /// by anyone (PageWatch, or the kernel once PageWatch died) it executes
    /// its syscall instruction again.
    static func abandoningSyscall(_ regs: Registers) -> Registers
    /// Registers with the syscall's return value set (x86_64 rax).
    static func settingSyscallResult(_ regs: Registers, _ value: Int64) -> Registers
    static func settingSyscallArgument(_ regs: Registers, _ index: Int, to value: UInt64) -> Registers
}

/// Sizes, in bytes, of the user structures the kernel writes, for one ABI.
public struct ABILayout: Sendable {
    public var stat, statfs, statx, utsname, sysinfo, rusage, rlimit, kernelSigaction, stackT: UInt64
    public var timespec, timeval, itimerval, itimerspec, siginfo, epollEvent, pollfd, ioEvent, flock: UInt64
    public var tms, iovec, msghdr, mmsghdr, pointer: UInt64
}

extension Architecture {
    public static func number(_ call: Syscall) -> Int64? { syscallTable.number(call) }

    /// The table's row of a syscall number, nil for a call not in it.
    public static func row(number: Int64) -> SyscallRow? { syscallTable.row(number: number) }

    /// Number → name, for the calls PageWatch handles by name at their entry
    /// (`SyscallKind.memory` and `.named`); nil for the others, which are
    /// let through, io_uring's, or handled as unknown.
    public static func syscall(number: Int64) -> Syscall? {
        guard let row = syscallTable.row(number: number), row.kind == .memory || row.kind == .named else { return nil }
        return row.call
    }

    /// The numbers PageWatch's injected code uses.
    public static var syscalls: SyscallNumbers { syscallTable.injected }
}

/// The syscall numbers PageWatch injects (from the arch's `syscallTable`).
public struct SyscallNumbers: Sendable {
    public var getpid: Int64
    public var mmap: Int64
    public var munmap: Int64
    public var mprotect: Int64
    /// For populating one page per mapping before it is armed (`RemoteSyscall.batch`).
    public var madvise: Int64
    /// For the slots' shared data page (`SharedSlotData`).
    public var memfdCreate: Int64
    public var ftruncate: Int64
    public var close: Int64
}

#if arch(x86_64)
    /// The architecture this build of PageWatch traces.
    public typealias HostArchitecture = X86_64
#else
    #error("PageWatch supports x86_64 only so far; add Arch/<arch>.swift implementing Architecture")
#endif
