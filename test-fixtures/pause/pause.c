/*
 * pause: the sandbox ("infra") process of a CRI pod, for the tests.
 *
 * It holds the pod's namespaces open and does nothing else: it waits for
 * SIGINT or SIGTERM and then exits 0, and, when it is the pod's PID 1 (pods
 * with a shared PID namespace), reaps the zombies that get reparented to it.
 * The same contract as Kubernetes' pause (registry.k8s.io/pause), in a few
 * lines of our own, built static so the image needs no libc:
 *
 *   gcc -static -Os -s -o pause pause.c
 *
 * Signals are blocked except while sigsuspend() waits, so a SIGTERM that
 * arrives between the check and the wait is never lost.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_term(int sig)
{
	(void)sig;
	stop = 1;
}

static void on_chld(int sig)
{
	int saved = errno;
	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
	errno = saved;
}

int main(int argc, char **argv)
{
	struct sigaction sa;
	sigset_t block, wait_mask;

	if (argc > 1 && strcmp(argv[1], "-v") == 0) {
		static const char v[] = "pause (containerd-shim-rustrunc-v2 test fixture)\n";
		return write(1, v, sizeof(v) - 1) < 0;
	}
	if (getpid() != 1) {
		static const char w[] = "pause: warning: not running as PID 1\n";
		if (write(2, w, sizeof(w) - 1) < 0) {
			/* nowhere to complain to: carry on */
		}
	}

	sigemptyset(&block);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGCHLD);
	if (sigprocmask(SIG_BLOCK, &block, &wait_mask) != 0)
		return 1;
	sigdelset(&wait_mask, SIGINT);
	sigdelset(&wait_mask, SIGTERM);
	sigdelset(&wait_mask, SIGCHLD);

	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	sa.sa_handler = on_term;
	if (sigaction(SIGINT, &sa, NULL) != 0 || sigaction(SIGTERM, &sa, NULL) != 0)
		return 2;
	sa.sa_handler = on_chld;
	sa.sa_flags = SA_NOCLDSTOP | SA_RESTART;
	if (sigaction(SIGCHLD, &sa, NULL) != 0)
		return 3;

	while (!stop)
		sigsuspend(&wait_mask); /* returns after each handled signal */
	return 0;
}
