/// Signal names and numbers (Linux, the same on x86_64 and aarch64): for
/// the options that take a signal, and for reports of a signal's end. Here,
/// low in the graph, so that the report layer names signals without ptrace.
public enum SignalNames {
    public static let table: [(String, Int32)] = [
        ("HUP", 1), ("INT", 2), ("QUIT", 3), ("ILL", 4), ("TRAP", 5), ("ABRT", 6), ("BUS", 7), ("FPE", 8),
        ("KILL", 9), ("USR1", 10), ("SEGV", 11), ("USR2", 12), ("PIPE", 13), ("ALRM", 14), ("TERM", 15),
        ("STKFLT", 16), ("CHLD", 17), ("CONT", 18), ("STOP", 19), ("TSTP", 20), ("TTIN", 21), ("TTOU", 22),
        ("URG", 23), ("XCPU", 24), ("XFSZ", 25), ("VTALRM", 26), ("PROF", 27), ("WINCH", 28), ("IO", 29),
        ("PWR", 30), ("SYS", 31),
    ]

    /// `USR2`, `SIGUSR2`, `sigusr2`, `12`, `RTMIN+3` → the number; nil if unknown.
    public static func number(_ text: String) -> Int32? {
        if let n = Int32(text) { return (1...64).contains(n) ? n : nil }
        var t = text.uppercased()
        if t.hasPrefix("SIG") { t.removeFirst(3) }
        if let hit = table.first(where: { $0.0 == t }) { return hit.1 }
        if t == "RTMIN" { return 34 }
        if t == "RTMAX" { return 64 }
        if t.hasPrefix("RTMIN+"), let k = Int32(t.dropFirst(6)), (0...30).contains(k) { return 34 + k }
        if t.hasPrefix("RTMAX-"), let k = Int32(t.dropFirst(6)), (0...30).contains(k) { return 64 - k }
        return nil
    }

    /// `SIGSEGV`, `SIGRTMIN+3`, or `signal N` for a number with no name.
    public static func name(_ n: Int32) -> String {
        if let hit = table.first(where: { $0.1 == n }) { return "SIG" + hit.0 }
        if n >= 34 && n <= 64 { return n == 34 ? "SIGRTMIN" : "SIGRTMIN+\(n - 34)" }
        return "signal \(n)"
    }
}
