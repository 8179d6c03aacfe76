import Glibc
import PageWatchAddressSpace
import PageWatchLog

/// Names instruction pointers: module, function (ELF `.symtab`, a separate
/// debug file's `.symtab`, or `.dynsym`), demangled, and file and line from
/// DWARF (libdw). Off the fault path: the first address of a module opens and
/// indexes its ELF file; results are cached per module and per address.
/// Not thread-safe; one per report.
public final class Symbolizer {
    /// By mapping identity (device, inode, path); nil when the file could not be read.
    private var modules: [ModuleKey: Module?] = [:]
    private var sites: [SiteKey: Site] = [:]
    /// The JITs' maps of the processes asked about, by pid (`perfMapPath`).
    private var perfMaps: [Int32: PerfMap] = [:]
    private let debugRoot: String
    /// Where the perf map of a process is: `/tmp/perf-PID.map` as perf looks
    /// for it (a test points it elsewhere).
    let perfMapPath: @Sendable (Int32) -> String

    public convenience init() { self.init(debugRoot: "/usr/lib/debug") }

    /// `debugRoot`: where separate debug files live (`.build-id/xx/yyyy.debug`, and debuglink paths).
    init(debugRoot: String, perfMapPath: @escaping @Sendable (Int32) -> String = PerfMap.path(pid:)) {
        self.debugRoot = debugRoot
        self.perfMapPath = perfMapPath
    }

    /// The frame of `ip` in the process whose `/proc/PID/maps` snapshot (taken
    /// when the stack was recorded) is `maps`. `isReturnAddress`: `ip` is a
    /// caller's return address (every frame of a call stack but the first), so
    /// the call instruction before it is looked up: the return address may be
    /// past the end of the calling function, or on the next source line.
    /// `offset` always describes `ip` itself. `pid`: the process, whose JIT's
    /// perf map names code in anonymous executable memory.
    public func frame(ip: UInt64, in maps: [Mapping], isReturnAddress: Bool = false, pid: Int32? = nil) -> Frame {
        // Anonymous memory ([heap], [stack], JIT code) has no module; [vdso] is one.
        let mapping = maps.mapping(containing: ip)
        guard let mapping, !mapping.isAnonymous else {
            // Code a JIT generated: named by its map, read again when it grew.
            guard let pid, mapping?.protection.contains(.execute) ?? true else { return Frame(ip: ip) }
            return jitFrame(ip: ip, pid: pid, isReturnAddress: isReturnAddress)
        }
        let offset = ip - mapping.range.start.value + mapping.offset
        var frame = Frame(ip: ip, module: mapping.path, offset: offset)
        guard mapping.isFileBacked, !mapping.isDeleted else { return frame }
        let key = SiteKey(module: ModuleKey(mapping), offset: offset, isReturnAddress: isReturnAddress)
        let site: Site
        if let cached = sites[key] {
            site = cached
        } else {
            site = module(key.module)?.site(atFileOffset: offset, isReturnAddress: isReturnAddress) ?? Site()
            sites[key] = site
        }
        frame.function = site.function
        frame.file = site.file
        frame.line = site.line
        return frame
    }

    /// The frames of a call stack from `Unwinder.callStack`: the first IP is
    /// exact, the others are return addresses.
    public func frames(callStack ips: [UInt64], in maps: [Mapping], pid: Int32? = nil) -> [Frame] {
        ips.enumerated().map { frame(ip: $0.element, in: maps, isReturnAddress: $0.offset > 0, pid: pid) }
    }

    /// `ip` in anonymous memory, named by the perf map of `pid` when it has
    /// an entry there: the map is read again (its new tail) only when it
    /// does not, at most once a millisecond (`PerfMap.refreshIfDue`).
    /// A return address is looked up at the call before it, as in modules.
    func jitFrame(ip: UInt64, pid: Int32, isReturnAddress: Bool = false) -> Frame {
        let map: PerfMap
        if let known = perfMaps[pid] {
            map = known
        } else {
            map = PerfMap(path: perfMapPath(pid))
            perfMaps[pid] = map
        }
        let at = isReturnAddress && ip > 0 ? ip - 1 : ip
        var name = map.name(at: at)
        if name == nil, map.refreshIfDue() { name = map.name(at: at) }
        return Frame(ip: ip, function: name, jit: name != nil)
    }

    /// A process is gone (or exec'd): its perf map is read anew if asked again.
    public func forgetPerfMap(pid: Int32) { perfMaps[pid] = nil }

    private func module(_ key: ModuleKey) -> Module? {
        if let known = modules[key] { return known }
        let module = Module(path: key.path, debugRoot: debugRoot)
        modules[key] = .some(module)
        return module
    }
}

private struct ModuleKey: Hashable {
    var device: String
    var inode: UInt64
    var path: String
    init(_ m: Mapping) {
        device = m.device
        inode = m.inode
        path = m.path
    }
}

private struct SiteKey: Hashable {
    var module: ModuleKey
    var offset: UInt64
    var isReturnAddress: Bool
}

private struct Site {
    var function: String?
    var file: String?
    var line: Int?
}

/// One ELF file, with what symbolizes it: its function table and line table,
/// each from the file itself or from its separate debug file.
private final class Module {
    let image: ElfFile
    let functions: FunctionTable
    let lines: DwarfLines?

    init?(path: String, debugRoot: String) {
        guard let image = ElfFile(path: path) else { return nil }
        self.image = image
        let debug = Module.separateDebugFile(of: image, debugRoot: debugRoot)
        // .symtab has every function (static ones too); a separate debug file
        // keeps the .symtab a stripped file lost; .dynsym has the exported ones only.
        if image.hasSymtab {
            functions = FunctionTable(symbols: image.functionSymbols(type: ElfFile.SHT_SYMTAB))
        } else if let debug, debug.hasSymtab {
            functions = FunctionTable(symbols: debug.functionSymbols(type: ElfFile.SHT_SYMTAB))
        } else {
            functions = FunctionTable(symbols: image.functionSymbols(type: ElfFile.SHT_DYNSYM))
        }
        if let debug, debug.hasDebugLines {
            lines = DwarfLines(path: debug.path)
        } else if image.hasDebugLines {
            lines = DwarfLines(path: image.path)
        } else {
            lines = nil
        }
    }

    func site(atFileOffset offset: UInt64, isReturnAddress: Bool) -> Site {
        guard var address = image.virtualAddress(ofFileOffset: offset) else { return Site() }
        if isReturnAddress && address > 0 { address -= 1 }
        var site = Site()
        if let symbol = functions.function(containing: address) {
            site.function = Demangler.demangle(symbol.name)
        }
        if let location = lines?.location(of: address) {
            site.file = location.file
            site.line = location.line
        }
        return site
    }

    /// The separate debug file GDB would use: by build-id
    /// (`ROOT/.build-id/xx/yyyy.debug`), else by `.gnu_debuglink` next to the
    /// file, in its `.debug/`, or under ROOT with the file's directory.
    static func separateDebugFile(of image: ElfFile, debugRoot: String) -> ElfFile? {
        var candidates: [String] = []
        if let id = image.buildID, id.count > 2 {
            candidates.append("\(debugRoot)/.build-id/\(id.prefix(2))/\(id.dropFirst(2)).debug")
        }
        if let link = image.debugLink, !link.isEmpty {
            let directory = image.path.split(separator: "/", omittingEmptySubsequences: false).dropLast()
                .joined(separator: "/")
            candidates += ["\(directory)/\(link)", "\(directory)/.debug/\(link)", "\(debugRoot)\(directory)/\(link)"]
        }
        for candidate in candidates where candidate != image.path {
            if let file = ElfFile(path: candidate) { return file }
        }
        return nil
    }
}
