import Glibc
import PageWatchAddressSpace

/// The log's schema (docs/format.md): `pagewatch/2` by default; `pagewatch/1`
/// for readers that predate it (no `zero_ranges` or `file_ranges`: every
/// page new to PageWatch is in `ranges`, as that schema says).
public enum LogSchema: Int, Sendable, CaseIterable {
    case v1 = 1, v2 = 2

    public static let current = LogSchema.v2
    /// `pagewatch/N`, as the `start` record's `schema` says it.
    public var name: String { "pagewatch/\(rawValue)" }

    /// `2`, `pagewatch/2`.
    public init?(name: String) {
        let digits = name.hasPrefix("pagewatch/") ? name.dropFirst("pagewatch/".count) : Substring(name)
        guard let n = Int(digits), let schema = LogSchema(rawValue: n) else { return nil }
        self = schema
    }
}

/// Why a sweep happened (the log's `reason`).
public enum SweepReason: String, Sendable {
    case interval, signal, exit, detach
    /// The first sweep of `pagewatch attach`: every selected page is new to PageWatch.
    case attach
    /// The last sweep of a process PageWatch stops tracking (an `untracked` record follows).
    case untracked
}

/// One sweep: the pages dirtied since the previous sweep re-armed them.
public struct SweepRecord: Sendable, Equatable {
    public var seq: Int
    public var pid: Int32
    public var reason: SweepReason
    public var timeNs: UInt64
    /// Sorted, coalesced, half-open, page-aligned: the pages that may hold
    /// what the process wrote since the previous sweep.
    public var ranges: [AddressRange]
    public var faults: Int
    /// Who wrote the pages, most pages first; nil when
    /// attribution is off (`--stack-depth 0`).
    public var sites: [WriteSite]?
    /// False for a sweep that could re-arm nothing (no thread to run code
    /// in): its pages stay writable and are reported again.
    public var rearmed = true
    /// Pages of this sweep left writable (not re-armed): the next sweep reports them again.
    public var leftWritable: UInt64 = 0
    /// The pages of this sweep that the previous one reported and left
    /// writable: not known to be written again, left out of the dirty rate.
    public var reportedAgain: [AddressRange] = []
    /// The pages of this sweep reported because presumption left them
    /// writable (rewritten at every sweep before): not seen written in its
    /// interval, reported in case they were. A subset of `reportedAgain`.
    public var presumed: [AddressRange] = []
    /// `pagewatch/2`: pages whose contents may have changed unseen (new to
    /// PageWatch, or changed without a store) and that read as zeros now:
    /// never populated, or discarded. Disjoint from `ranges`.
    public var zeroRanges: [AddressRange] = []
    /// `pagewatch/2`: such pages of private file mappings that hold their
    /// file's contents now (never copied on write, or discarded since).
    /// Disjoint from `ranges` and `zeroRanges`.
    public var fileRanges: [AddressRange] = []
    /// The tracked mappings new or renamed since the previous record that
    /// named them (`start`, `exec`, a sweep): a new `mmap`, heap growth, a
    /// new thread's stack. Empty under `pagewatch/1`, which names none.
    public var mappings: [NamedMapping] = []

    public var dirtyPages: UInt64 { ranges.reduce(0) { $0 + $1.pageCount } }

    public init(
        seq: Int, pid: Int32, reason: SweepReason, timeNs: UInt64, ranges: [AddressRange], faults: Int,
        sites: [WriteSite]? = nil
    ) {
        self.sites = sites
        self.seq = seq
        self.pid = pid
        self.reason = reason
        self.timeNs = timeNs
        self.ranges = ranges
        self.faults = faults
    }
}

/// How the traced program ended.
public enum ProgramEnd: Sendable, Equatable {
    case exited(code: Int32)
    case killed(signal: Int32)

    /// The status a shell would report: the code, or 128 + the signal.
    public var shellStatus: Int32 {
        switch self {
        case .exited(let c): return c
        case .killed(let s): return 128 + s
        }
    }
}

/// Every line the engine emits, in order.
public enum LogRecord: Sendable, Equatable {
    /// `selectedPages`: the pages the selection picked in the process when
    /// the record was written (0 in a program whose memory is still to come).
    /// `mappings`: those pages, named; nil under `pagewatch/1` (not written).
    case start(
        pid: Int32, pageSize: UInt64, command: [String], tracked: [String], timeNs: UInt64, selectedPages: UInt64 = 0,
        schema: LogSchema = .current, mappings: [NamedMapping]? = nil, backends: [String: String]? = nil)
    /// The program called exec: tracking restarted on the new image.
    /// `command`: its new command line (empty when it could not be read).
    /// `mappings`: the new image's selected pages, named; nil under `pagewatch/1`.
    /// `backends`: what tracks the new image's memory, as `start` says it (rule 15).
    case exec(
        pid: Int32, path: String, command: [String] = [], timeNs: UInt64, mappings: [NamedMapping]? = nil,
        backends: [String: String]? = nil)
    case sweep(SweepRecord)
    /// `--follow-forks`: a new tracked process (a fork child, or a vfork
    /// child at its exec), with its own sweeps from here on.
    case fork(pid: Int32, parent: Int32, timeNs: UInt64)
    /// `pagewatch attach` seized the running process (right after `start`).
    case attach(pid: Int32, threads: Int, timeNs: UInt64)
    /// `pagewatch attach` let go of the process, which runs on (the last line
    /// instead of `end` when the program did not end meanwhile).
    case detach(pid: Int32, sweeps: Int, faults: Int, timeNs: UInt64)
    /// `--verify-contents`: pages whose contents changed since sweep `seq` − 1
    /// armed them although no write to them was seen (reported by sweep `seq`).
    case missed(pid: Int32, seq: Int, pages: Int, ranges: [AddressRange], timeNs: UInt64)
    /// Something the user must know although nothing failed (also on
    /// stderr): e.g. PageWatch's own work taking most of the program's time.
    case warning(pid: Int32, message: String, timeNs: UInt64)
    /// PageWatch stopped tracking this process and let it run on unchanged.
    case untracked(pid: Int32, reason: String, timeNs: UInt64)
    /// `--follow-forks`: a tracked process other than the program ended.
    case exit(pid: Int32, end: ProgramEnd, sweeps: Int, faults: Int, timeNs: UInt64)
    case end(pid: Int32, end: ProgramEnd, sweeps: Int, faults: Int, timeNs: UInt64)
}

/// CLOCK_REALTIME in nanoseconds, for `time_ns`.
public func wallClockNs() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}
