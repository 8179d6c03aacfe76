import Glibc

/// An errno value with its symbolic name, printed the way strace prints them:
/// `Operation not permitted (EPERM)`.
public struct Errno: Error, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: Int32
    public init(_ rawValue: Int32) { self.rawValue = rawValue }

    public static let EPERM = Errno(1), ENOENT = Errno(2), ESRCH = Errno(3), EINTR = Errno(4),
        EIO = Errno(5), ECHILD = Errno(10), EAGAIN = Errno(11), ENOMEM = Errno(12), EACCES = Errno(13),
        EFAULT = Errno(14), EBUSY = Errno(16), EEXIST = Errno(17), EINVAL = Errno(22), ENOSYS = Errno(38)

    private static let names: [Int32: String] = [
        1: "EPERM", 2: "ENOENT", 3: "ESRCH", 4: "EINTR", 5: "EIO", 7: "E2BIG", 8: "ENOEXEC", 9: "EBADF",
        10: "ECHILD", 11: "EAGAIN", 12: "ENOMEM", 13: "EACCES", 14: "EFAULT", 16: "EBUSY", 17: "EEXIST",
        20: "ENOTDIR", 21: "EISDIR", 22: "EINVAL", 24: "EMFILE", 26: "ETXTBSY", 38: "ENOSYS",
        40: "ELOOP", 36: "ENAMETOOLONG",
        // The log's and reports' write errors.
        27: "EFBIG", 28: "ENOSPC", 32: "EPIPE", 122: "EDQUOT",
    ]

    public var name: String { Errno.names[rawValue] ?? "errno \(rawValue)" }
    public var message: String { String(cString: strerror(rawValue)) }
    public var description: String { "\(message) (\(name))" }
}
