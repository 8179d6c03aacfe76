import Foundation
import PageWatchAddressSpace

/// A memory image written by `--dump DIR`, read back: its processes and
/// sweeps, the memory at a sweep rebuilt from the full image and the
/// increments, and a check of every checksum and of the chain.
public struct ImageDirectory: Sendable {
    public let path: String
    public let manifest: ImageManifest

    public init(path: String) throws(ImageError) {
        self.path = path
        manifest = try Self.readJSON(ImageManifest.self, from: path + "/image.json")
        guard manifest.schema == ImageSchema.name else {
            throw .malformed(
                path: path + "/image.json",
                reason: "schema '\(manifest.schema)' is not supported: this pagewatch reads \(ImageSchema.name)")
        }
    }

    /// The processes the image has, the program first.
    public func pids() -> [Int32] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        let pids = names.compactMap { Int32($0) }.sorted()
        return pids.filter { $0 == manifest.pid } + pids.filter { $0 != manifest.pid }
    }

    /// A process's sweeps, in order.
    public func sweeps(pid: Int32) throws(ImageError) -> [SweepIndex] {
        let dir = path + "/\(pid)"
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else {
            throw .noSuch(what: "process \(pid)", path: path)
        }
        let seqs = names.compactMap { name -> Int? in
            guard name.hasPrefix("sweep-"), name.hasSuffix(".json") else { return nil }
            return Int(name.dropFirst(6).dropLast(5))
        }.sorted()
        var out: [SweepIndex] = []
        for seq in seqs {
            out.append(try Self.readJSON(SweepIndex.self, from: dir + "/" + SweepIndex.fileName(seq: seq)))
        }
        return out
    }

    /// Where a page's contents at a sweep are: in which sweep's pages file
    /// and where, or zeros.
    public struct Source: Equatable, Sendable {
        public var seq: Int
        public var kind: IndexedRange.Kind
        /// The offset in that sweep's pages file of the run's first page.
        public var offset: UInt64
    }

    /// The memory of `pid` at sweep `seq`: every tracked page's source, as
    /// runs. Pages tracked but held by no sweep up to `seq` (a broken chain)
    /// are `missing`.
    public func memory(pid: Int32, at seq: Int) throws(ImageError) -> (
        held: [(range: AddressRange, source: Source)], missing: PageSet
    ) {
        try memory(of: try sweeps(pid: pid), pid: pid, at: seq)
    }

    /// `memory(pid:at:)` from the process's sweeps, already read.
    func memory(of sweeps: [SweepIndex], pid: Int32, at seq: Int) throws(ImageError) -> (
        held: [(range: AddressRange, source: Source)], missing: PageSet
    ) {
        guard let last = sweeps.first(where: { $0.seq == seq }) else {
            throw .noSuch(what: "sweep \(seq) of process \(pid)", path: path)
        }
        var map = SourceMap()
        for sweep in sweeps where sweep.seq <= seq {
            for g in sweep.gone { map.remove(g.range) }
            for r in sweep.ranges {
                if r.kind == .gone {
                    map.remove(r.range.range)
                } else {
                    map.assign(r.range.range, Source(seq: sweep.seq, kind: r.kind, offset: r.offset ?? 0))
                }
            }
        }
        // Pages gone while this sweep read them are no longer part of it.
        let tracked = PageSet(last.tracked.map(\.range))
            .subtracting(PageSet(last.ranges.filter { $0.kind == .gone }.map(\.range.range)))
        var held: [(AddressRange, Source)] = []
        var covered = PageSet()
        for (range, source) in map.segments {
            for piece in tracked.intersection(range).ranges {
                var s = source
                if s.kind != .zero { s.offset += piece.start - range.start }
                held.append((piece, s))
                covered.insert(piece)
            }
        }
        return (held, tracked.subtracting(covered))
    }

    /// The bytes of `range` at sweep `seq`; an error naming the first page
    /// the image does not hold.
    public func read(pid: Int32, at seq: Int, range: AddressRange) throws(ImageError) -> [UInt8] {
        let sweeps = try self.sweeps(pid: pid)
        let (held, _) = try memory(of: sweeps, pid: pid, at: seq)
        try check(sweeps, pid: pid, upTo: seq, only: range)
        var out: [UInt8] = []
        out.reserveCapacity(Int(range.length))
        var at = range.start
        var files: [Int: FileHandle] = [:]
        defer { for f in files.values { try? f.close() } }
        for (piece, source) in held where piece.end > at && piece.start < range.end {
            if piece.start > at { throw .notHeld(page: at.value, seq: seq, pid: pid) }
            let end = min(piece.end, range.end)
            let skip = at - piece.start
            out += try bytes(pid: pid, source: source, skip: skip, count: Int(end - at), files: &files)
            at = end
        }
        if at < range.end { throw .notHeld(page: Page.floor(at).value, seq: seq, pid: pid) }
        return out
    }

    /// Writes the memory at sweep `seq` to `output` (the held pages one
    /// after another) and its index to `output.index.json` (each run's
    /// range and its offset in `output`). What is not held is not written.
    /// Every checksum it relies on is checked first, and `output` is
    /// written under a temporary name: a broken image overwrites nothing.
    public func build(pid: Int32, at seq: Int, output: String) throws(ImageError) -> (pages: UInt64, runs: Int) {
        let sweeps = try self.sweeps(pid: pid)
        let (held, _) = try memory(of: sweeps, pid: pid, at: seq)
        try check(sweeps, pid: pid, upTo: seq)
        let temporary = output + ".tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .write(path: temporary, errno: errno) }
        var files: [Int: FileHandle] = [:]
        defer { for f in files.values { try? f.close() } }
        var offset: UInt64 = 0
        var runs: [BuiltRun] = []
        do throws(ImageError) {
            for (piece, source) in held {
                var done: UInt64 = 0
                while done < piece.length {
                    let count = min(UInt64(ImageWriter.chunkBytes), piece.length - done)
                    let chunk = try bytes(pid: pid, source: source, skip: done, count: Int(count), files: &files)
                    try ImageWriter.writeAll(fd, chunk, at: offset + done, path: temporary)
                    done += count
                }
                runs.append(BuiltRun(range: ImageRange(piece), offset: offset))
                offset += piece.length
            }
        } catch {
            close(fd)
            unlink(temporary)
            throw error
        }
        if close(fd) != 0 {
            unlink(temporary)
            throw .write(path: temporary, errno: errno)
        }
        let index = BuiltIndex(
            schema: ImageSchema.name, pid: pid, seq: seq, pageSize: manifest.pageSize, runs: runs, bytes: offset)
        do throws(ImageError) { try ImageWriter.writeJSON(index, to: output + ".index.json") } catch {
            unlink(temporary)
            throw error
        }
        if rename(temporary, output) != 0 { throw .write(path: output, errno: errno) }
        return (offset / Page.size, runs.count)
    }

    /// `image build`'s index: where each run of the memory is in the file.
    struct BuiltIndex: Codable {
        var schema: String
        var pid: Int32
        var seq: Int
        var pageSize: UInt64
        var runs: [BuiltRun]
        var bytes: UInt64
        enum CodingKeys: String, CodingKey {
            case schema, pid, seq, runs, bytes
            case pageSize = "page_size"
        }
    }

    struct BuiltRun: Codable {
        var range: ImageRange
        var offset: UInt64
    }

    /// What `verify` found wrong, one line each (empty when the image is
    /// sound), and the processes and sweeps it read.
    public func verify() -> (problems: [String], processes: Int, sweeps: Int) {
        var problems: [String] = []
        var count = 0
        let pids = pids()
        if !pids.contains(manifest.pid) { problems.append("no directory for the program, pid \(manifest.pid)") }
        for pid in pids {
            let sweeps: [SweepIndex]
            do { sweeps = try self.sweeps(pid: pid) } catch {
                problems.append(error.description)
                continue
            }
            count += sweeps.count
            if sweeps.isEmpty { problems.append("pid \(pid): no sweep") }
            for (i, sweep) in sweeps.enumerated() where sweep.seq != i + 1 {
                problems.append("pid \(pid): sweep \(i + 1) is missing (the next is \(sweep.seq))")
                break
            }
            for sweep in sweeps { problems += check(sweep, pid: pid) }
            if let last = sweeps.last, let (_, missing) = try? memory(of: sweeps, pid: pid, at: last.seq),
                !missing.isEmpty
            {
                problems.append(
                    "pid \(pid): \(missing.pageCount) tracked page(s) at sweep \(last.seq) held by no sweep, first \(missing.ranges[0].start)"
                )
            }
        }
        return (problems, pids.count, count)
    }

    /// A sweep's pages file against its index: size, and the checksum of
    /// each range (of those overlapping `only`, when given). Each problem
    /// names the pages file.
    func check(_ sweep: SweepIndex, pid: Int32, only: AddressRange? = nil) -> [String] {
        let file = path + "/\(pid)/" + sweep.pagesFile
        guard let handle = FileHandle(forReadingAtPath: file) else { return ["cannot read \(file)"] }
        defer { try? handle.close() }
        let size = (try? handle.seekToEnd()) ?? 0
        var problems: [String] = []
        if size != sweep.pagesBytes {
            problems.append(
                "\(file) has \(size) bytes, its index (sweep \(sweep.seq) of pid \(pid)) says \(sweep.pagesBytes)")
        }
        for r in sweep.ranges where r.storesBytes && (only.map { r.range.range.overlaps($0) } ?? true) {
            let range = r.range.range
            guard let offset = r.offset, offset + range.length <= size else {
                problems.append("\(file): \(range) lies outside the file")
                continue
            }
            var hash = XXH64()
            var done: UInt64 = 0
            try? handle.seek(toOffset: offset)
            while done < range.length {
                let count = Int(min(UInt64(ImageWriter.chunkBytes), range.length - done))
                guard let data = try? handle.read(upToCount: count), data.count == count else { break }
                data.withUnsafeBytes { hash.update($0) }
                done += UInt64(count)
            }
            if done != range.length || IndexedRange.hex16(hash.value) != r.xxh64 {
                problems.append("\(file): \(range) does not match its checksum")
            }
        }
        return problems
    }

    /// Throws the first problem of the sweeps up to `seq` (those parts
    /// overlapping `only`): what `read` and `build` rely on must be sound.
    func check(_ sweeps: [SweepIndex], pid: Int32, upTo seq: Int, only: AddressRange? = nil) throws(ImageError) {
        for sweep in sweeps where sweep.seq <= seq {
            if let problem = check(sweep, pid: pid, only: only).first {
                throw .damaged(problem: problem)
            }
        }
    }

    func bytes(pid: Int32, source: Source, skip: UInt64, count: Int, files: inout [Int: FileHandle])
        throws(ImageError) -> [UInt8]
    {
        if source.kind == .zero { return [UInt8](repeating: 0, count: count) }
        let file = path + "/\(pid)/" + SweepIndex.pagesFileName(seq: source.seq)
        if files[source.seq] == nil {
            guard let h = FileHandle(forReadingAtPath: file) else { throw .read(path: file, errno: errno) }
            files[source.seq] = h
        }
        let handle = files[source.seq]!
        do {
            try handle.seek(toOffset: source.offset + skip)
            let data = try handle.read(upToCount: count) ?? Data()
            guard data.count == count else {
                throw ImageError.malformed(path: file, reason: "shorter than its index says")
            }
            return [UInt8](data)
        } catch let e as ImageError {
            throw e
        } catch {
            throw .read(path: file, errno: EIO)
        }
    }

    static func readJSON<T: Decodable>(_ type: T.Type, from path: String) throws(ImageError) -> T {
        guard let data = FileManager.default.contents(atPath: path) else { throw .read(path: path, errno: ENOENT) }
        do { return try JSONDecoder().decode(type, from: data) } catch {
            throw .malformed(path: path, reason: "not a \(ImageSchema.name) file (\(error))")
        }
    }
}

/// Disjoint address ranges, each with where its contents are; assigning a
/// range overwrites what it overlaps.
struct SourceMap {
    typealias Source = ImageDirectory.Source
    private(set) var segments: [(range: AddressRange, source: Source)] = []

    /// The index of the first segment that ends after `address`.
    func firstEnding(after address: RemoteAddress) -> Int {
        var lo = 0, hi = segments.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if segments[mid].range.end <= address { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    mutating func remove(_ range: AddressRange) {
        guard !range.isEmpty else { return }
        let first = firstEnding(after: range.start)
        var last = first
        var kept: [(range: AddressRange, source: Source)] = []
        while last < segments.count, segments[last].range.start < range.end {
            let s = segments[last]
            if s.range.start < range.start {
                kept.append((AddressRange(start: s.range.start, end: range.start), s.source))
            }
            if s.range.end > range.end {
                // The tail's bytes start further into the pages file.
                var tail = s.source
                if tail.kind != .zero { tail.offset += range.end - s.range.start }
                kept.append((AddressRange(start: range.end, end: s.range.end), tail))
            }
            last += 1
        }
        segments.replaceSubrange(first..<last, with: kept)
    }

    mutating func assign(_ range: AddressRange, _ source: Source) {
        guard !range.isEmpty else { return }
        remove(range)
        segments.insert((range, source), at: firstEnding(after: range.start))
    }
}
