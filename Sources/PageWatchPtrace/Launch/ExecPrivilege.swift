internal import CPtrace
import Glibc

/// Setuid, setgid and file-capability programs under ptrace. The kernel
/// gives a traced process the privileges of the file it execs only when
/// its tracer is capable (CAP_SYS_PTRACE over it, `ptracer_capable` in
/// `cap_bprm_creds_from_file`), and never under no_new_privs, which
/// PageWatch sets in the program to install its seccomp filter when it
/// lacks CAP_SYS_ADMIN. Otherwise the program runs as its caller, without
/// error: `passwd` and `ping` then fail or print wrong data. Found by
/// looking at the process after its exec, not by guessing: what the file
/// grants against what the process holds.
public enum ExecPrivilege {
    /// What `pid`'s new image was denied because PageWatch traces it
    /// (`setuid root`, `setgid 42`, `file capabilities 0x2000`), or nil:
    /// nothing to gain, gained, or lost for a reason of its own (a nosuid
    /// mount, its own no_new_privs) or with a capable tracer.
    /// `launched`: PageWatch started it (`run`), so may have set its no_new_privs.
    public static func denied(pid: Int32, launched: Bool) -> String? {
        let exe = "/proc/\(pid)/exe"
        var st = stat()
        guard stat(exe, &st) == 0, let status = try? ProcFS.read("/proc/\(pid)/status", pid: pid) else { return nil }
        var fs = statvfs()
        if statvfs(exe, &fs) == 0, fs.f_flag & UInt(ST_NOSUID) != 0 { return nil }
        func ids(_ name: String) -> [UInt32] {
            ProcFS.statusField(name, in: status)?.split(whereSeparator: { $0 == "\t" || $0 == " " }).compactMap {
                UInt32($0)
            } ?? []
        }
        var denied: [String] = []
        if st.st_mode & S_ISUID != 0, let euid = ids("Uid").dropFirst().first, euid != st.st_uid {
            denied.append(st.st_uid == 0 ? "setuid root" : "setuid \(st.st_uid)")
        }
        if st.st_mode & S_ISGID != 0, st.st_mode & S_IXGRP != 0, let egid = ids("Gid").dropFirst().first,
            egid != st.st_gid
        {
            denied.append("setgid \(st.st_gid)")
        }
        let held = ProcFS.statusField("CapPrm", in: status).flatMap { UInt64($0, radix: 16) } ?? 0
        if let granted = fileCapabilities(exe), granted & ~held != 0 {
            denied.append("file capabilities 0x\(String(granted, radix: 16))")
        }
        guard !denied.isEmpty else { return nil }
        // Ours only when PageWatch is the reason: its ptrace without the
        // capability, or the no_new_privs it set.
        let noNewPrivs = ProcFS.statusField("NoNewPrivs", in: status) == "1"
        let oursByNoNewPrivs = noNewPrivs && launched && !selfHasCapability(CAP_SYS_ADMIN) && !selfHas(noNewPrivs: true)
        let oursByPtrace = !noNewPrivs && !selfHasCapability(CAP_SYS_PTRACE)
        guard oursByNoNewPrivs || oursByPtrace else { return nil }
        return denied.joined(separator: ", ")
    }

    /// The permitted set a file's `security.capability` grants (struct
    /// vfs_cap_data: magic, then {permitted, inheritable} low and high words).
    static func fileCapabilities(_ path: String) -> UInt64? {
        var raw = [UInt8](repeating: 0, count: 24)
        let n = getxattr(path, "security.capability", &raw, raw.count)
        guard n >= 12 else { return nil }
        func word(_ at: Int) -> UInt64 { (0..<4).reduce(0) { $0 | UInt64(raw[at + $1]) << UInt64(8 * $1) } }
        let permitted = word(4) | (n >= 20 ? word(12) << 32 : 0)
        return permitted == 0 ? nil : permitted
    }

    static let CAP_SYS_PTRACE: UInt64 = 19
    static let CAP_SYS_ADMIN: UInt64 = 21

    /// Whether PageWatch holds `capability` in its effective set.
    static func selfHasCapability(_ capability: UInt64) -> Bool {
        let effective = ProcFS.statusField("CapEff", of: getpid()).flatMap { UInt64($0, radix: 16) } ?? 0
        return effective & (1 << capability) != 0
    }

    static func selfHas(noNewPrivs: Bool) -> Bool {
        (ProcFS.statusField("NoNewPrivs", of: getpid()) == "1") == noNewPrivs
    }
}
