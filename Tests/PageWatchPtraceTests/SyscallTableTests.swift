import Glibc
import Testing
import PageWatchAddressSpace
@testable import PageWatchPtrace

/// `SyscallTable` and this architecture's numbering of it.
@Suite struct SyscallTableTests {
    typealias Arch = HostArchitecture
    let numbering = Arch.syscallTable

    @Test func everyCallHasOneRowAndOneName() {
        let calls = SyscallTable.rows.map(\.call)
        #expect(calls.count == Syscall.allCases.count)
        #expect(Set(calls) == Set(Syscall.allCases))
        #expect(Set(SyscallTable.rows.map(\.name)).count == SyscallTable.rows.count)
        for row in SyscallTable.rows { #expect(row.call.row.call == row.call) }
    }

    @Test func numbersAreUniqueAndRoundTrip() {
        let numbered = numbering.numbered
        #expect(Set(numbered.map(\.number)).count == numbered.count)
        for (number, row) in numbered {
            #expect(Arch.number(row.call) == number, "\(row.name)")
            #expect(Arch.row(number: number)?.call == row.call, "\(row.name)")
        }
        for call in Syscall.allCases {
            guard let number = Arch.number(call) else { continue }
            #expect(Arch.row(number: number)?.call == call, "\(call)")
        }
        for outside: Int64 in [-1, Int64(Int32.max), 1 << 40] { #expect(Arch.row(number: outside) == nil) }
    }

    /// Every call is numbered here but those a stop would end with EINTR
    /// that PageWatch never undid for them (see `X86_64.syscallTable`).
    @Test func unnumberedCallsAreKnown() {
        #expect(Set(Syscall.allCases.filter { Arch.number($0) == nil }) == [.semop, .semtimedop])
    }

    @Test func injectedNumbersComeFromTheTable() {
        let s = Arch.syscalls
        #expect(s.getpid == Arch.number(.getpid) && s.mmap == Arch.number(.mmap) && s.munmap == Arch.number(.munmap))
        #expect(s.mprotect == Arch.number(.mprotect) && s.memfdCreate == Arch.number(.memfd_create))
        #expect(s.ftruncate == Arch.number(.ftruncate) && s.close == Arch.number(.close))
    }

    /// `syscall(number:)` names the calls handled by name, and no other.
    @Test func namedLookUpCoversMemoryAndNamedCallsOnly() {
        for (number, row) in numbering.numbered {
            let handledByName = row.kind == .memory || row.kind == .named
            #expect((Arch.syscall(number: number) == row.call) == handledByName, "\(row.name)")
            #expect((Arch.syscall(number: number) == nil) == !handledByName, "\(row.name)")
        }
    }

    /// The size of each kernel structure the table names: from Glibc's
    /// import of the C struct where it has one, else from its fields.
    func abiSize(_ s: KernelStruct) -> Int {
        let word = MemoryLayout<UInt>.size
        switch s {
        case .stat: return MemoryLayout<stat>.size
        // ..., f_fsid, f_namelen, f_frsize, f_flags, f_spare[4]
        case .statfs: return 7 * word + 8 + 3 * word + 4 * word
        case .statx: return 256  // fixed by the kernel ABI (spare fields included)
        case .utsname: return MemoryLayout<utsname>.size
        // uptime, loads[3], six sizes, procs and pad (then aligned), totalhigh, freehigh, mem_unit (then aligned)
        case .sysinfo: return word + 3 * word + 6 * word + 4 + 4 + 2 * word + 4 + 4
        case .rusage: return MemoryLayout<rusage>.size
        case .rlimit: return MemoryLayout<rlimit>.size
        case .kernelSigaction: return 3 * word + 8  // handler, flags, restorer, the kernel's 8-byte sigset
        case .stackT: return MemoryLayout<stack_t>.size
        case .timespec: return MemoryLayout<timespec>.size
        case .timeval: return MemoryLayout<timeval>.size
        case .itimerval: return MemoryLayout<itimerval>.size
        case .itimerspec: return MemoryLayout<itimerspec>.size
        case .siginfo: return MemoryLayout<siginfo_t>.size
        case .epollEvent: return 4 + 8  // packed on x86_64
        case .pollfd: return MemoryLayout<pollfd>.size
        case .ioEvent: return 4 * 8  // linux/aio_abi.h: data, obj, res, res2
        case .flock: return MemoryLayout<flock>.size
        case .tms: return MemoryLayout<tms>.size
        case .iovec: return MemoryLayout<iovec>.size
        case .msghdr: return MemoryLayout<msghdr>.size
        case .mmsghdr: return MemoryLayout<msghdr>.size + 8  // msg_len, padded
        case .pointer: return MemoryLayout<UnsafeRawPointer>.size
        case .gid: return MemoryLayout<gid_t>.size
        case .capHeader: return 2 * 4  // version, pid
        case .capData: return 2 * 3 * 4  // _LINUX_CAPABILITY_U32S_3 of effective, permitted, inheritable
        case .bytes(let n): return Int(n)
        }
    }

    func structs(_ output: SyscallOutput) -> [KernelStruct] {
        switch output {
        case .block(_, .fixed(let s)), .block(_, .array(_, let s, _)): return [s]
        case .block: return []
        case .iovecs: return [.iovec]
        case .msghdr: return [.msghdr]
        case .mmsghdrs: return [.msghdr, .mmsghdr]
        case .socketAddress, .optionValue: return []
        case .unlessFlag(_, _, let inner): return structs(inner)
        }
    }

    @Test func everyRowsOutputSizesMatchTheABI() {
        for row in SyscallTable.rows {
            guard case .outputs(let outputs) = row.writes else { continue }
            #expect(!outputs.isEmpty, "\(row.name)")
            for s in outputs.flatMap(structs) {
                #expect(Arch.layout.size(of: s) == UInt64(abiSize(s)), "\(row.name): \(s)")
            }
        }
        // The sizes the rows do not name but the engine reads from the layout.
        for s: KernelStruct in [
            .stat, .statfs, .statx, .utsname, .sysinfo, .rusage, .rlimit, .kernelSigaction, .stackT,
            .timespec, .timeval, .itimerval, .itimerspec, .siginfo, .epollEvent, .pollfd, .ioEvent,
            .flock, .tms, .iovec, .msghdr, .mmsghdr, .pointer,
        ] {
            #expect(Arch.layout.size(of: s) == UInt64(abiSize(s)), "\(s)")
        }
    }

    func arguments(_ output: SyscallOutput) -> [Int] {
        switch output {
        case let .block(p, length):
            switch length {
            case .fixed: return [p]
            case .argument(let i), .argumentPlus(let i, _), .array(let i, _, _), .fdSet(let i), .bitmap(let i),
                .pageVector(let i):
                return [p, i]
            }
        case let .iovecs(a, b), let .mmsghdrs(a, b), let .socketAddress(a, b), let .optionValue(a, b): return [a, b]
        case .msghdr(let a): return [a]
        case let .unlessFlag(a, _, inner): return [a] + arguments(inner)
        }
    }

    @Test func outputsNameOnlyTheSixArguments() {
        for row in SyscallTable.rows {
            guard case .outputs(let outputs) = row.writes else { continue }
            for i in outputs.flatMap(arguments) { #expect((0..<6).contains(i), "\(row.name)") }
        }
    }

    /// What an interrupted call writes is known from its arguments alone
    /// (a thread blocked in it is not stopped, so its memory is not read).
    @Test func interruptedOutputsNeedNoTraceeMemory() {
        for row in SyscallTable.rows where row.writesWhenInterrupted == .asOnSuccess {
            guard case .outputs(let outputs) = row.writes else {
                Issue.record("\(row.name): interrupted writes as on success, which are not outputs")
                continue
            }
            let reads = outputs.contains { $0.readsTraceeMemory }
            #expect(!reads, "\(row.name)")
        }
    }

    @Test func kindsAgreeWithWrites() {
        for row in SyscallTable.rows {
            switch row.kind {
            case .harmless: #expect(row.writes == .nothing, "\(row.name)")
            case .memory, .ioUring: #expect(row.writes == .handledByItsOwnCode, "\(row.name)")
            case .unhandled: #expect(row.writes == .unknown, "\(row.name)")
            case .named: break
            }
        }
        #expect(
            Set(SyscallTable.rows.filter { $0.writes == .decodedByCommand }.map(\.call))
                == [.ioctl, .futex, .fcntl, .arch_prctl, .ptrace])
    }

    /// The launch filter, as `ProcessTracker.interceptionFilter` builds it
    /// from the table: it lets through exactly the harmless rows (and
    /// private futexes); everything else, in the table or not, stops.
    @Test func seccompFilterLetsThroughExactlyTheHarmlessRows() {
        let harmless = numbering.numbers(of: .harmless)
        let filter = SeccompFilter(
            auditArch: Arch.auditArch, allowing: harmless, futex: Arch.number(.futex)!,
            futexWakeOp: 5)
        #expect(!harmless.isEmpty)
        for number in Int64(0)..<600 {
            let row = Arch.row(number: number)
            let traced = filter.traces(nr: number, arch: Arch.auditArch)  // futex: shared
            #expect(traced == (row?.kind != .harmless), "\(number) \(row?.name ?? "not in the table")")
        }
        #expect(!filter.traces(nr: Arch.number(.futex)!, arch: Arch.auditArch, arg1: 128))
        for row in SyscallTable.rows where row.kind == .harmless {
            #expect(Arch.number(row.call) != nil, "\(row.name)")
        }
    }

    @Test func endedByStopsAreTheKnownCalls() {
        #expect(
            Set(SyscallTable.rows.filter(\.endedByStop).map(\.call))
                == [.epoll_wait, .epoll_pwait, .epoll_pwait2, .semop, .semtimedop, .rt_sigtimedwait, .io_uring_enter])
    }
}
