import PageWatchAddressSpace

/// A seccomp-bpf program that stops the tracee (`SECCOMP_RET_TRACE`) at the
/// entry of syscalls and lets the listed harmless ones run at full speed
/// (strace's `--seccomp-bpf` is the precedent). Inherited by every descendant and never
/// removable: every descendant must stay traced.
public struct SeccompFilter: Sendable {
    public struct Instruction: Equatable, Sendable {
        public var code: UInt16, jt: UInt8, jf: UInt8, k: UInt32
    }

    public let instructions: [Instruction]

    static let ldAbsW: UInt16 = 0x20  // BPF_LD | BPF_W | BPF_ABS
    static let jeqK: UInt16 = 0x15  // BPF_JMP | BPF_JEQ | BPF_K
    static let jgeK: UInt16 = 0x35  // BPF_JMP | BPF_JGE | BPF_K
    static let jsetK: UInt16 = 0x45  // BPF_JMP | BPF_JSET | BPF_K
    static let retK: UInt16 = 0x06  // BPF_RET | BPF_K
    static let allow: UInt32 = 0x7fff_0000  // SECCOMP_RET_ALLOW
    static let trace: UInt32 = 0x7ff0_0000  // SECCOMP_RET_TRACE

    static let aluAndK: UInt16 = 0x54  // BPF_ALU | BPF_AND | BPF_K

    /// Traces every syscall of `auditArch` except `allowed`, and `futex`
    /// only when it is shared (FUTEX_PRIVATE_FLAG, 0x80, clear in args[1])
    /// or its operation (args[1] & 0x7f) is `futexWakeOp`.
    /// `scratch`: calls made from there (PageWatch's own code in the
    /// tracee: the fault trampoline's `mprotect`) run untraced. It must not
    /// cross a 4 GiB boundary (the filter compares the two 32-bit halves).
    public init(
        auditArch: UInt32, allowing allowed: [Int64], futex: Int64, futexWakeOp: UInt32,
        scratch: AddressRange? = nil
    ) {
        let numbers = Array(Set(allowed)).sorted()
        precondition(numbers.count < 230, "one BPF jump reaches at most 255 instructions")
        let n = numbers.count
        var p: [Instruction] = []
        // 0: arch; 1: other ABI → ALLOW; 2..<7: instruction pointer in scratch → ALLOW;
        // 7: nr; 8: futex → FUTEX; 9..<9+n: allowed → ALLOW;
        // 9+n: TRACE; 10+n: ALLOW; 11+n: FUTEX: args[1] low word without 0x80 → TRACE,
        // else & 0x7f == op ? TRACE : ALLOW.
        let allowAt = 10 + n, futexAt = 11 + n
        func jump(from i: Int, to t: Int) -> UInt8 { UInt8(t - i - 1) }
        p.append(Instruction(code: Self.ldAbsW, jt: 0, jf: 0, k: 4))
        p.append(Instruction(code: Self.jeqK, jt: 0, jf: jump(from: 1, to: allowAt), k: auditArch))
        // seccomp_data.instruction_pointer at offset 8: low word, then high word.
        let start = scratch?.start.value ?? 0, end = scratch?.end.value ?? 0
        precondition(start >> 32 == (end &- 1) >> 32 || scratch == nil, "scratch crosses a 4 GiB boundary")
        p.append(Instruction(code: Self.ldAbsW, jt: 0, jf: 0, k: 12))
        p.append(
            Instruction(code: Self.jeqK, jt: 0, jf: jump(from: 3, to: 7), k: UInt32(truncatingIfNeeded: start >> 32)))
        p.append(Instruction(code: Self.ldAbsW, jt: 0, jf: 0, k: 8))
        p.append(Instruction(code: Self.jgeK, jt: 0, jf: jump(from: 5, to: 7), k: UInt32(truncatingIfNeeded: start)))
        p.append(
            Instruction(
                code: Self.jgeK, jt: jump(from: 6, to: 7), jf: jump(from: 6, to: allowAt),
                k: UInt32(truncatingIfNeeded: end)))
        p.append(Instruction(code: Self.ldAbsW, jt: 0, jf: 0, k: 0))
        p.append(Instruction(code: Self.jeqK, jt: jump(from: 8, to: futexAt), jf: 0, k: UInt32(futex)))
        for (i, nr) in numbers.enumerated() {
            p.append(Instruction(code: Self.jeqK, jt: jump(from: 9 + i, to: allowAt), jf: 0, k: UInt32(nr)))
        }
        p.append(Instruction(code: Self.retK, jt: 0, jf: 0, k: Self.trace))
        p.append(Instruction(code: Self.retK, jt: 0, jf: 0, k: Self.allow))
        // seccomp_data.args[1] is at offset 16 + 8; its low 32 bits first (little-endian).
        p.append(Instruction(code: Self.ldAbsW, jt: 0, jf: 0, k: 24))
        p.append(Instruction(code: Self.jsetK, jt: 0, jf: 2, k: 0x80))
        p.append(Instruction(code: Self.aluAndK, jt: 0, jf: 0, k: 0x7f))
        p.append(Instruction(code: Self.jeqK, jt: 0, jf: 1, k: futexWakeOp))
        p.append(Instruction(code: Self.retK, jt: 0, jf: 0, k: Self.trace))
        p.append(Instruction(code: Self.retK, jt: 0, jf: 0, k: Self.allow))
        instructions = p
    }

    /// What the filter returns for syscall `nr` of `arch` (args[1] = `arg1`)
    /// made from `ip`: true = trace. For tests.
    public func traces(nr: Int64, arch: UInt32, arg1: UInt64 = 0, ip: UInt64 = 0) -> Bool {
        let data = SeccompData(
            nr: Int32(truncatingIfNeeded: nr), arch: arch, instructionPointer: ip,
            arguments: [0, arg1, 0, 0, 0, 0])
        return Self.run(instructions, on: data) == Self.trace
    }

    /// The instructions of a `struct sock_filter` array as the tracee holds it.
    public static func decode(_ bytes: [UInt8]) -> [Instruction] {
        stride(from: 0, to: bytes.count - bytes.count % 8, by: 8).map { o in
            Instruction(
                code: UInt16(bytes[o]) | UInt16(bytes[o + 1]) << 8, jt: bytes[o + 2], jf: bytes[o + 3],
                k: (0..<4).reduce(UInt32(0)) { $0 | UInt32(bytes[o + 4 + $1]) << (8 * $1) })
        }
    }

    /// Runs a seccomp classic-BPF program on `data` as the kernel would
    /// (the instructions `seccomp_check_filter` accepts) and returns its
    /// `SECCOMP_RET_*` value. A program the kernel would reject (a bad load,
    /// a jump or run past the end, division by zero) gives KILL_PROCESS.
    public static func run(_ program: [Instruction], on data: SeccompData) -> UInt32 {
        let killProcess: UInt32 = 0x8000_0000
        let bytes = data.bytes
        var a: UInt32 = 0, x: UInt32 = 0
        var scratch = [UInt32](repeating: 0, count: 16)
        var pc = 0
        while pc < program.count {
            let i = program[pc]
            pc += 1
            let operand = i.code & 0x08 != 0 ? x : i.k  // BPF_X or BPF_K
            switch i.code & 0x07 {  // class
            case 0x00, 0x01:  // LD, LDX
                let value: UInt32
                switch i.code & 0xe0 {  // mode (size must be W)
                case 0x00: value = i.k  // IMM
                case 0x20:  // ABS
                    guard i.code & 0x18 == 0, i.k % 4 == 0, i.k < 64 else { return killProcess }
                    value = (0..<4).reduce(UInt32(0)) { $0 | UInt32(bytes[Int(i.k) + $1]) << (8 * $1) }
                case 0x60: guard i.k < 16 else { return killProcess }; value = scratch[Int(i.k)]  // MEM
                case 0x80: value = 64  // LEN
                default: return killProcess
                }
                if i.code & 0x07 == 0 { a = value } else { x = value }
            case 0x02, 0x03:  // ST, STX
                guard i.k < 16 else { return killProcess }
                scratch[Int(i.k)] = i.code & 0x07 == 0x02 ? a : x
            case 0x04:  // ALU
                switch i.code & 0xf0 {
                case 0x00: a = a &+ operand
                case 0x10: a = a &- operand
                case 0x20: a = a &* operand
                case 0x30: guard operand != 0 else { return killProcess }; a /= operand
                case 0x40: a |= operand
                case 0x50: a &= operand
                case 0x60: a = operand >= 32 ? 0 : a << operand
                case 0x70: a = operand >= 32 ? 0 : a >> operand
                case 0x80: a = 0 &- a
                case 0x90: guard operand != 0 else { return killProcess }; a %= operand
                case 0xa0: a ^= operand
                default: return killProcess
                }
            case 0x05:  // JMP
                let taken: Bool
                switch i.code & 0xf0 {
                case 0x00: pc += Int(i.k); continue  // JA
                case 0x10: taken = a == operand
                case 0x20: taken = a > operand
                case 0x30: taken = a >= operand
                case 0x40: taken = a & operand != 0
                default: return killProcess
                }
                pc += Int(taken ? i.jt : i.jf)
            case 0x06:  // RET
                return i.code & 0x18 == 0x10 ? a : i.k
            default:  // MISC
                if i.code & 0xf8 == 0x80 { a = x } else { x = a }  // TXA, TAX
            }
        }
        return killProcess
    }

    /// Whether a filter's return value lets the call run: ALLOW, LOG, or
    /// TRACE (the tracer is PageWatch). KILL, TRAP, ERRNO and USER_NOTIF do not.
    public static func lets(_ action: UInt32) -> Bool {
        [allow, trace, 0x7ffc_0000].contains(action & 0xffff_0000)
    }

    /// The name of a filter's action, for messages.
    public static func actionName(_ action: UInt32) -> String {
        switch action & 0xffff_0000 {
        case 0x8000_0000: return "SECCOMP_RET_KILL_PROCESS"
        case 0: return "SECCOMP_RET_KILL_THREAD"
        case 0x0003_0000: return "SECCOMP_RET_TRAP"
        case 0x0005_0000: return "SECCOMP_RET_ERRNO"
        case 0x7fc0_0000: return "SECCOMP_RET_USER_NOTIF"
        case trace: return "SECCOMP_RET_TRACE"
        case 0x7ffc_0000: return "SECCOMP_RET_LOG"
        case allow: return "SECCOMP_RET_ALLOW"
        default: return "action 0x" + String(action, radix: 16)
        }
    }
}

/// `struct seccomp_data`: what a filter reads of a syscall.
public struct SeccompData: Sendable {
    public var nr: Int32
    public var arch: UInt32
    public var instructionPointer: UInt64
    public var arguments: [UInt64]

    public init(nr: Int32, arch: UInt32, instructionPointer: UInt64, arguments: [UInt64]) {
        self.nr = nr
        self.arch = arch
        self.instructionPointer = instructionPointer
        self.arguments = arguments
    }

    /// The 64 bytes a filter loads from, little-endian.
    var bytes: [UInt8] {
        func le(_ v: UInt64, _ n: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
        var b = le(UInt64(UInt32(bitPattern: nr)), 4) + le(UInt64(arch), 4) + le(instructionPointer, 8)
        for i in 0..<6 { b += le(i < arguments.count ? arguments[i] : 0, 8) }
        return b
    }
}
