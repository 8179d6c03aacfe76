import PageWatchAddressSpace
import PageWatchAttribution
import PageWatchLog
import PageWatchPtrace

/// Who wrote which page of one tracked process: the writers' call stacks
/// (the `Unwinder`), their names (a frame cache over the session's
/// `Symbolizer`, kept while the code mappings stay the same) and the
/// `WriterLedger` a sweep's `sites` come from.
final class WriterAttribution {
    unowned let session: Tracker
    let pid: Int32
    /// The writers of the pages dirtied since the last sweep.
    var ledger = WriterLedger()
    /// Unwinds writers' stacks; made at the first need, per image.
    var unwinder: Unwinder?
    /// `/proc/PID/maps` as last read: writers are symbolized against it.
    var lastMaps: [Mapping] = []
    /// Frames by instruction pointer (inner frames looked up at IP-1 have
    /// their own entries), kept while the code mappings stay the same.
    var frameCache: [FrameKey: Frame] = [:]

    init(session: Tracker, pid: Int32) {
        self.session = session
        self.pid = pid
    }

    var stackDepth: Int { session.config.stackDepth }

    /// A new program image: nothing known of its code or writers.
    func startImage() {
        ledger = WriterLedger()
        unwinder = nil
        lastMaps = []
        frameCache = [:]
        session.symbolizer.forgetPerfMap(pid: pid)
    }

    /// The writer at `tid`'s stop: its call stack (`--stack-depth` frames),
    /// and `kernel` when the kernel writes for it. Empty stacks when
    /// attribution is off.
    func writer(_ kernel: String?, tid: Int32) -> Writer {
        guard stackDepth > 0 else { return Writer(kernel: kernel, stack: []) }
        if unwinder == nil { unwinder = try? Unwinder(pid: pid, images: session.unwindImages) }
        let stack = unwinder?.unwind(tid: tid, maxDepth: stackDepth) ?? Unwinder.CallStack()
        return Writer(kernel: kernel, stack: stack.ips, framePointerFrames: stack.framePointerFrames)
    }

    /// Every page write the engine records goes through here: into the
    /// ledger the sweep's `sites` come from, and to the session's write
    /// observer when one is set. Only then are the frames symbolized at the
    /// write, through the cache the sweep reads next (so the sweep does not
    /// pay twice); without an observer (the CLI) the fault path stays as it
    /// was, unwinding only. `phase`: the `seq` of the sweep that will report it.
    func noteWrite(_ page: RemoteAddress, by writer: Writer, fault: Bool, tid: Int32, phase: Int) {
        // Attribution off and nobody observing: no writer to keep (the
        // ledger's map would cost memory per dirty page).
        guard stackDepth > 0 || session.writeObserver != nil else { return }
        guard ledger.record(page, by: writer, fault: fault), let observe = session.writeObserver else { return }
        let frames = writer.marking(writer.stack.enumerated().map { i, ip in frame(ip, isReturnAddress: i > 0) })
        observe(
            PageWrite(
                pid: pid, tid: tid, page: Page.floor(page), phase: phase, kernel: writer.kernel,
                fault: fault, frames: frames))
    }

    /// A sweep's `sites` for `dirty` (nil with attribution off). `presumed`:
    /// the pages reported as presumed written. `reportedAgain`: the pages
    /// stay dirty for the next sweep (nothing was re-armed), so their
    /// writers are kept.
    func sites(of dirty: PageSet, pinned: PageSet, presumed: PageSet, reportedAgain: Bool) -> [WriteSite]? {
        if stackDepth > 0 {
            return ledger.sites(of: dirty, pinned: pinned, presumed: presumed, keepingWriters: reportedAgain) {
                $0.enumerated().map { i, ip in frame(ip, isReturnAddress: i > 0) }
            }
        } else if !reportedAgain {
            // No sites to name, but the ledger still starts again: it tells
            // the next interval's first writes (`noteWrite`).
            ledger = WriterLedger()
        }
        return nil
    }

    /// A maps read (`ProcessTracker.refreshMaps`): when a module came or
    /// went, cached unwind tables and names may be stale.
    func mapsRead(_ maps: [Mapping]) {
        if unwinder != nil || !frameCache.isEmpty, Self.code(of: maps) != Self.code(of: lastMaps) {
            unwinder?.mappingsChanged(maps: maps)
            frameCache = [:]
        }
        lastMaps = maps
    }

    func frame(_ ip: UInt64, isReturnAddress: Bool) -> Frame {
        let key = FrameKey(ip: ip, isReturnAddress: isReturnAddress)
        if let known = frameCache[key] { return known }
        let f = session.symbolizer.frame(ip: ip, in: lastMaps, isReturnAddress: isReturnAddress, pid: pid)
        // Not kept for code in anonymous memory: a JIT names it in its perf
        // map later, or puts other code there.
        if f.module != nil { frameCache[key] = f }
        return f
    }

    /// The mappings unwinding and symbolizing read: file-backed, not writable.
    static func code(of maps: [Mapping]) -> [Mapping] {
        maps.filter { $0.isFileBacked && !$0.protection.contains(.write) }
    }
}
