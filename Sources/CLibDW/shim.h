// elfutils' libdw, for DWARF line tables; pkg-config libdw, Debian libdw-dev.
#include <elfutils/libdw.h>
