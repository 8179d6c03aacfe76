import ArgumentParser
import Glibc
import PageWatchLog

@main
struct PageWatch: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pagewatch",
        abstract: "Report which memory pages a process writes, on any Linux kernel (ptrace + mprotect).",
        version: PageWatchVersion.current,
        subcommands: [Run.self, Attach.self, Report.self, Image.self, Probe.self, GuardianCommand.self]
    )

    /// Usage errors exit 2, as in most Linux tools (ArgumentParser's default is 64).
    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            let code = exitCode(for: error)
            if code == .validationFailure {
                var message = fullMessage(for: error)
                if message.hasPrefix("Error: ") { message.removeFirst(7) }
                writeAll(STDERR_FILENO, "pagewatch: " + message + "\n")
                Glibc.exit(2)
            }
            exit(withError: error)
        }
    }
}
