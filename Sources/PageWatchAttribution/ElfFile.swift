import Glibc

/// A read-only view of an ELF64 little-endian file, mapped into the tracer:
/// the parts the symbolizer needs (program headers, section headers, function
/// symbols, the build-id note, `.gnu_debuglink`). Every read is bounds-checked,
/// so a truncated or hostile file yields nothing rather than a crash.
final class ElfFile {
    let path: String
    private let base: UnsafeRawPointer
    private let size: Int
    let loadSegments: [LoadSegment]
    let sections: [Section]

    struct LoadSegment {
        var fileOffset: UInt64
        var virtualAddress: UInt64
        var fileSize: UInt64
    }

    struct Section {
        var name: String
        var type: UInt32
        var fileOffset: UInt64
        var size: UInt64
        var link: UInt32
        var entrySize: UInt64
    }

    static let SHT_SYMTAB: UInt32 = 2, SHT_NOTE: UInt32 = 7, SHT_NOBITS: UInt32 = 8, SHT_DYNSYM: UInt32 = 11
    static let PT_LOAD: UInt32 = 1
    static let STT_FUNC: UInt8 = 2, STT_GNU_IFUNC: UInt8 = 10
    static let NT_GNU_BUILD_ID: UInt32 = 3

    /// nil when the file cannot be opened or is not an ELF64 little-endian file.
    init?(path: String) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_size >= 64 else { return nil }
        let size = Int(st.st_size)
        guard let mapped = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), mapped != MAP_FAILED else { return nil }
        self.path = path
        self.base = UnsafeRawPointer(mapped)
        self.size = size

        let bytes = UnsafeRawBufferPointer(start: base, count: size)
        // e_ident: magic, ELFCLASS64, ELFDATA2LSB.
        guard bytes[0] == 0x7f, bytes[1] == 0x45, bytes[2] == 0x4c, bytes[3] == 0x46, bytes[4] == 2, bytes[5] == 1
        else {
            munmap(mapped, size)
            return nil
        }
        let reader = Reader(bytes: bytes)
        let phoff = reader.u64(0x20) ?? 0, shoff = reader.u64(0x28) ?? 0
        let phentsize = UInt64(reader.u16(0x36) ?? 0), phnum = UInt64(reader.u16(0x38) ?? 0)
        let shentsize = UInt64(reader.u16(0x3a) ?? 0), shnum = UInt64(reader.u16(0x3c) ?? 0)
        let shstrndx = UInt64(reader.u16(0x3e) ?? 0)

        var loads: [LoadSegment] = []
        if phentsize >= 56 {
            for i in 0..<phnum {
                let at = phoff &+ i &* phentsize
                guard let type = reader.u32(at), type == Self.PT_LOAD,
                    let offset = reader.u64(at + 8), let vaddr = reader.u64(at + 16),
                    let filesz = reader.u64(at + 32)
                else { continue }
                loads.append(LoadSegment(fileOffset: offset, virtualAddress: vaddr, fileSize: filesz))
            }
        }
        self.loadSegments = loads

        var raw: [(nameOffset: UInt32, section: Section)] = []
        if shentsize >= 64 {
            for i in 0..<shnum {
                let at = shoff &+ i &* shentsize
                guard let name = reader.u32(at), let type = reader.u32(at + 4), let offset = reader.u64(at + 24),
                    let size = reader.u64(at + 32), let link = reader.u32(at + 40),
                    let entsize = reader.u64(at + 56)
                else { break }
                raw.append(
                    (
                        name,
                        Section(
                            name: "", type: type, fileOffset: offset, size: size, link: link,
                            entrySize: entsize)
                    ))
            }
        }
        let names = shstrndx < UInt64(raw.count) ? raw[Int(shstrndx)].section : nil
        self.sections = raw.map { entry in
            var s = entry.section
            if let names { s.name = reader.cString(names.fileOffset &+ UInt64(entry.nameOffset), limit: names) ?? "" }
            return s
        }
    }

    deinit { munmap(UnsafeMutableRawPointer(mutating: base), size) }

    private var reader: Reader { Reader(bytes: UnsafeRawBufferPointer(start: base, count: size)) }

    func section(named name: String) -> Section? {
        sections.first { $0.name == name && $0.type != Self.SHT_NOBITS }
    }

    var hasSymtab: Bool { sections.contains { $0.type == Self.SHT_SYMTAB && $0.size > 0 } }
    var hasDebugLines: Bool { section(named: ".debug_line") != nil && section(named: ".debug_info") != nil }

    /// The link-time virtual address of a file offset, through the PT_LOAD
    /// segment holding it (symbols and DWARF use these addresses).
    func virtualAddress(ofFileOffset offset: UInt64) -> UInt64? {
        for s in loadSegments where offset >= s.fileOffset && offset - s.fileOffset < s.fileSize {
            return s.virtualAddress &+ (offset - s.fileOffset)
        }
        return nil
    }

    /// The GNU build-id note, lower-case hex.
    var buildID: String? {
        for s in sections where s.type == Self.SHT_NOTE {
            var at = s.fileOffset
            let end = s.fileOffset &+ s.size
            let r = reader
            while at &+ 12 <= end, let namesz = r.u32(at), let descsz = r.u32(at + 4), let type = r.u32(at + 8) {
                let nameAt = at + 12
                let descAt = nameAt + (UInt64(namesz) + 3) & ~3
                let next = descAt + (UInt64(descsz) + 3) & ~3
                if type == Self.NT_GNU_BUILD_ID, namesz == 4, r.cString(nameAt, limit: s) == "GNU",
                    let desc = r.bytes(descAt, count: UInt64(descsz))
                {
                    return desc.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
                }
                at = next
            }
        }
        return nil
    }

    /// The file name in `.gnu_debuglink` (its CRC is not checked: the build-id path is preferred).
    var debugLink: String? {
        guard let s = section(named: ".gnu_debuglink") else { return nil }
        return reader.cString(s.fileOffset, limit: s)
    }

    /// Function symbols (STT_FUNC and STT_GNU_IFUNC, defined, non-empty names) of the
    /// first symbol table of `type`, sorted by address.
    func functionSymbols(type: UInt32) -> [FunctionSymbol] {
        guard let table = sections.first(where: { $0.type == type }), table.entrySize >= 24,
            Int(table.link) < sections.count
        else { return [] }
        let strings = sections[Int(table.link)]
        let r = reader
        var result: [FunctionSymbol] = []
        let count = table.size / table.entrySize
        for i in 0..<count {
            let at = table.fileOffset &+ i &* table.entrySize
            guard let nameOffset = r.u32(at), let info = r.u8(at + 4), let shndx = r.u16(at + 6),
                let value = r.u64(at + 8), let size = r.u64(at + 16)
            else { break }
            let kind = info & 0xf, binding = info >> 4
            guard kind == Self.STT_FUNC || kind == Self.STT_GNU_IFUNC, shndx != 0, value != 0, nameOffset != 0,
                let name = r.cString(strings.fileOffset &+ UInt64(nameOffset), limit: strings), !name.isEmpty
            else { continue }
            // A versioned definition (`__libc_start_main@@GLIBC_2.34`) is named without its version.
            let unversioned = name.firstIndex(of: "@").map { String(name[..<$0]) } ?? name
            result.append(
                FunctionSymbol(
                    address: value, size: size, name: unversioned.isEmpty ? name : unversioned,
                    isGlobal: binding != 0))
        }
        // Among aliases at one address, global names first (`memset` over a local alias).
        result.sort { ($0.address, $0.isGlobal ? 0 : 1) < ($1.address, $1.isGlobal ? 0 : 1) }
        return result
    }

    /// Bounds-checked little-endian reads from the mapped file.
    private struct Reader {
        let bytes: UnsafeRawBufferPointer

        func bytes(_ at: UInt64, count: UInt64) -> UnsafeRawBufferPointer? {
            guard at <= UInt64(bytes.count), count <= UInt64(bytes.count) - at else { return nil }
            return UnsafeRawBufferPointer(rebasing: bytes[Int(at)..<Int(at + count)])
        }
        func u8(_ at: UInt64) -> UInt8? { bytes(at, count: 1).map { $0[0] } }
        func u16(_ at: UInt64) -> UInt16? {
            bytes(at, count: 2).map { UInt16(littleEndian: $0.loadUnaligned(as: UInt16.self)) }
        }
        func u32(_ at: UInt64) -> UInt32? {
            bytes(at, count: 4).map { UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self)) }
        }
        func u64(_ at: UInt64) -> UInt64? {
            bytes(at, count: 8).map { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        }

        /// A NUL-terminated string starting at `at`, which must end inside `section`.
        func cString(_ at: UInt64, limit section: Section) -> String? {
            let end = min(section.fileOffset &+ section.size, UInt64(bytes.count))
            guard at < end else { return nil }
            let slice = bytes[Int(at)..<Int(end)]
            guard let nul = slice.firstIndex(of: 0) else { return nil }
            return String(decoding: bytes[Int(at)..<nul], as: UTF8.self)
        }
    }
}

struct FunctionSymbol {
    var address: UInt64
    var size: UInt64
    var name: String
    var isGlobal: Bool
}

/// Function symbols sorted by address, looked up by containment (address
/// within `[address, address + size)`), so an address past a function's
/// end is not blamed on it.
struct FunctionTable {
    let symbols: [FunctionSymbol]

    func function(containing address: UInt64) -> FunctionSymbol? {
        // lo: the first symbol starting above `address`.
        var lo = 0, hi = symbols.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if symbols[mid].address <= address { lo = mid + 1 } else { hi = mid }
        }
        // Aliases share an address and nested symbols overlap, so look at the
        // few nearest; the innermost start wins, and among aliases the first
        // in sort order (global). A zero-sized symbol matches its address only.
        var best: FunctionSymbol?
        for s in symbols[max(0, lo - 8)..<lo] where address - s.address < max(s.size, 1) {
            if best == nil || s.address > best!.address { best = s }
        }
        return best
    }
}
