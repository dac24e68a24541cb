#define _GNU_SOURCE
#include "CSpawn.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

struct spawn_request {
    const char *path;
    char *const *argv;
    char *const *envp;
    int output_fd;
    pid_t pid;
    int error;
    int done;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t request_ready = PTHREAD_COND_INITIALIZER;
static pthread_cond_t request_done = PTHREAD_COND_INITIALIZER;
static struct spawn_request *pending = NULL;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void close_from(int lowest) {
#ifdef SYS_close_range
    if (syscall(SYS_close_range, lowest, ~0U, 0) == 0) return;
#endif
    long max = sysconf(_SC_OPEN_MAX);
    if (max < 0 || max > 65536) max = 65536;
    for (int fd = lowest; fd < max; fd++) close(fd);
}

static void do_spawn(struct spawn_request *r) {
    int report[2];
    if (pipe2(report, O_CLOEXEC) != 0) { r->pid = -1; r->error = errno; return; }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) { r->pid = -1; r->error = errno; close(report[0]); close(report[1]); return; }
    if (pid == 0) {
        // Child: only async-signal-safe calls from here to exec.
        int err;
        setpgid(0, 0);
#ifdef __linux__
        prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif
        if (getppid() != parent) _exit(127);  // the parent died before prctl took effect
        sigset_t all;
        sigemptyset(&all);
        sigprocmask(SIG_SETMASK, &all, NULL);
        for (int s = 1; s < 32; s++) {
            if (s != SIGKILL && s != SIGSTOP) signal(s, SIG_DFL);
        }
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull < 0 || dup2(devnull, 0) < 0 || dup2(r->output_fd, 1) < 0 || dup2(r->output_fd, 2) < 0) {
            err = errno;
            write(report[1], &err, sizeof err);
            _exit(127);
        }
        int keep = report[1];
        if (keep != 3) { dup2(keep, 3); keep = 3; fcntl(3, F_SETFD, FD_CLOEXEC); }
        close_from(4);
        execve(r->path, r->argv, r->envp);
        err = errno;
        write(keep, &err, sizeof err);
        _exit(127);
    }
    close(report[1]);
    int child_error = 0;
    ssize_t n;
    do { n = read(report[0], &child_error, sizeof child_error); } while (n < 0 && errno == EINTR);
    close(report[0]);
    if (n == sizeof child_error) {
        waitpid(pid, NULL, 0);
        r->pid = -1;
        r->error = child_error;
        return;
    }
    r->pid = pid;
    r->error = 0;
}

static void *spawner_main(void *unused) {
    (void)unused;
    pthread_mutex_lock(&lock);
    for (;;) {
        while (pending == NULL) pthread_cond_wait(&request_ready, &lock);
        struct spawn_request *r = pending;
        pending = NULL;
        pthread_mutex_unlock(&lock);
        do_spawn(r);
        pthread_mutex_lock(&lock);
        r->done = 1;
        pthread_cond_broadcast(&request_done);
    }
    return NULL;
}

static void start_spawner(void) {
    pthread_t thread;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_create(&thread, &attr, spawner_main, NULL);
    pthread_attr_destroy(&attr);
}

pid_t corral_spawn(const char *path, char *const argv[], char *const envp[], int output_fd, int *error_out) {
    pthread_once(&once, start_spawner);
    struct spawn_request r = {path, argv, envp, output_fd, -1, 0, 0};
    pthread_mutex_lock(&lock);
    while (pending != NULL) pthread_cond_wait(&request_done, &lock);
    pending = &r;
    pthread_cond_signal(&request_ready);
    while (!r.done) pthread_cond_wait(&request_done, &lock);
    pthread_mutex_unlock(&lock);
    if (error_out) *error_out = r.error;
    return r.pid;
}

int corral_wait(pid_t pid) {
    int status = 0;
    pid_t got;
    do { got = waitpid(pid, &status, 0); } while (got < 0 && errno == EINTR);
    return got < 0 ? -1 : status;
}

int corral_kill_group(pid_t pgid, int signal) { return kill(-pgid, signal) == 0 ? 0 : errno; }
int corral_exited(int status) { return WIFEXITED(status); }
int corral_exit_code(int status) { return WEXITSTATUS(status); }
int corral_signaled(int status) { return WIFSIGNALED(status); }
int corral_term_signal(int status) { return WTERMSIG(status); }

int corral_pipe_cloexec(int fds[2]) {
    if (pipe2(fds, O_CLOEXEC) != 0) return errno;
#ifdef F_SETPIPE_SZ
    // Room for a burst of log lines while the reader batches its reads (best effort: the
    // default 64 KiB stays if the system limit is lower).
    (void)fcntl(fds[0], F_SETPIPE_SZ, 1 << 20);
#endif
    return 0;
}
