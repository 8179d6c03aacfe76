import PageWatchLog

/// `pagewatch report --format folded`: the collapsed-stack format that
/// flamegraph.pl, inferno and speedscope read: `outer;...;inner COUNT`, one
/// line per distinct stack, weighted by dirtied pages.
public enum FoldedReport {
    public static func render(_ report: ProcessReport) -> String {
        stacks(report.writers).map { "\($0.frames.joined(separator: ";")) \($0.pages)\n" }.joined()
    }

    /// One entry per distinct stack, outermost frame first, most pages first
    /// (ties: first seen first). The HTML flame graph draws these too.
    static func stacks(_ writers: [Writer]) -> [(frames: [String], pages: UInt64)] {
        var counts: [[String]: UInt64] = [:]
        var order: [[String]] = []
        for w in writers {
            // Writers differing only in what the names drop (ips, lines) are one stack here.
            let stack = w.frames.isEmpty ? ["[no frames]"] : w.frames.reversed().map { frameName($0) }
            if counts[stack] == nil { order.append(stack) }
            counts[stack, default: 0] += w.pages
        }
        let sorted = order.enumerated().sorted { a, b in
            let ca = counts[a.element]!, cb = counts[b.element]!
            return ca != cb ? ca > cb : a.offset < b.offset
        }
        return sorted.map { ($0.element, counts[$0.element]!) }
    }

    /// The frame's name with what the format reserves replaced: `;`
    /// separates frames, a newline ends the record. A space is allowed
    /// (the count is after the last space), so `[kernel] read` stays as is.
    static func frameName(_ f: Frame) -> String {
        var name = FrameNaming.name(f)
        if name.contains(where: { $0 == ";" || $0 == "\n" || $0 == "\r" }) {
            name = String(name.map { $0 == ";" ? ":" : ($0 == "\n" || $0 == "\r" ? " " : $0) })
        }
        return name.isEmpty ? "[unnamed]" : name
    }
}
