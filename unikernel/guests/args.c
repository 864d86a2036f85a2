/* args — argv and the environment arrive as Linux's execve leaves them. */
#include "guest.h"

int main(int argc, char **argv)
{
    printf("argc=%d\n", argc);
    for (int i = 0; i < argc; i++)
        printf("argv[%d]=%s\n", i, argv[i]);
    const char *v = getenv("KILN_ARG_TEST");
    printf("KILN_ARG_TEST=%s\n", v ? v : "(unset)");
    printf("SUCCESS\n");
    return 0;
}
