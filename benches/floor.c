/* The physical floor of a fork-and-wait lock tool (SPEC §7): open LOCK, flock it,
 * vfork + exec the command, wait, exit with its status. No record, no checks, no
 * release beyond exit. Built by benches/compare.rs with `gcc -O2 -static`.
 *
 *     floor LOCK COMMAND [ARG...]
 */
#include <fcntl.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) {
        fputs("usage: floor LOCK COMMAND [ARG...]\n", stderr);
        return 125;
    }
    int fd = open(argv[1], O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0 || flock(fd, LOCK_EX) < 0) {
        perror(argv[1]);
        return 125;
    }
    pid_t child = vfork();
    if (child == 0) {
        execvp(argv[2], argv + 2);
        _exit(127);
    }
    int status;
    if (child < 0 || waitpid(child, &status, 0) < 0) {
        perror("floor");
        return 125;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
