internal import CPtrace
import Glibc
import PageWatchAddressSpace
import Synchronization

/// The maps entries of one address range, asked of the kernel VMA by VMA
/// (PROCMAP_QUERY, Linux 6.11+) instead of reading the whole
/// `/proc/PID/maps` text, whose cost grows with the process's mappings:
/// a JIT runtime has over a thousand and changes them thousands of times.
extension ProcFS {
    /// Set once the kernel answered PROCMAP_QUERY with ENOTTY or EINVAL
    /// (older than 6.11): from then on every range is read from the whole text.
    private static let mapsQueryUnsupported = Atomic<Bool>(false)

    /// The `[vsyscall]` page: shown in maps, yet no VMA of the process's
    /// (the kernel's gate area), so PROCMAP_QUERY never returns it.
    static let gateArea = AddressRange(0xffff_ffff_ff60_0000, 0xffff_ffff_ff60_1000)

    /// The entries of `/proc/PID/maps` that overlap `range`, equal to those
    /// `MapsParser` reads from the whole text; empty for an empty range. Nil
    /// when the kernel has no PROCMAP_QUERY (the caller reads the whole
    /// text). Throws when the file cannot be opened or a query fails
    /// otherwise (the process is gone: ESRCH).
    public static func mappings(of pid: Int32, in range: AddressRange) throws -> [Mapping]? {
        guard !range.isEmpty else { return [] }
        if mapsQueryUnsupported.load(ordering: .relaxed) { return nil }
        if range.overlaps(gateArea) { return try maps(of: pid).filter { $0.range.overlaps(range) } }
        let path = "/proc/\(pid)/maps"
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 { throw TraceError.call("open \(path)", Errno(errno), tid: pid) }
        defer { close(fd) }
        var found: [Mapping] = []
        // PATH_MAX: the kernel's own bound for a name (longer ones are ENAMETOOLONG).
        var name = [UInt8](repeating: 0, count: Int(PATH_MAX))
        var address = range.start.value
        while address < range.end.value {
            var query = pw_procmap_query_args()
            let result = name.withUnsafeMutableBufferPointer { buffer in
                query.size = UInt64(MemoryLayout<pw_procmap_query_args>.size)
                query.query_flags = UInt64(PW_PROCMAP_QUERY_COVERING_OR_NEXT_VMA)
                query.query_addr = address
                query.vma_name_addr = UInt64(UInt(bitPattern: buffer.baseAddress))
                query.vma_name_size = UInt32(buffer.count)
                return pw_procmap_query(fd, &query)
            }
            if result == -ENOENT { break }  // nothing above `address`
            if result == -ENOTTY || result == -EINVAL {
                mapsQueryUnsupported.store(true, ordering: .relaxed)
                return nil
            }
            if result < 0 {
                throw TraceError.call(
                    "PROCMAP_QUERY \(path)", Errno(-result), tid: pid, address: RemoteAddress(address))
            }
            guard query.vma_start < range.end.value else { break }
            let column = name[0..<max(Int(query.vma_name_size), 1) - 1]  // without its NUL
            found.append(mapping(query, nameColumn: column))
            address = query.vma_end
        }
        return found
    }

    /// The `Mapping` the maps line of the VMA `query` describes would parse
    /// to: the name as maps prints it (a newline in a path as `\012`), its
    /// ` (deleted)` suffix taken off, the device as `%02x:%02x`.
    static func mapping(_ query: pw_procmap_query_args, nameColumn: ArraySlice<UInt8>) -> Mapping {
        func has(_ flag: Int) -> Bool { query.vma_flags & UInt64(flag) != 0 }
        var protection: Protection = []
        if has(PW_PROCMAP_QUERY_VMA_READABLE) { protection.insert(.read) }
        if has(PW_PROCMAP_QUERY_VMA_WRITABLE) { protection.insert(.write) }
        if has(PW_PROCMAP_QUERY_VMA_EXECUTABLE) { protection.insert(.execute) }
        func hex2(_ n: UInt32) -> String {
            let digits = String(n, radix: 16)
            return digits.count < 2 ? "0" + digits : digits
        }
        // seq_path escapes a newline in a path (octal); nothing else. As
        // MapsParser reads the column: leading blanks dropped, then the suffix.
        var bytes: [UInt8] = []
        bytes.reserveCapacity(nameColumn.count)
        for byte in nameColumn.drop(while: { $0 == UInt8(ascii: " ") }) {
            if byte == UInt8(ascii: "\n") { bytes += Array("\\012".utf8) } else { bytes.append(byte) }
        }
        let suffix = Array(" (deleted)".utf8)
        let deleted = bytes.count >= suffix.count && bytes.suffix(suffix.count).elementsEqual(suffix)
        if deleted { bytes.removeLast(suffix.count) }
        let path = String(decoding: bytes, as: UTF8.self)
        return Mapping(
            range: AddressRange(query.vma_start, query.vma_end), protection: protection,
            isPrivate: !has(PW_PROCMAP_QUERY_VMA_SHARED), offset: query.vma_offset,
            device: hex2(query.dev_major) + ":" + hex2(query.dev_minor), inode: query.inode, path: path,
            isDeleted: deleted)
    }
}
