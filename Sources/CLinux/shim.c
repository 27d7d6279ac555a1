#define _GNU_SOURCE
#include <pthread.h>
#include <string.h>
#include "CLinux.h"

int vireo_set_thread_name(pthread_t thread, const char *name) {
    char buf[16];
    strncpy(buf, name, sizeof(buf) - 1);
    buf[sizeof(buf) - 1] = 0;
    return pthread_setname_np(thread, buf);
}

#include <fcntl.h>
#include <unistd.h>
int vireo_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }
