internal import CLibDW
import Glibc

/// File and line of an address, from the DWARF line table of one ELF file
/// (the module itself, or its separate debug file), read with elfutils' libdw.
final class DwarfLines {
    private let fd: Int32
    private let dwarf: OpaquePointer

    /// nil when the file cannot be opened or has no DWARF libdw can read.
    init?(path: String) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        guard let dwarf = dwarf_begin(fd, DWARF_C_READ) else {
            close(fd)
            return nil
        }
        self.fd = fd
        self.dwarf = dwarf
    }

    deinit {
        dwarf_end(dwarf)
        close(fd)
    }

    /// `address` is a link-time virtual address of the file.
    func location(of address: UInt64) -> (file: String, line: Int)? {
        var unit = Dwarf_Die()
        guard findUnit(containing: address, into: &unit), let entry = dwarf_getsrc_die(&unit, address) else {
            return nil
        }
        var line: Int32 = 0
        guard dwarf_lineno(entry, &line) == 0, line > 0, let file = dwarf_linesrc(entry, nil, nil) else { return nil }
        return (String(cString: file), Int(line))
    }

    /// The compilation unit whose code holds `address`. `.debug_aranges` first
    /// (fast); compilers that omit it (clang by default) need a walk over the
    /// units' own address ranges.
    private func findUnit(containing address: UInt64, into unit: inout Dwarf_Die) -> Bool {
        if dwarf_addrdie(dwarf, address, &unit) != nil { return true }
        var offset: Dwarf_Off = 0, next: Dwarf_Off = 0
        var headerSize = 0
        while dwarf_nextcu(dwarf, offset, &next, &headerSize, nil, nil, nil) == 0 {
            if dwarf_offdie(dwarf, offset + Dwarf_Off(headerSize), &unit) != nil, dwarf_haspc(&unit, address) > 0 {
                return true
            }
            offset = next
        }
        return false
    }
}
