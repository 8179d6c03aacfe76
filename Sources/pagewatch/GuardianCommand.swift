import ArgumentParser
import PageWatchEngine

/// The watchdog `attach` starts (it restores the program if the tracer
/// dies); not for people.
struct GuardianCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "guardian", abstract: "Internal: restores an attached process if pagewatch dies.",
        shouldDisplay: false)

    func run() throws {
        throw ExitCode(Guardian.watch())
    }
}
