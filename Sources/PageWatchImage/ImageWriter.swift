import Foundation
import PageWatchAddressSpace

/// Writes one process's sweeps into `DIR/PID/` (docs/image-format.md).
/// Every error is thrown: an image is whole or the dump stops, never short.
public final class ImageWriter {
    public let directory: String
    public let pid: Int32
    /// The pages tracked at the last sweep written: what the next one's `gone` is taken from.
    var lastTracked = PageSet()
    /// The largest read of the process's memory at once.
    public static let chunkBytes = 64 * Int(Page.size)

    /// Creates `root` (with `image.json` when `manifest` is given: the
    /// program's writer) and `root/PID`.
    public init(root: String, pid: Int32, manifest: ImageManifest?) throws(ImageError) {
        self.pid = pid
        directory = root + "/\(pid)"
        if let manifest {
            try Self.makeDirectory(root)
            let path = root + "/image.json"
            if access(path, F_OK) == 0 { throw .exists(path: root) }
            try Self.writeJSON(manifest, to: path)
        }
        try Self.makeDirectory(directory)
    }

    /// One sweep's increment. `pieces` are the sweep's pages, sorted and
    /// disjoint, each with its kind (`data`, `file` or `zero`) and mapping;
    /// `read` reads the process's memory at a range into a buffer of its
    /// length (false: not readable whole, gone meanwhile).
    ///
    /// Each chunk is read into one buffer, reused, where the checksum finds
    /// it in cache, and written from there at its offset. (Read straight into the pages
    /// file, mapped, it was slower: a file page mapped is zeroed first, a
    /// page written whole is not.)
    public func write(
        seq: Int, reason: String, timeNs: UInt64, tracked: PageSet,
        pieces: [(range: AddressRange, kind: IndexedRange.Kind, mapping: String)],
        read: (AddressRange, UnsafeMutableRawBufferPointer) -> Bool
    ) throws(ImageError) {
        let pagesName = SweepIndex.pagesFileName(seq: seq)
        let pagesPath = directory + "/" + pagesName
        let fd = open(pagesPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .write(path: pagesPath, errno: errno) }
        var closed = false
        defer { if !closed { close(fd) } }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.chunkBytes, alignment: Int(Page.size))
        defer { buffer.deallocate() }
        let total = pieces.reduce(UInt64(0)) { $0 + ($1.kind == .data || $1.kind == .file ? $1.range.length : 0) }
        var offset: UInt64 = 0
        var indexed: [IndexedRange] = []
        for piece in pieces {
            guard piece.kind == .data || piece.kind == .file else {
                indexed.append(IndexedRange(range: piece.range, kind: piece.kind, mapping: piece.mapping))
                continue
            }
            var hash = XXH64()
            var at = piece.range.start
            var readable = true
            while at < piece.range.end {
                let chunk = UnsafeMutableRawBufferPointer(
                    rebasing: buffer[0..<min(Self.chunkBytes, Int(piece.range.end - at))])
                guard read(AddressRange(start: at, end: at + UInt64(chunk.count)), chunk) else {
                    readable = false
                    break
                }
                hash.update(UnsafeRawBufferPointer(chunk))
                try Self.writeAll(
                    fd, UnsafeRawBufferPointer(chunk), at: offset + (at - piece.range.start), path: pagesPath)
                at = at + UInt64(chunk.count)
            }
            // Unmapped by a running thread while being read: `gone`, and the
            // space it had stays unused (written in part, or a hole).
            indexed.append(
                readable
                    ? IndexedRange(
                        range: piece.range, kind: piece.kind, offset: offset, xxh64: hash.value, mapping: piece.mapping)
                    : IndexedRange(range: piece.range, kind: .gone, mapping: piece.mapping))
            offset += piece.range.length
        }
        // The size the index gives, whatever the last run was.
        if ftruncate(fd, off_t(total)) != 0 { throw .write(path: pagesPath, errno: errno) }
        // close(2) reports delayed write errors (NFS, quotas).
        closed = true
        if close(fd) != 0 { throw .write(path: pagesPath, errno: errno) }
        let gone = lastTracked.subtracting(tracked)
        lastTracked = tracked
        let index = SweepIndex(
            seq: seq, pid: pid, reason: reason, timeNs: timeNs, tracked: tracked.ranges, ranges: indexed,
            gone: gone.ranges, pagesFile: pagesName, pagesBytes: total)
        try Self.writeJSON(index, to: directory + "/" + SweepIndex.fileName(seq: seq))
    }

    /// Before anything is traced: `root` made (with its parents) and
    /// writable, and holding no image yet, so that a bad `--dump DIR` is
    /// refused at once rather than at the first sweep.
    public static func prepare(root: String) throws(ImageError) {
        if access(root + "/image.json", F_OK) == 0 { throw .exists(path: root) }
        var path = root.hasPrefix("/") ? "" : "."
        for part in root.split(separator: "/") {
            path += "/" + part
            try makeDirectory(path)
        }
        let probe = root + "/.pagewatch-write-test"
        let fd = open(probe, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .write(path: root, errno: errno) }
        close(fd)
        unlink(probe)
    }

    static func makeDirectory(_ path: String) throws(ImageError) {
        if mkdir(path, 0o755) != 0 && errno != EEXIST { throw .write(path: path, errno: errno) }
    }

    /// Writes all of `bytes` at `offset` of the file (`pwrite`, again
    /// after a short write or EINTR).
    static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: UInt64, path: String)
        throws(ImageError)
    {
        let failure = pwriteAll(fd, bytes, at: offset)
        if failure != 0 { throw .write(path: path, errno: failure) }
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8], at offset: UInt64, path: String) throws(ImageError) {
        let failure = bytes.withUnsafeBytes { pwriteAll(fd, $0, at: offset) }
        if failure != 0 { throw .write(path: path, errno: failure) }
    }

    /// 0, or the errno that stopped it.
    private static func pwriteAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: UInt64) -> Int32 {
        var done = 0
        while done < bytes.count {
            let n = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                return errno
            }
            done += n
        }
        return 0
    }

    /// Written under a temporary name and renamed: a file that exists is whole.
    static func writeJSON<T: Encodable>(_ value: T, to path: String) throws(ImageError) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        guard let data = try? encoder.encode(value) else { throw .malformed(path: path, reason: "cannot encode") }
        let temporary = path + ".tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .write(path: temporary, errno: errno) }
        do throws(ImageError) {
            try writeAll(fd, [UInt8](data) + [0x0a], at: 0, path: temporary)
        } catch {
            close(fd)
            throw error
        }
        if close(fd) != 0 { throw .write(path: temporary, errno: errno) }
        if rename(temporary, path) != 0 { throw .write(path: path, errno: errno) }
    }
}
