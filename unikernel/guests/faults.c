/*
 * faults — argv[1] picks a way to die; each must end the program with the
 * signal Linux sends (exit status 128 + signo). Privileged instructions in
 * ring 3 are #GP, so SIGSEGV.
 */
#include "guest.h"

int main(int argc, char **argv)
{
    if (argc < 2)
        ABORT("usage: faults null|ud2|div0|hlt|out|cli|cr3|int3");
    const char *w = argv[1];
    volatile int zero = 0;
    if (!strcmp(w, "null"))
        printf("%d\n", *(volatile int *)(long)zero);
    else if (!strcmp(w, "ud2"))
        __asm__ volatile("ud2");
    else if (!strcmp(w, "div0")) {
        /* In assembly: gcc turns a C division by a known 1 into compares. */
        unsigned q = 1;
        __asm__ volatile("xorl %%edx, %%edx; divl %1" : "+a"(q) : "r"(zero) : "rdx");
        printf("%u\n", q);
    }
    else if (!strcmp(w, "hlt"))
        __asm__ volatile("hlt");
    else if (!strcmp(w, "out"))
        __asm__ volatile("outb %%al, $0x80" ::"a"(0));
    else if (!strcmp(w, "cli"))
        __asm__ volatile("cli");
    else if (!strcmp(w, "cr3")) {
        unsigned long v;
        __asm__ volatile("mov %%cr3, %0" : "=r"(v));
        printf("%lx\n", v);
    } else if (!strcmp(w, "int3"))
        __asm__ volatile("int3");
    else
        ABORT("unknown fault %s", w);
    ABORT("survived %s", w);
}
