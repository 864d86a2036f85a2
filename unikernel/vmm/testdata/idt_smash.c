#include "guest.h"
/* The IDT is a user page (one protection domain): wreck it, then fault.
 * The only possible end is a triple fault, which must stay in this VM. */
int main(int argc, char **argv)
{
    volatile uint64_t *idt = (volatile uint64_t *)(uintptr_t)KILN_IDT_GPA;
    for (int i = 0; i < 512; i++)
        idt[i] = 0;
    __asm__ volatile("ud2");
    return 1;
}
