// libunwind's remote (ptrace) API; pkg-config libunwind-ptrace, Debian libunwind-dev.
#include <libunwind-ptrace.h>
