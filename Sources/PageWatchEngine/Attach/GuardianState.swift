internal import CPtrace
import Glibc
import PageWatchAddressSpace
import PageWatchPtrace

/// What a guardian needs to undo PageWatch in an attached process if
/// PageWatch dies: the gadget page and every region PageWatch
/// may have armed, with the program's own protection. Lives in a memfd
/// shared by PageWatch (writer) and the guardian (reader), as a seqlock:
/// words [magic, sequence, pid, gadget, count, (start, end, protection)...];
/// the sequence is odd while PageWatch writes. The last 64 words are the
/// injection journal: [tid, the thread's saved registers...] while a thread
/// runs an injected call (tid 0 otherwise), so that the guardian can put
/// back a thread PageWatch left inside one.
final class GuardianState: InjectionJournal, @unchecked Sendable {
    static let size = 1 << 20
    static let magic: UInt64 = 0x3144_5241_5547_5750  // "PWGUARD1"
    static let capacity = (size / 8 - 5 - journalWords) / 3
    static let journalWords = 64
    static let journalAt = size / 8 - journalWords

    let fd: Int32
    private let words: UnsafeMutablePointer<UInt64>

    /// A new, empty state (PageWatch's side).
    convenience init(pid: Int32) throws {
        let fd = pw_shared_memory("pagewatch-guardian", Self.size)
        if fd < 0 { throw TraceError.call("memfd_create", Errno(-fd), tid: getpid()) }
        try self.init(fd: fd)
        words[0] = Self.magic
        words[2] = UInt64(UInt32(bitPattern: pid))
    }

    /// The state behind an inherited descriptor (the guardian's side).
    init(fd: Int32) throws {
        guard let p = mmap(nil, Self.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            throw TraceError.call("mmap", Errno(errno), tid: getpid())
        }
        self.fd = fd
        words = p.bindMemory(to: UInt64.self, capacity: Self.size / 8)
    }

    /// Replaces the published state (at most `capacity` regions: a larger
    /// set keeps the first ones, the guardian restores those).
    func publish(gadget: RemoteAddress?, regions: [(AddressRange, Protection)]) {
        let sequence = words[1]
        pw_store_release(words + 1, sequence | 1)
        words[3] = gadget?.value ?? 0
        let count = min(regions.count, Self.capacity)
        for (i, (range, protection)) in regions.prefix(count).enumerated() {
            words[5 + 3 * i] = range.start.value
            words[6 + 3 * i] = range.end.value
            words[7 + 3 * i] = UInt64(protection.rawValue)
        }
        words[4] = UInt64(count)
        pw_store_release(words + 1, (sequence | 1) + 1)
    }

    /// `tid` is about to run injected code; `saved` its registers (words).
    /// The registers first, the tid last (release): a tid is never seen
    /// with another thread's registers.
    func injectionStarted(tid: Int32, saved: [UInt64]) {
        precondition(saved.count < Self.journalWords)
        pw_store_release(words + Self.journalAt, 0)
        for (i, w) in saved.enumerated() { words[Self.journalAt + 1 + i] = w }
        pw_store_release(words + Self.journalAt, UInt64(UInt32(bitPattern: tid)))
    }

    func injectionEnded() {
        pw_store_release(words + Self.journalAt, 0)
    }

    /// The thread inside an injected call and its saved registers, if any.
    func injection(registerWords: Int) -> (tid: Int32, saved: [UInt64])? {
        let tid = Int32(truncatingIfNeeded: pw_load_acquire(words + Self.journalAt))
        guard tid > 0 else { return nil }
        return (tid, (0..<registerWords).map { words[Self.journalAt + 1 + $0] })
    }

    /// A consistent snapshot, or nil if the memory is not a state.
    func snapshot() -> (pid: Int32, gadget: RemoteAddress?, regions: [(AddressRange, Protection)])? {
        guard words[0] == Self.magic else { return nil }
        for _ in 0..<1000 {
            let before = pw_load_acquire(words + 1)
            if before & 1 == 1 { continue }  // PageWatch died mid-write, or is writing: retry
            let count = min(Int(words[4]), Self.capacity)
            let regions = (0..<count).map { i in
                (
                    AddressRange(start: RemoteAddress(words[5 + 3 * i]), end: RemoteAddress(words[6 + 3 * i])),
                    Protection(rawValue: Int32(truncatingIfNeeded: words[7 + 3 * i]))
                )
            }
            let gadget = words[3]
            if pw_load_acquire(words + 1) == before {
                return (Int32(truncatingIfNeeded: words[2]), gadget == 0 ? nil : RemoteAddress(gadget), regions)
            }
        }
        return nil
    }
}
