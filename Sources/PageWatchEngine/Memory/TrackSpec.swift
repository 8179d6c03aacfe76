import PageWatchAddressSpace

/// One `--track SPEC`: which private writable memory to watch.
public enum TrackSpec: Hashable, Sendable, CustomStringConvertible {
    /// Every private writable mapping (anonymous, heap, stacks, `.data`/`.bss`).
    case writable
    /// Private anonymous memory: `[heap]`, `[stack]`, thread stacks, `mmap(MAP_ANONYMOUS)`.
    case anon
    case heap
    /// The main stack and every thread's stack.
    case stack
    /// Private writable mappings of this file.
    case file(String)
    /// Pages of private writable mappings inside this range (widened to pages).
    case range(AddressRange)

    public var description: String {
        switch self {
        case .writable: return "writable"
        case .anon: return "anon"
        case .heap: return "heap"
        case .stack: return "stack"
        case .file(let p): return "file:\(p)"
        case .range(let r): return "\(r.start.hex)-\(r.end.hex)"
        }
    }

    public enum ParseError: Error, Equatable, CustomStringConvertible {
        case unknown(String)
        case malformedRange(String)
        case emptyPath
        public var description: String {
            switch self {
            case .unknown(let s):
                return "unknown --track SPEC '\(s)' (expected writable, anon, heap, stack, file:PATH or 0xSTART-0xEND)"
            case .malformedRange(let s):
                return "malformed range '\(s)' (expected 0xSTART-0xEND in hex, START below END)"
            case .emptyPath: return "file: needs a path (file:PATH)"
            }
        }
    }

    public static func parse(_ text: String) throws -> TrackSpec {
        switch text {
        case "writable": return .writable
        case "anon": return .anon
        case "heap": return .heap
        case "stack": return .stack
        default: break
        }
        if text.hasPrefix("file:") {
            let path = String(text.dropFirst(5))
            if path.isEmpty { throw ParseError.emptyPath }
            return .file(path)
        }
        if text.hasPrefix("0x") || text.hasPrefix("0X") {
            guard let range = AddressRange(parsing: text) else { throw ParseError.malformedRange(text) }
            return .range(range.pageAligned)
        }
        throw ParseError.unknown(text)
    }
}

/// The union of the user's `--track` specs.
public struct Selection: Sendable, CustomStringConvertible {
    public var specs: [TrackSpec]
    /// Pages left to another backend (userfaultfd write-protection): never
    /// selected for the ptrace path, whatever the specs say.
    public var excluded = PageSet()

    public init(_ specs: [TrackSpec]) { self.specs = specs.isEmpty ? [.writable] : specs }

    public var description: String { specs.map(\.description).joined(separator: ",") }

    /// The part of `mapping` (with `protection` as the program intends it)
    /// that is selected, or nil. Shared mappings and `[vdso]`/`[vvar]`/`[vsyscall]`
    /// are never selected.
    public func selectedPart(of mapping: Mapping, protection: Protection, isThreadStack: Bool) -> [AddressRange] {
        let parts = specifiedPart(of: mapping, protection: protection, isThreadStack: isThreadStack)
        guard !excluded.isEmpty, !parts.isEmpty else { return parts }
        return PageSet(parts).subtracting(excluded).ranges
    }

    /// `selectedPart` as the specs alone pick it.
    func specifiedPart(of mapping: Mapping, protection: Protection, isThreadStack: Bool) -> [AddressRange] {
        guard mapping.isPrivate, protection.contains(.write), !mapping.isSpecialKernelMapping else { return [] }
        var whole = false
        var pieces: [AddressRange] = []
        for spec in specs {
            switch spec {
            case .writable: whole = true
            case .anon: if mapping.isAnonymous { whole = true }
            case .heap: if mapping.isHeap { whole = true }
            case .stack: if mapping.isMainStack || isThreadStack { whole = true }
            case .file(let p): if mapping.isFileBacked && mapping.path == p { whole = true }
            case .range(let r): if let x = mapping.range.intersection(r) { pieces.append(x) }
            }
            if whole { return [mapping.range] }
        }
        // Several ranges may overlap: sorted and disjoint, as callers walk them in order.
        return PageSet(pieces).ranges
    }
}

/// `--interval`: `250ms`, `2s`, `1.5s`, `100us`, `1m`, `0` (off). Nanoseconds.
public enum IntervalParser {
    public static func parse(_ text: String) -> UInt64? {
        let units: [(String, Double)] = [
            ("ns", 1), ("us", 1e3), ("µs", 1e3), ("ms", 1e6), ("s", 1e9), ("m", 60e9), ("h", 3600e9),
        ]
        if text == "0" { return 0 }
        for (suffix, scale) in units where text.hasSuffix(suffix) {
            let number = text.dropLast(suffix.count)
            // "ms" also ends in "s": only accept a purely numeric remainder.
            guard !number.isEmpty, number.allSatisfy({ $0.isNumber || $0 == "." }),
                let v = Double(number), v >= 0, v.isFinite
            else { continue }
            let ns = v * scale
            guard ns < 1e18 else { return nil }
            return UInt64(ns.rounded())
        }
        return nil
    }
}
