/// A seccomp-bpf program that stops the tracee (`SECCOMP_RET_TRACE`) at the
/// entry of the listed syscalls and lets every other call run at full speed
/// (strace's `--seccomp-bpf`). Inherited by every descendant and never
/// removable: every descendant must stay traced (hazard 8).
public struct SeccompFilter: Sendable {
    public struct Instruction: Equatable, Sendable {
        public var code: UInt16, jt: UInt8, jf: UInt8, k: UInt32
    }

    public let instructions: [Instruction]

    static let ldAbsW: UInt16 = 0x20      // BPF_LD | BPF_W | BPF_ABS
    static let jeqK: UInt16 = 0x15        // BPF_JMP | BPF_JEQ | BPF_K
    static let retK: UInt16 = 0x06        // BPF_RET | BPF_K
    static let allow: UInt32 = 0x7fff_0000  // SECCOMP_RET_ALLOW
    static let trace: UInt32 = 0x7ff0_0000  // SECCOMP_RET_TRACE

    /// Traces `syscalls` of `auditArch`; everything else, and any other ABI, runs freely.
    public init(auditArch: UInt32, tracing syscalls: [Int64]) {
        let numbers = Array(Set(syscalls)).sorted()
        precondition(numbers.count < 250, "one BPF jump reaches at most 255 instructions")
        var p: [Instruction] = []
        // seccomp_data: nr at offset 0, arch at offset 4.
        p.append(Instruction(code: Self.ldAbsW, jt: 0, jf: 0, k: 4))
        // Another ABI (x32, ia32): skip to ALLOW, which comes after the list.
        p.append(Instruction(code: Self.jeqK, jt: 0, jf: UInt8(numbers.count + 1), k: auditArch))
        p.append(Instruction(code: Self.ldAbsW, jt: 0, jf: 0, k: 0))
        for (i, nr) in numbers.enumerated() {
            // Equal: jump over the remaining tests and ALLOW, to TRACE.
            p.append(Instruction(code: Self.jeqK, jt: UInt8(numbers.count - i), jf: 0, k: UInt32(nr)))
        }
        p.append(Instruction(code: Self.retK, jt: 0, jf: 0, k: Self.allow))
        p.append(Instruction(code: Self.retK, jt: 0, jf: 0, k: Self.trace))
        instructions = p
    }

    /// What the filter returns for syscall `nr` of `arch`: true = trace.
    /// (An interpreter of the program above, for tests.)
    public func traces(nr: Int64, arch: UInt32) -> Bool {
        var acc: UInt32 = 0
        var pc = 0
        while pc < instructions.count {
            let i = instructions[pc]
            switch i.code {
            case Self.ldAbsW: acc = i.k == 4 ? arch : UInt32(truncatingIfNeeded: nr); pc += 1
            case Self.jeqK: pc += 1 + Int(acc == i.k ? i.jt : i.jf)
            case Self.retK: return i.k == Self.trace
            default: return false
            }
        }
        return false
    }
}
