import Foundation
import Testing

/// `make install` (scripts/install.sh) into a temporary prefix: a binary
/// that needs no Swift toolchain, its man pages and completions.
@Suite(.serialized) struct InstallTests {
    static let root = Harness.fixturesFolder.deletingLastPathComponent().path

    /// The toolchain's `usr` folder, from the `swift` on the PATH.
    static var toolchain: String? {
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":") {
            let swift = URL(fileURLWithPath: "\(dir)/swift")
            if FileManager.default.isExecutableFile(atPath: swift.path) {
                return swift.resolvingSymlinksInPath().deletingLastPathComponent().deletingLastPathComponent().path
            }
        }
        return nil
    }

    @Test func installsARunnableBinaryManPagesAndCompletions() throws {
        let prefix = Harness.temporaryPath("prefix")
        try? FileManager.default.removeItem(atPath: prefix)
        let install = try Harness.run(["/bin/bash", "\(Self.root)/scripts/install.sh", prefix], timeout: 1800)
        #expect(install.status == 0, "\(install.stderr.suffix(3000))")
        let bin = "\(prefix)/bin/pagewatch"
        #expect(install.stdout.contains("installed pagewatch "))

        // No library of the toolchain's: the Swift runtime is in the binary.
        let toolchain = try #require(Self.toolchain)
        let ldd = try Harness.run(["/usr/bin/ldd", bin])
        #expect(ldd.status == 0)
        #expect(!ldd.stdout.contains(toolchain) && !ldd.stdout.contains("libswift"), "\(ldd.stdout)")
        // And it runs with the toolchain's folder hidden (a mount namespace of its own).
        if getuid() == 0 {
            let hidden = try Harness.run([
                "/usr/bin/unshare", "-m", "/bin/sh", "-c",
                "mount -t tmpfs none \(toolchain) && test ! -e \(toolchain)/bin/swift && \(bin) --version && \(bin) run --interval 0 -o - /bin/echo hi",
            ])
            #expect(hidden.status == 0, "\(hidden.stderr)")
            #expect(hidden.stdout.hasPrefix(try Harness.run([Harness.pagewatch, "--version"]).stdout))
            #expect(hidden.stdout.contains(#"{"type":"end","pid":"#))
            #expect(hidden.stderr == "hi\n")
        }

        for page in [
            "pagewatch", "pagewatch.run", "pagewatch.attach", "pagewatch.report", "pagewatch.image", "pagewatch.probe",
        ] {
            let text = try String(contentsOfFile: "\(prefix)/share/man/man1/\(page).1", encoding: .utf8)
            #expect(text.contains(".Sh NAME") && text.contains(".Dt \(page.uppercased()) 1"), "\(page).1")
        }
        let bash = try Harness.run([
            "/bin/bash", "-c", "source \(prefix)/share/bash-completion/completions/pagewatch && complete -p pagewatch",
        ])
        #expect(bash.status == 0 && bash.stdout.contains("pagewatch"), "\(bash.stderr)")
        #expect(FileManager.default.fileExists(atPath: "\(prefix)/share/zsh/site-functions/_pagewatch"))
        #expect(FileManager.default.fileExists(atPath: "\(prefix)/share/fish/vendor_completions.d/pagewatch.fish"))
    }
}
