/* hello — the smallest guest: one line through musl's stdio (writev). */
#include <stdio.h>

int main(void)
{
    printf("hello from kiln\n");
    return 0;
}
