internal import CUnwind
import Glibc
import PageWatchAddressSpace

/// An ELF file as unwinding needs it, mapped read-only into the tracer once:
/// its `PT_LOAD` segments and the binary-search table of its `.eh_frame_hdr`
/// (`PT_GNU_EH_FRAME`). Every read is bounds-checked: a truncated or hostile
/// file gives no table, never a crash.
final class UnwindImage {
    struct Segment {
        var fileOffset: UInt64
        var virtualAddress: UInt64
        var fileSize: UInt64
        var memorySize: UInt64
        var executable: Bool
        var writable: Bool

        /// Whether a mapping starting at file offset `offset` can be this
        /// segment's (it starts at the page holding the segment's first byte).
        func maps(fileOffset offset: UInt64) -> Bool {
            offset >= fileOffset & ~(Page.size - 1) && offset < fileOffset &+ max(fileSize, 1)
        }
    }

    /// `.eh_frame_hdr` at its link-time address, and its table of
    /// `(initial location, FDE)` pairs, both `DW_EH_PE_datarel | sdata4`.
    struct SearchTable {
        var headerAddress: UInt64
        var tableOffset: UInt64
        var entries: UInt64
    }

    let bytes: UnsafeRawBufferPointer
    let segments: [Segment]
    /// nil without `.eh_frame_hdr` or with one libunwind cannot search
    /// (Go's own linker writes only `.debug_frame`): frame pointers then.
    let searchTable: SearchTable?

    static let PT_LOAD: UInt32 = 1, PT_GNU_EH_FRAME: UInt32 = 0x6474_e550
    static let PF_X: UInt32 = 1, PF_W: UInt32 = 2
    /// `DW_EH_PE_datarel | DW_EH_PE_sdata4`: the only table encoding libunwind searches.
    static let tableEncoding: UInt8 = 0x3b

    /// nil when `fd` is not an ELF64 little-endian file or cannot be mapped.
    init?(fd: Int32) {
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_size >= 64 else { return nil }
        let size = Int(st.st_size)
        guard let mapped = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), mapped != MAP_FAILED else { return nil }
        let bytes = UnsafeRawBufferPointer(start: mapped, count: size)
        guard bytes[0] == 0x7f, bytes[1] == 0x45, bytes[2] == 0x4c, bytes[3] == 0x46, bytes[4] == 2, bytes[5] == 1
        else {
            munmap(mapped, size)
            return nil
        }
        self.bytes = bytes
        let phoff = Self.u64(bytes, 0x20) ?? 0
        let phentsize = UInt64(Self.u16(bytes, 0x36) ?? 0), phnum = UInt64(Self.u16(bytes, 0x38) ?? 0)
        var segments: [Segment] = []
        var header: (offset: UInt64, address: UInt64, size: UInt64)?
        if phentsize >= 56 {
            for i in 0..<phnum {
                let at = phoff &+ i &* phentsize
                guard let type = Self.u32(bytes, at), let flags = Self.u32(bytes, at + 4),
                    let offset = Self.u64(bytes, at + 8), let vaddr = Self.u64(bytes, at + 16),
                    let filesz = Self.u64(bytes, at + 32), let memsz = Self.u64(bytes, at + 40)
                else { break }
                if type == Self.PT_LOAD {
                    segments.append(
                        Segment(
                            fileOffset: offset, virtualAddress: vaddr, fileSize: filesz,
                            memorySize: memsz, executable: flags & Self.PF_X != 0,
                            writable: flags & Self.PF_W != 0))
                } else if type == Self.PT_GNU_EH_FRAME {
                    header = (offset, vaddr, filesz)
                }
            }
        }
        self.segments = segments
        self.searchTable = header.flatMap { Self.searchTable(bytes, at: $0.offset, address: $0.address, size: $0.size) }
    }

    deinit { munmap(UnsafeMutableRawPointer(mutating: bytes.baseAddress), bytes.count) }

    /// The header: version 1, the encodings of the `.eh_frame` pointer, of
    /// the entry count and of the table, then those two values.
    private static func searchTable(
        _ bytes: UnsafeRawBufferPointer, at offset: UInt64, address: UInt64,
        size: UInt64
    ) -> SearchTable? {
        guard let version = u8(bytes, offset), version == 1,
            let framePointerEncoding = u8(bytes, offset + 1), let countEncoding = u8(bytes, offset + 2),
            let tableEncoding = u8(bytes, offset + 3), tableEncoding == Self.tableEncoding,
            let pointerSize = encodedSize(framePointerEncoding), let countSize = encodedSize(countEncoding),
            countSize > 0, countEncoding & 0x70 == 0
        else { return nil }
        let countAt = offset + 4 + pointerSize
        let count: UInt64?
        switch countSize {
        case 2: count = u16(bytes, countAt).map(UInt64.init)
        case 4: count = u32(bytes, countAt).map(UInt64.init)
        default: count = u64(bytes, countAt)
        }
        let tableOffset = 4 + pointerSize + countSize
        guard let entries = count, entries > 0, entries <= (size &- min(size, tableOffset)) / 8,
            offset + tableOffset + entries * 8 <= UInt64(bytes.count)
        else { return nil }
        return SearchTable(headerAddress: address, tableOffset: tableOffset, entries: entries)
    }

    /// Bytes of a DWARF pointer encoding's value; nil for one a header cannot use.
    private static func encodedSize(_ encoding: UInt8) -> UInt64? {
        if encoding == 0xff { return 0 }  // DW_EH_PE_omit
        switch encoding & 0x0f {
        case 0x00, 0x04, 0x0c: return 8  // absptr, udata8, sdata8
        case 0x02, 0x0a: return 2
        case 0x03, 0x0b: return 4
        default: return nil
        }
    }

    private static func load<T: FixedWidthInteger>(_ bytes: UnsafeRawBufferPointer, _ at: UInt64, as: T.Type) -> T? {
        let n = UInt64(MemoryLayout<T>.size)
        guard at <= UInt64(bytes.count), n <= UInt64(bytes.count) - at else { return nil }
        return T(littleEndian: bytes.loadUnaligned(fromByteOffset: Int(at), as: T.self))
    }
    private static func u8(_ b: UnsafeRawBufferPointer, _ at: UInt64) -> UInt8? { load(b, at, as: UInt8.self) }
    private static func u16(_ b: UnsafeRawBufferPointer, _ at: UInt64) -> UInt16? { load(b, at, as: UInt16.self) }
    private static func u32(_ b: UnsafeRawBufferPointer, _ at: UInt64) -> UInt32? { load(b, at, as: UInt32.self) }
    private static func u64(_ b: UnsafeRawBufferPointer, _ at: UInt64) -> UInt64? { load(b, at, as: UInt64.self) }
}

/// The ELF files of a tracing session's processes, each opened and parsed
/// once, keyed by the identity `/proc/PID/maps` gives a mapping (path,
/// device, inode): fork children and later `exec`s share libc's. Held weakly:
/// a file stays parsed while some process's table uses it, so a file no
/// process maps any more (unmapped, or its processes gone) is let go. Not
/// thread-safe: the tracer thread's.
public final class UnwindImageCache {
    struct Key: Hashable {
        var path: String
        var device: String
        var inode: UInt64

        init(_ m: Mapping) {
            path = m.path
            device = m.device
            inode = m.inode
        }
    }

    private struct WeakImage {
        weak var image: UnwindImage?
    }

    private var images: [Key: WeakImage] = [:]
    /// Files that could not be opened as the one mapped (replaced, not ELF): not tried again.
    private var unreadable: Set<Key> = []
    /// Files opened and parsed, for tests and measurements.
    public private(set) var loads = 0

    public init() {}

    /// The image of `mapping`'s file in process `pid`: through
    /// `/proc/PID/root` (the process may live in another mount namespace or
    /// chroot), else by path; only when its inode is the mapping's.
    func image(of mapping: Mapping, pid: Int32) -> UnwindImage? {
        let key = Key(mapping)
        if let known = images[key]?.image { return known }
        guard !unreadable.contains(key) else { return nil }
        loads += 1
        var image: UnwindImage?
        for path in ["/proc/\(pid)/root\(mapping.path)", mapping.path] {
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { continue }
            defer { close(fd) }
            var st = stat()
            guard fstat(fd, &st) == 0, UInt64(st.st_ino) == mapping.inode else { continue }
            image = UnwindImage(fd: fd)
            break
        }
        if let image { images[key] = WeakImage(image: image) } else { unreadable.insert(key) }
        return image
    }

    /// Forgets the entries of files no process uses any more.
    func dropUnused() {
        images = images.filter { $0.value.image != nil }
    }

    /// The files parsed and still in use.
    public var count: Int { images.values.filter { $0.image != nil }.count }
}

/// One process's unwind tables as handed to the C accessors: a module per
/// mapped executable segment (where its `.eh_frame_hdr` table is in the
/// tracee), and a window per mapped read-only segment (the tracee's bytes
/// are the file's, read from the tracer's mapping of it without a syscall).
/// Built from a maps snapshot and the session's image cache: rebuilding
/// after a change of the maps opens no file already known.
struct UnwindTables {
    var modules: [cu_module] = []
    var windows: [cu_file_window] = []
    /// The images the windows point into, kept alive while handed to C.
    private(set) var images: [UnwindImage] = []

    init() {}

    init(maps: [Mapping], pid: Int32, cache: UnwindImageCache) {
        // The mappings of each file with code; a data file mapped read-only is none of unwinding's business.
        var files: [UnwindImageCache.Key: [Mapping]] = [:]
        for m in maps where m.isFileBacked && !m.isDeleted { files[UnwindImageCache.Key(m), default: []].append(m) }
        for (_, mappings) in files where mappings.contains(where: { $0.protection.contains(.execute) }) {
            guard let image = cache.image(of: mappings[0], pid: pid) else { continue }
            images.append(image)
            add(image, mappings)
        }
        modules.sort { $0.start_ip < $1.start_ip }
        windows.sort { $0.start < $1.start }
        // Never overlapping (C searches them by halving): a later one overlapping is dropped.
        windows = windows.reduce(into: []) { kept, w in
            if kept.last.map({ $0.end <= w.start }) ?? true { kept.append(w) }
        }
        modules = modules.reduce(into: []) { kept, m in
            if kept.last.map({ $0.end_ip <= m.start_ip }) ?? true { kept.append(m) }
        }
    }

    /// A file's modules and windows. Its load bias (where its link-time
    /// addresses are) comes from an executable mapping and the executable
    /// segment it maps: the file offset alone is ambiguous, since lld starts
    /// the code segment in the page that ends the read-only one, so both
    /// mappings start at file offset 0. A read-only segment is a window where
    /// a mapping translates addresses to file offsets as the segment does.
    private mutating func add(_ image: UnwindImage, _ mappings: [Mapping]) {
        var biases: [UInt64] = []
        for m in mappings where m.protection.contains(.execute) {
            for s in image.segments where s.executable && s.maps(fileOffset: m.offset) {
                let bias = m.range.start.value &- m.offset &- s.virtualAddress &+ s.fileOffset
                let start = max(m.range.start.value, bias &+ s.virtualAddress)
                let end = min(m.range.end.value, bias &+ s.virtualAddress &+ s.memorySize)
                guard start < end else { continue }
                if !biases.contains(bias) { biases.append(bias) }
                var module = cu_module(start_ip: start, end_ip: end, segbase: 0, table_data: 0, table_len: 0)
                if let table = image.searchTable {
                    module.segbase = bias &+ table.headerAddress
                    module.table_data = module.segbase &+ table.tableOffset
                    module.table_len = table.entries  // one 8-byte entry a word
                }
                modules.append(module)
            }
        }
        let size = UInt64(image.bytes.count)
        for m in mappings where !m.protection.contains(.write) {
            for bias in biases {
                for s in image.segments
                where !s.writable
                    && m.range.start.value &- m.offset == bias &+ s.virtualAddress &- s.fileOffset
                {
                    let segmentStart = bias &+ s.virtualAddress
                    let start = max(m.range.start.value, segmentStart)
                    let end = min(m.range.end.value, segmentStart &+ s.fileSize)
                    let fileStart = s.fileOffset &+ (start &- segmentStart)
                    guard start < end, fileStart <= size, end - start <= size - fileStart else { continue }
                    windows.append(
                        cu_file_window(
                            start: start, end: end,
                            bytes: UnsafeRawPointer(image.bytes.baseAddress! + Int(fileStart))))
                }
            }
        }
    }

    /// The module holding `ip`, for tests.
    func module(at ip: UInt64) -> cu_module? {
        modules.first { $0.start_ip <= ip && ip < $0.end_ip }
    }
}
