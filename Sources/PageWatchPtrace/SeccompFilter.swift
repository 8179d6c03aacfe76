/// A seccomp-bpf program that stops the tracee (`SECCOMP_RET_TRACE`) at the
/// entry of syscalls and lets the listed harmless ones run at full speed
/// (strace's `--seccomp-bpf` is the precedent). Inherited by every descendant and never
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

    static let aluAndK: UInt16 = 0x54     // BPF_ALU | BPF_AND | BPF_K

    /// Traces every syscall of `auditArch` except `allowed`, and `futex`
    /// only when its operation (args[1] & 0x7f) is `futexWakeOp`.
    public init(auditArch: UInt32, allowing allowed: [Int64], futex: Int64, futexWakeOp: UInt32) {
        let numbers = Array(Set(allowed)).sorted()
        precondition(numbers.count < 240, "one BPF jump reaches at most 255 instructions")
        let n = numbers.count
        var p: [Instruction] = []
        // 0: arch; 1: other ABI → ALLOW; 2: nr; 3: futex → FUTEX; 4..<4+n: allowed → ALLOW;
        // 4+n: TRACE; 5+n: ALLOW; 6+n: FUTEX: args[1] low word & 0x7f == op ? TRACE : ALLOW.
        let allowAt = 5 + n, futexAt = 6 + n
        func jump(from i: Int, to t: Int) -> UInt8 { UInt8(t - i - 1) }
        p.append(Instruction(code: Self.ldAbsW, jt: 0, jf: 0, k: 4))
        p.append(Instruction(code: Self.jeqK, jt: 0, jf: jump(from: 1, to: allowAt), k: auditArch))
        p.append(Instruction(code: Self.ldAbsW, jt: 0, jf: 0, k: 0))
        p.append(Instruction(code: Self.jeqK, jt: jump(from: 3, to: futexAt), jf: 0, k: UInt32(futex)))
        for (i, nr) in numbers.enumerated() {
            p.append(Instruction(code: Self.jeqK, jt: jump(from: 4 + i, to: allowAt), jf: 0, k: UInt32(nr)))
        }
        p.append(Instruction(code: Self.retK, jt: 0, jf: 0, k: Self.trace))
        p.append(Instruction(code: Self.retK, jt: 0, jf: 0, k: Self.allow))
        // seccomp_data.args[1] is at offset 16 + 8; its low 32 bits first (little-endian).
        p.append(Instruction(code: Self.ldAbsW, jt: 0, jf: 0, k: 24))
        p.append(Instruction(code: Self.aluAndK, jt: 0, jf: 0, k: 0x7f))
        p.append(Instruction(code: Self.jeqK, jt: 0, jf: 1, k: futexWakeOp))
        p.append(Instruction(code: Self.retK, jt: 0, jf: 0, k: Self.trace))
        p.append(Instruction(code: Self.retK, jt: 0, jf: 0, k: Self.allow))
        instructions = p
    }

    /// What the filter returns for syscall `nr` of `arch` (args[1] = `arg1`):
    /// true = trace. An interpreter of the program above, for tests.
    public func traces(nr: Int64, arch: UInt32, arg1: UInt64 = 0) -> Bool {
        var acc: UInt32 = 0
        var pc = 0
        while pc < instructions.count {
            let i = instructions[pc]
            switch i.code {
            case Self.ldAbsW:
                switch i.k {
                case 4: acc = arch
                case 24: acc = UInt32(truncatingIfNeeded: arg1)
                default: acc = UInt32(truncatingIfNeeded: nr)
                }
                pc += 1
            case Self.aluAndK: acc &= i.k; pc += 1
            case Self.jeqK: pc += 1 + Int(acc == i.k ? i.jt : i.jf)
            case Self.retK: return i.k == Self.trace
            default: return false
            }
        }
        return false
    }

}
