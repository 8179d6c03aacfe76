/// PageWatch's version: `pagewatch --version`, and the `start` record's
/// `pagewatch_version`. The one place it is set.
public enum PageWatchVersion {
    public static let current = "0.1.0"
}
