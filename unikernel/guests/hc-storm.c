/*
 * hc-storm — a serve function that rings the VMM's hypercall doorbell
 * itself, from ring 3 (it shares the guest kernel's protection domain, so
 * it can: unikernel/abi/kiln_abi.h). Each request's body picks the storm:
 *   "io N"   N KILN_HC_IO calls that flush nothing and ask for nothing
 *            (each one a VM exit the VMM serves), then answers
 *            "hypercalls=N";
 *   "io"     the same without end: only the call's deadline stops it;
 *   "bad"    a doorbell no hypercall owns (KILN_HC_MAX + 5);
 *   "range"  KILN_HC_IO asking to flush 4 KiB from past the end of RAM;
 *   anything else answers "ok".
 * The argument struct is a static variable: the function's image is
 * identity-mapped, so its address is its guest-physical address.
 */
#include <stdint.h>
#include "kiln.h"
#include "../abi/kiln_abi.h"

static struct kiln_hc_io io __attribute__((aligned(64)));
static char out[64];

static void doorbell(unsigned nr, uint64_t gpa)
{
    volatile uint64_t *bell = (volatile uint64_t *)(uintptr_t)(KILN_HC_MMIO_BASE + 8ULL * nr);
    __asm__ volatile("movq %1, %0" : "=m"(*bell) : "r"(gpa) : "memory");
}

static void nop_io(void)
{
    memset(&io, 0, sizeof io);
    doorbell(KILN_HC_IO, (uint64_t)(uintptr_t)&io);
}

static int handle(const struct kiln_request *req, struct kiln_response *resp, void *arg)
{
    (void)arg;
    char body[32] = {0};
    memcpy(body, req->body, req->body_len < 31 ? req->body_len : 31);
    if (strcmp(body, "io") == 0)
        for (;;)
            nop_io();
    if (strncmp(body, "io ", 3) == 0) {
        unsigned long n = strtoul(body + 3, NULL, 10);
        for (unsigned long i = 0; i < n; i++)
            nop_io();
        snprintf(out, sizeof out, "hypercalls=%lu", n);
        kiln_respond_text(resp, 200, out);
        return 0;
    }
    if (strcmp(body, "bad") == 0) {
        doorbell(KILN_HC_MAX + 5, (uint64_t)(uintptr_t)&io);
        kiln_respond_text(resp, 500, "survived a bad doorbell");
        return 0;
    }
    if (strcmp(body, "range") == 0) {
        memset(&io, 0, sizeof io);
        io.out_gpa = KILN_MEM_MAX - 4096; /* past any guest's RAM */
        io.out_len = 4096;
        doorbell(KILN_HC_IO, (uint64_t)(uintptr_t)&io);
        kiln_respond_text(resp, 500, "survived a flush from past RAM");
        return 0;
    }
    kiln_respond_text(resp, 200, "ok");
    return 0;
}

int main(void)
{
    return kiln_serve(handle, NULL);
}
