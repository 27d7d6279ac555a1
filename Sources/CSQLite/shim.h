// The host daemon's C dependencies: the system libsqlite3 (Debian's libsqlite3-dev) and one
// glibc 2.34+ GNU extension that Swift's Glibc module does not export.
#include <sqlite3.h>
#include <spawn.h>

int posix_spawn_file_actions_addclosefrom_np(posix_spawn_file_actions_t *actions, int from);
