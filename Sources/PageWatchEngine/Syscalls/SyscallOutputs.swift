import PageWatchAddressSpace
import PageWatchPtrace

/// The `size`-byte little-endian integer at `offset` of tracee bytes.
func littleEndian(_ bytes: [UInt8], at offset: Int, size: Int = 8) -> UInt64 {
    var v: UInt64 = 0
    for i in 0..<size { v |= UInt64(bytes[offset + i]) << UInt64(8 * i) }
    return v
}

/// The user memory a syscall writes (its output buffers), found from its arguments
/// before it runs (`SyscallRow.writes` of `SyscallTable`). The kernel's copy into a read-only
/// page fails with EFAULT instead of faulting, so these pages must be made
/// writable, and counted dirty, before the call.
struct SyscallOutputs {
    typealias Arch = HostArchitecture
    /// Reads tracee memory (iovec arrays, msghdrs, lengths behind pointers).
    let read: (RemoteAddress, Int) -> [UInt8]

    func word(_ a: UInt64, _ size: Int = 8) -> UInt64 {
        let b = read(RemoteAddress(a), size)
        return b.count == size ? littleEndian(b, at: 0, size: size) : 0
    }

    func block(_ address: UInt64, _ length: UInt64) -> [AddressRange] {
        guard address != 0, length > 0 else { return [] }
        let end = address &+ length
        guard end > address else { return [] }
        return [AddressRange(address, end)]
    }

    /// `iovcnt` iovecs at `iov`: each {base, len}.
    func iovecs(_ iov: UInt64, _ count: UInt64) -> [AddressRange] {
        let n = min(count, 1024)
        let L = Arch.layout
        var out: [AddressRange] = []
        for i in 0..<n {
            let at = iov &+ i &* L.iovec
            out += block(word(at), word(at &+ 8))
        }
        return out
    }

    /// A struct msghdr the kernel fills: name, the iovecs, control, and the
    /// header's own namelen/controllen/flags fields.
    func msghdr(_ p: UInt64) -> [AddressRange] {
        guard p != 0 else { return [] }
        let name = word(p), namelen = word(p &+ 8, 4)
        let iov = word(p &+ 16), iovlen = word(p &+ 24)
        let control = word(p &+ 32), controllen = word(p &+ 40)
        return block(p, Arch.layout.msghdr) + block(name, namelen) + iovecs(iov, iovlen) + block(control, controllen)
    }

    /// A socket address and its length word (accept, getsockname, recvfrom...).
    func sockaddr(_ address: UInt64, _ lengthPointer: UInt64) -> [AddressRange] {
        guard address != 0, lengthPointer != 0 else { return [] }
        return block(address, word(lengthPointer, 4)) + block(lengthPointer, 4)
    }

    func fdSets(_ nfds: UInt64, _ sets: [UInt64]) -> [AddressRange] {
        let bytes = (min(nfds, 1 << 20) + 63) / 64 * 8
        return sets.flatMap { block($0, bytes) }
    }

    /// nil: PageWatch does not know what this call writes (an ioctl it cannot
    /// decode, prctl): its exit is checked for EFAULT instead.
    func ranges(_ call: Syscall, _ a: [UInt64]) -> [AddressRange]? {
        switch call.row.writes {
        case .nothing, .handledByItsOwnCode: return []  // the latter: handled elsewhere (ProcessTracker+Syscalls)
        case .unknown: return nil
        case .outputs(let outputs): return outputs.flatMap { ranges($0, a) }
        case .decodedByCommand: return decodedByCommand(call, a)
        }
    }

    /// One output of `SyscallTable`'s rows, from the call's arguments.
    func ranges(_ output: SyscallOutput, _ a: [UInt64]) -> [AddressRange] {
        let L = Arch.layout
        switch output {
        case let .block(pointer, length): return block(a[pointer], self.length(length, a))
        case let .iovecs(array, count): return iovecs(a[array], a[count])
        case let .msghdr(at): return msghdr(a[at])
        case let .mmsghdrs(array, count):
            var out: [AddressRange] = []
            for i in 0..<min(a[count], 1024) {
                let header = a[array] &+ i &* L.mmsghdr
                out += msghdr(header) + block(header &+ L.msghdr, 4)
            }
            return out
        case let .socketAddress(address, lengthWord): return sockaddr(a[address], a[lengthWord])
        case let .optionValue(value, lengthWord):
            return a[lengthWord] == 0 ? [] : block(a[value], word(a[lengthWord], 4)) + block(a[lengthWord], 4)
        case let .unlessFlag(argument, mask, output): return a[argument] & mask != 0 ? [] : ranges(output, a)
        }
    }

    func length(_ length: OutputLength, _ a: [UInt64]) -> UInt64 {
        let L = Arch.layout
        switch length {
        case .fixed(let s): return L.size(of: s)
        case .argument(let i): return a[i]
        case let .argumentPlus(i, header): return a[i] &+ header
        case let .array(count, element, limit):
            return (limit.map { min(a[count], $0) } ?? a[count]) &* L.size(of: element)
        case .fdSet(let nfds): return (min(a[nfds], 1 << 20) + 63) / 64 * 8
        case .bitmap(let bits): return (a[bits] &+ 7) / 8
        case .pageVector(let length): return (a[length] &+ Page.size - 1) / Page.size
        }
    }

    /// The calls whose outputs depend on a command or operation argument
    /// (`SyscallWrites.decodedByCommand`).
    func decodedByCommand(_ call: Syscall, _ a: [UInt64]) -> [AddressRange]? {
        let L = Arch.layout
        switch call {
        case .ioctl: return ioctlOutput(UInt32(truncatingIfNeeded: a[1]), a[2])
        case .futex:
            let op = a[1] & 0x7f
            var words = op == 5 ? block(a[4], 4) : []  // FUTEX_WAKE_OP writes *uaddr2
            if a[1] & 0x80 == 0 {
                // A shared futex on a read-only anonymous page fails with
                // EFAULT (get_futex_key): its words must not stay armed. Not
                // written: reported dirty all the same (pthread_join on a
                // thread PageWatch did not see start, in attach mode).
                words += block(a[0], 4)
                if [3, 4, 11, 12].contains(op) { words += block(a[4], 4) }  // the requeue target
            }
            return words
        case .fcntl:
            switch a[1] {
            case 5, 36: return block(a[2], L.flock)  // F_GETLK, F_OFD_GETLK
            case 16: return block(a[2], 8)  // F_GETOWN_EX
            default: return []
            }
        case .arch_prctl: return a[0] == 0x1003 || a[0] == 0x1004 ? block(a[1], 8) : []  // ARCH_GET_FS/GS
        case .ptrace: return ptraceOutput(a)
        default: preconditionFailure("\(call) has no decoder for SyscallWrites.decodedByCommand")
        }
    }

    /// For a thread blocked in syscall `number(arguments)`: the user memory
    /// the kernel writes if the call is interrupted (nanosleep's remaining
    /// time, select's fd sets and timeout), or nil when PageWatch does not
    /// know the call and must not interrupt it while memory is armed.
    static func writtenOnInterruption(number: Int64, arguments: [UInt64]) -> [AddressRange]? {
        guard let row = Arch.row(number: number), let interrupted = row.writesWhenInterrupted else { return nil }
        switch interrupted {
        case .nothing: return []
        // Those outputs come from the arguments alone (SyscallTableTests): nothing to read.
        case .asOnSuccess: return SyscallOutputs(read: { _, _ in [] }).ranges(row.call, arguments)
        }
    }

    /// ioctl: the size the command encodes when it reads data out (_IOC_READ),
    /// and a few classic terminal requests that encode none.
    func ioctlOutput(_ cmd: UInt32, _ arg: UInt64) -> [AddressRange]? {
        switch cmd {
        case 0x5401: return block(arg, 36)  // TCGETS: struct termios
        case 0x5413: return block(arg, 8)  // TIOCGWINSZ
        case 0x541B, 0x540F, 0x5411, 0x5429: return block(arg, 4)  // FIONREAD, TIOCGPGRP, TIOCOUTQ, TIOCGSID
        case 0x5402, 0x5403, 0x5404, 0x5414, 0x5410, 0x5421, 0x5451, 0x5450:
            return []  // TCSETS*, TIOCSWINSZ, TIOCSPGRP, FIONBIO, FIOCLEX, FIONCLEX: read only
        default: break
        }
        let direction = cmd >> 30, size = UInt64((cmd >> 16) & 0x3fff)
        if direction & 2 != 0 { return block(arg, size) }  // _IOC_READ: the kernel writes `size` bytes
        if direction == 1 { return [] }  // _IOC_WRITE only: reads user memory
        return nil  // no encoding: unknown
    }
}
