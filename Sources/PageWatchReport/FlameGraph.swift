/// The HTML report's flame graph: the folded format's stacks (outermost
/// frame first, weighted by pages) drawn as one inline SVG, the root at the
/// bottom and each frame as wide as the pages written under it.
struct FlameGraph {
    struct Node {
        var name: String
        var pages: UInt64
        var depth: Int
        var children: [Int] = []
    }

    /// `nodes[0]` is the root, every stack's common caller ("all").
    private(set) var nodes: [Node]
    var total: UInt64 { nodes[0].pages }

    init(_ stacks: [(frames: [String], pages: UInt64)]) {
        nodes = [Node(name: "all", pages: 0, depth: 0)]
        var childIndex: [Int: [String: Int]] = [:]
        for stack in stacks where stack.pages > 0 {
            nodes[0].pages += stack.pages
            var parent = 0
            for frame in stack.frames {
                let child: Int
                if let i = childIndex[parent]?[frame] {
                    child = i
                } else {
                    child = nodes.count
                    nodes.append(Node(name: frame, pages: 0, depth: nodes[parent].depth + 1))
                    nodes[parent].children.append(child)
                    childIndex[parent, default: [:]][frame] = child
                }
                nodes[child].pages += stack.pages
                parent = child
            }
        }
        // Widest first, so that the biggest writers read left to right.
        let unsorted = nodes
        for i in nodes.indices {
            nodes[i].children.sort { a, b in
                unsorted[a].pages != unsorted[b].pages
                    ? unsorted[a].pages > unsorted[b].pages : unsorted[a].name < unsorted[b].name
            }
        }
    }

    /// The fewest pages a drawn frame has: `minShare` of the whole, raised
    /// until at most `maxFrames` frames are left. A frame never has more
    /// pages than its caller, so the frames kept always reach the root.
    func threshold(minShare: Double, maxFrames: Int, maxDepth: Int) -> UInt64 {
        var least = max(1, UInt64((Double(total) * minShare).rounded(.up)))
        let weights = nodes.filter { $0.depth <= maxDepth && $0.pages >= least }.map(\.pages).sorted(by: >)
        if weights.count > maxFrames { least = weights[maxFrames] + 1 }
        return least
    }

    /// The SVG, or nil when nothing was written.
    func svg(
        id: String, width: Double = 900, rowHeight: Double = 17, minShare: Double = 0.001, maxFrames: Int = 2_000,
        maxDepth: Int = 64
    ) -> (svg: String, omitted: Int)? {
        guard total > 0 else { return nil }
        let least = threshold(minShare: minShare, maxFrames: maxFrames, maxDepth: maxDepth)
        var drawn: [(node: Int, x: Double)] = []
        var pending = [(node: 0, x: 0.0)]
        while let (i, x) = pending.popLast() {
            drawn.append((i, x))
            var childX = x
            for c in nodes[i].children {
                if nodes[c].pages >= least && nodes[c].depth <= maxDepth { pending.append((c, childX)) }
                childX += width * Double(nodes[c].pages) / Double(total)
            }
        }
        let rows = (drawn.map { nodes[$0.node].depth }.max() ?? 0) + 1
        let height = Double(rows) * rowHeight
        var out =
            "<svg id=\"\(id)\" class=\"flame\" width=\"\(Int(width))\" height=\"\(Int(height))\" "
            + "viewBox=\"0 0 \(Int(width)) \(Int(height))\" role=\"img\" aria-label=\"flame graph of the writers, by pages\">\n"
        var path: [String] = []
        // Parents come before their children in `drawn` (depth-first), so the path is the stack so far.
        for (i, x) in drawn {
            let node = nodes[i]
            if node.depth > 0 {
                path.removeLast(path.count - (node.depth - 1))
                path.append(node.name)
            }
            let w = width * Double(node.pages) / Double(total)
            let y = height - Double(node.depth + 1) * rowHeight
            let share = Format.fixed(Double(node.pages) * 100 / Double(total), 2)
            // The writer and its callers as the text report chains them; a deep stack's outermost frames elided.
            let callers = path.reversed()
            let stack =
                node.depth == 0
                ? "all writers"
                : callers.prefix(Self.titleFrames).joined(separator: " <- ")
                    + (callers.count > Self.titleFrames ? " <- …" : "")
            let tip = "\(stack): \(node.pages) pages (\(share)%)"
            // The full name stays on the group: the page's script labels the frames again when it zooms.
            let name = node.depth == 0 ? "all (\(node.pages) pages)" : node.name
            out +=
                "<g data-depth=\"\(node.depth)\" data-name=\"\(HTMLReport.escape(name))\"><rect class=\"flame-frame\" "
                + "x=\"\(HTMLReport.n(x))\" y=\"\(HTMLReport.n(y))\" width=\"\(HTMLReport.n(w))\" "
                + "height=\"\(HTMLReport.n(rowHeight - 1))\" fill=\"\(Self.colour(node.name, depth: node.depth))\">"
                + "<title>\(HTMLReport.escape(tip))</title></rect>"
                + "<text x=\"\(HTMLReport.n(x + 3))\" y=\"\(HTMLReport.n(y + rowHeight - 5))\">"
                + "\(HTMLReport.escape(Self.label(name, width: w) ?? ""))</text></g>\n"
        }
        return (out + "</svg>\n", nodes.count - drawn.count)
    }

    /// Frames named in a frame's tooltip, innermost first.
    static let titleFrames = 12

    /// Click a frame to zoom in on it (its callers stay under it, full
    /// width); click the bottom row to zoom out. Labels are cut as `label` cuts them.
    static let script = """
        document.querySelectorAll('svg.flame').forEach(function (svg) {
          var width = Number(svg.getAttribute('width'));
          var frames = Array.prototype.map.call(svg.querySelectorAll('g'), function (g) {
            var rect = g.querySelector('rect');
            return { g: g, rect: rect, text: g.querySelector('text'), x: Number(rect.getAttribute('x')),
              w: Number(rect.getAttribute('width')), depth: Number(g.getAttribute('data-depth')), name: g.getAttribute('data-name') };
          });
          function label(name, w) {
            var fits = Math.floor((w - 6) / 6.5);
            return fits < 3 ? '' : (name.length <= fits ? name : name.slice(0, fits - 1) + '\\u2026');
          }
          // Coordinates are rounded to a tenth of a pixel: a little slack in what lies within a frame.
          function zoom(on) {
            frames.forEach(function (f) {
              var caller = f.depth < on.depth, x, w, shown;
              if (caller) {
                shown = f.x <= on.x + 0.15 && f.x + f.w >= on.x + on.w - 0.15;
                x = 0; w = width;
              } else {
                shown = f.x >= on.x - 0.15 && f.x + f.w <= on.x + on.w + 0.15;
                x = (f.x - on.x) * width / on.w; w = f.w * width / on.w;
              }
              f.g.style.display = shown ? '' : 'none';
              f.rect.setAttribute('x', x.toFixed(1));
              f.rect.setAttribute('width', w.toFixed(1));
              f.rect.style.opacity = caller ? '0.6' : '';
              f.text.setAttribute('x', (x + 3).toFixed(1));
              f.text.textContent = label(f.name, w);
            });
          }
          frames.forEach(function (f) {
            f.g.style.cursor = 'pointer';
            f.g.addEventListener('click', function () { zoom(f); });
          });
        });

        """

    /// The name cut to what fits in `width` pixels (about 6.5 per
    /// character at 11px), nil when not even three characters do.
    static func label(_ name: String, width: Double) -> String? {
        let fits = Int((width - 6) / 6.5)
        guard fits >= 3 else { return nil }
        return name.count <= fits ? name : String(name.prefix(fits - 1)) + "…"
    }

    /// Warm colours as flamegraph.pl draws code, picked by the name so that
    /// a function keeps its colour; the kernel blue, pseudo-frames grey.
    static func colour(_ name: String, depth: Int) -> String {
        if depth == 0 { return "rgb(200,200,200)" }
        if name.hasPrefix("[kernel] ") { return "rgb(110,160,220)" }
        if name.hasPrefix("[") { return "rgb(185,185,185)" }
        // FNV-1a: stable across runs, unlike Hasher.
        var hash: UInt32 = 2_166_136_261
        for byte in name.utf8 { hash = (hash ^ UInt32(byte)) &* 16_777_619 }
        let red = 205 + Int(hash % 50), green = 80 + Int((hash >> 8) % 150), blue = Int((hash >> 16) % 55)
        return "rgb(\(red),\(green),\(blue))"
    }
}
