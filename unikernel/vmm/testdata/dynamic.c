/* Linked against the host's shared libc: has PT_INTERP, must be refused. */
#include <stdio.h>
int main(void) { puts("dynamic"); return 0; }
