import Glibc
import Testing
import PageWatchAddressSpace
@testable import PageWatchPtrace

/// `ProcFS.mappings(of:in:)` (PROCMAP_QUERY) against the whole maps text.
@Suite(.serialized) struct ProcMapsQueryTests {
    /// The query's answer for `range`, and the entries of the whole text
    /// that overlap it, from a moment when maps did not change around the
    /// query (other tests of this process map memory meanwhile).
    func both(_ range: AddressRange) throws -> (query: [Mapping]?, text: [Mapping]) {
        for _ in 0..<50 {
            let before = try ProcFS.maps(of: getpid())
            let query = try ProcFS.mappings(of: getpid(), in: range)
            let after = try ProcFS.maps(of: getpid())
            if before == after { return (query, before.filter { $0.range.overlaps(range) }) }
        }
        Issue.record("maps kept changing")
        return (nil, [])
    }

    /// Mappings with the names maps prints specially: a deleted file, a path
    /// with a blank and a newline, a shared anonymous mapping, a named
    /// anonymous one. Unmapped by the returned closure.
    func specialMappings() throws -> (ranges: [AddressRange], named: Bool, unmap: () -> Void) {
        var made: [(UnsafeMutableRawPointer, Int)] = []
        let size = 3 * Int(Page.size)
        func map(_ prot: Int32, _ flags: Int32, _ fd: Int32) throws {
            let p = mmap(nil, size, prot, flags, fd, 0)
            guard let p, p != MAP_FAILED else { throw Errno(errno) }
            made.append((p, size))
        }
        let directory = "/tmp/pagewatch-mapsquery-\(getpid())"
        mkdir(directory, 0o700)
        for name in ["deleted file", "new\nline", "kept"] {
            let path = directory + "/" + name
            let fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o600)
            guard fd >= 0 else { throw Errno(errno) }
            ftruncate(fd, off_t(size))
            try map(PROT_READ | PROT_WRITE, MAP_PRIVATE, fd)
            try map(PROT_READ, MAP_SHARED, fd)
            close(fd)
            if name != "kept" { unlink(path) }
        }
        try map(PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1)
        try map(PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1)
        // PR_SET_VMA, PR_SET_VMA_ANON_NAME (where the kernel has CONFIG_ANON_VMA_NAME).
        let named = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)!
        made.append((named, size))
        // prctl is variadic (not imported): called with its five integer arguments.
        typealias Prctl = @convention(c) (Int32, UInt, UInt, UInt, UInt) -> Int32
        var isNamed = false
        if let symbol = dlsym(nil, "prctl") {  // RTLD_DEFAULT
            let prctl = unsafeBitCast(symbol, to: Prctl.self)
            isNamed =
                "pagewatch test".withCString {
                    prctl(0x5356_4d41, 0, UInt(bitPattern: named), UInt(size), UInt(bitPattern: $0))
                } == 0
        }
        // A hole in the middle of a mapping: two entries, and a range that starts there.
        mprotect(named + Int(Page.size), Int(Page.size), PROT_READ)
        let ranges = made.map {
            AddressRange(UInt64(UInt(bitPattern: $0.0)), UInt64(UInt(bitPattern: $0.0)) + UInt64($0.1))
        }
        return (
            ranges, isNamed,
            {
                for (p, n) in made { munmap(p, n) }
                unlink(directory + "/kept")
                rmdir(directory)
            }
        )
    }

    @Test func queryGivesTheWholeTextsEntries() throws {
        let (special, named, unmap) = try specialMappings()
        defer { unmap() }
        let maps = try ProcFS.maps(of: getpid())
        let stack = try #require(maps.first { $0.isMainStack })
        let vdso = try #require(maps.first { $0.path == "[vdso]" })
        let file = try #require(maps.first { $0.isFileBacked })
        let middle = maps[maps.count / 2]
        let page = Page.size
        var ranges: [AddressRange] = [
            AddressRange(0, 0x8000_0000_0000),  // the whole user address space
            AddressRange(0, UInt64.max),  // and the gate page ([vsyscall]) above it
            stack.range, vdso.range, file.range,
            // From the middle of one mapping to the middle of another.
            AddressRange(file.range.start.value + page / 2, middle.range.end.value - page / 2),
            // One byte, at an entry's last byte and just past it (a hole or the next entry).
            AddressRange(middle.range.end.value - 1, middle.range.end.value),
            AddressRange(middle.range.end.value, middle.range.end.value + 1),
        ]
        if let heap = maps.first(where: \.isHeap) { ranges.append(heap.range) }
        for r in special {
            ranges.append(r)
            ranges.append(AddressRange(r.start.value + page, r.end.value))
            ranges.append(AddressRange(r.start.value - page, r.start.value + 1))
        }
        for range in ranges {
            let (query, text) = try both(range)
            let answer = try #require(query, "this kernel (6.11+) has PROCMAP_QUERY")
            #expect(answer == text, "\(range)")
        }
        // The special names are those maps shows.
        let (query, _) = try both(AddressRange(0, 0x8000_0000_0000))
        let paths = Set((query ?? []).map(\.path))
        #expect(paths.contains { $0.hasSuffix("/deleted file") })
        #expect(paths.contains { $0.hasSuffix("/new\\012line") })
        #expect(paths.contains("[stack]"))
        #expect(!named || paths.contains("[anon:pagewatch test]"))
        #expect((query ?? []).contains { $0.isDeleted && $0.path.hasSuffix("/new\\012line") })
    }

    @Test func emptyRangeHasNoEntries() throws {
        #expect(try ProcFS.mappings(of: getpid(), in: AddressRange(0x1000, 0x1000)) == [])
    }

    @Test func aGoneProcessThrows() {
        #expect(throws: TraceError.self) { try ProcFS.mappings(of: Int32.max, in: AddressRange(0, 0x1000)) }
    }
}
