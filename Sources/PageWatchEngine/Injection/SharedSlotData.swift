import Glibc
import PageWatchAddressSpace
import PageWatchPtrace

/// The fault slots' data page shared between the tracee and PageWatch:
/// a memfd mapped `MAP_SHARED` at the data page in the tracee
/// and anywhere in PageWatch, so that sending a thread through its slot
/// writes the slot's words with plain stores instead of a
/// `process_vm_writev` (about 2 us a fault).
///
/// Made only where the process has a single thread, stopped: at a new
/// image's exec stop and at a followed fork child's first stop. The memfd
/// has a descriptor in the tracee from `memfd_create` to `close`, a few
/// injected calls; with another thread running, that descriptor could take
/// the number a call of the program would have got (`attach` keeps the
/// private page and `process_vm_writev`).
final class SharedSlotData {
    /// PageWatch's view of the page.
    let local: UnsafeMutableRawPointer

    init(local: UnsafeMutableRawPointer) { self.local = local }

    deinit { munmap(local, Int(Page.size)) }

    /// Maps a fresh memfd over `injector`'s data page in `tid`'s process
    /// (replacing whatever was there: a fork child's copy of its parent's
    /// shared page included) and in PageWatch. The page's old contents are
    /// not kept: call it when no thread of the process is inside a slot.
    /// Signals that arrive meanwhile go to `held`, also when it throws.
    static func share(_ injector: RemoteSyscall, in tid: Int32, held: inout [HeldSignal]) throws -> SharedSlotData {
        typealias Arch = HostArchitecture
        let name = injector.scratch.start + 2 * Page.size  // the batch array page: free between batches
        try Array("pagewatch-slots\0".utf8).withUnsafeBytes { try RemoteSyscall.writeBytes($0, at: name, tid: tid) }
        let mfdCloexec: UInt64 = 1
        let created = try injector.call("memfd_create", Arch.syscalls.memfdCreate, [name.value, mfdCloexec], in: tid)
        held += created.held
        let fd = created.value
        do {
            let shared = try mapBoth(injector, fd: fd, in: tid, held: &held)
            held += try injector.call("close", Arch.syscalls.close, [fd], in: tid).held
            return shared
        } catch {
            if let r = try? injector.call("close", Arch.syscalls.close, [fd], in: tid) { held += r.held }
            throw error
        }
    }

    static func mapBoth(_ injector: RemoteSyscall, fd: UInt64, in tid: Int32, held: inout [HeldSignal]) throws
        -> SharedSlotData
    {
        typealias Arch = HostArchitecture
        let data = injector.trampoline.data
        held += try injector.call("ftruncate", Arch.syscalls.ftruncate, [fd, Page.size], in: tid).held
        // PageWatch's mapping first: should it fail, the tracee keeps its page.
        let path = "/proc/\(tid)/fd/\(fd)"
        let localFD = open(path, O_RDWR | O_CLOEXEC)
        if localFD < 0 { throw TraceError.call("open \(path)", Errno(errno), tid: tid, address: data) }
        defer { close(localFD) }
        guard let local = mmap(nil, Int(Page.size), PROT_READ | PROT_WRITE, MAP_SHARED, localFD, 0),
            local != MAP_FAILED
        else {
            throw TraceError.call("mmap of the slots' page", Errno(errno), tid: tid, address: data)
        }
        let shared = SharedSlotData(local: local)
        let mapShared: UInt64 = 0x01
        try mapDataPage(injector, flags: mapShared, fd: fd, in: tid, held: &held)
        return shared
    }

    /// A private anonymous page over `injector`'s data page: a followed fork
    /// child's copy of its parent's shared page, when `share` failed there,
    /// must not stay shared with the parent (their slots would collide).
    static func unshare(_ injector: RemoteSyscall, in tid: Int32, held: inout [HeldSignal]) throws {
        let mapPrivateAnonymous: UInt64 = 0x02 | 0x20
        try mapDataPage(injector, flags: mapPrivateAnonymous, fd: UInt64(bitPattern: -1), in: tid, held: &held)
    }

    /// An injected `mmap(MAP_FIXED | flags)` of `fd` (read+write) over
    /// `injector`'s data page.
    static func mapDataPage(
        _ injector: RemoteSyscall, flags: UInt64, fd: UInt64, in tid: Int32,
        held: inout [HeldSignal]
    ) throws {
        let data = injector.trampoline.data
        let rw = UInt64(Protection.read.union(.write).rawValue)
        let mapFixed: UInt64 = 0x10
        let mapped = try injector.call(
            "mmap", HostArchitecture.syscalls.mmap,
            [data.value, Page.size, rw, flags | mapFixed, fd, 0], in: tid, address: data)
        held += mapped.held
        guard mapped.value == data.value else {
            throw TraceError.remoteSyscall("mmap of the slots' page", Errno(EINVAL), tid: tid, address: data)
        }
    }
}

extension FaultTrampoline {
    /// The slots at `code`, their words written through `shared` when the data page is shared.
    init(code: RemoteAddress, shared: SharedSlotData?) {
        self.init(code: code, localData: shared?.local)
    }
}
