/* A 32-bit image: the loader must refuse it. */
void _start(void) { for (;;) ; }
