/*
 * no-read — a serve function that never reads its input: it says so on
 * stderr and sleeps forever. Requests pile up in its stdin pipe (a body
 * larger than the pipe blocks the agent's writer); only the call's
 * deadline ends it, and the agent must free the instance, its memory and
 * that writer when it does.
 */
#include <stdio.h>
#include <unistd.h>

int main(void)
{
    fprintf(stderr, "no-read: I will never read fd 0\n");
    for (;;)
        sleep(1);
}
