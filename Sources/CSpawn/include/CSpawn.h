#pragma once
#include <sys/types.h>

/// Starts `path` with `argv` and `envp` (NULL-terminated) as a child that
/// - leads its own process group (so a signal to -pid reaches everything it starts),
/// - gets SIGKILL when Corral dies, even by `kill -9` (PR_SET_PDEATHSIG on Linux),
/// - reads stdin from /dev/null and writes stdout and stderr to `output_fd`,
/// - inherits no other descriptor and has default signal dispositions and an empty mask.
/// The fork happens on one dedicated thread that never exits, because Linux delivers the
/// parent-death signal when the *thread* that forked exits.
/// Returns the pid, or -1 with `*error_out` set to the errno of the failed step (exec included).
pid_t corral_spawn(const char *path, char *const argv[], char *const envp[], int output_fd, int *error_out);

/// Blocks until `pid` exits; returns the raw wait status, or -1.
int corral_wait(pid_t pid);

/// Signals a whole process group; returns 0 or errno.
int corral_kill_group(pid_t pgid, int signal);

/// Helpers to decode a wait status in Swift.
int corral_exited(int status);
int corral_exit_code(int status);
int corral_signaled(int status);
int corral_term_signal(int status);

/// pipe2(fds, O_CLOEXEC); returns 0 or errno.
int corral_pipe_cloexec(int fds[2]);
