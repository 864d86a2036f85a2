#include "guest.h"
/*
 * Enters kiln_syscall_entry (its address in hex is argv[1]) from ring 3
 * exactly as a PVM host delivers `syscall`: still in ring 3, RCX = return
 * RIP, R11 = RFLAGS, RSP = ours. A plain `jmp` does that on any host, so the
 * ring-3 branch of the entry runs here even where `syscall` itself goes to
 * ring 0. r3call() records every register at the return label, and the 128
 * bytes below RSP, in r3[]; main checks them.
 */

/* r3[] slots (numbers, so the asm below can use them as offsets). */
#define R_ENTRY 0   /* in: the entry address */
#define R_NR 1      /* in: RAX */
#define R_A0 2      /* in: RDI */
#define R_A1 3      /* in: RSI */
#define R_A2 4      /* in: RDX */
#define R_RSP_IN 5  /* RSP at the jump */
#define R_RFL_IN 6  /* R11 at the jump */
#define R_RAX 7     /* out: every register at the return label */
#define R_RCX 8
#define R_R11 9
#define R_RSP 10
#define R_RBX 11
#define R_RBP 12
#define R_R12 13
#define R_R13 14
#define R_R14 15
#define R_R15 16
#define R_RDI 17
#define R_RSI 18
#define R_RDX 19
#define R_R8 20
#define R_R9 21
#define R_R10 22
#define R_RFL 23    /* out: RFLAGS at the return label */
#define R_RET 24    /* the return label's address */
#define R_RED 25    /* out: 16 quadwords, -8(%rsp) first, down to -128(%rsp) */
#define R_N (R_RED + 16)

#define STR_(x) #x
#define STR(x) STR_(x)
#define SLOT(n) "r3+8*" STR(n) "(%rip)"

/* Values the entry must leave alone. */
#define V_RBX 0x1111111111111b0b
#define V_RBP 0x22222222222220b0
#define V_R12 0x3333333333333012
#define V_R13 0x4444444444444013
#define V_R14 0x5555555555555014
#define V_R15 0x6666666666666015
#define V_R8 0x7777777777777008
#define V_R9 0x8888888888888009
#define V_R10 0x999999999999900a
#define V_RED 0xa5ed20e000000000 /* red zone: V_RED+0 at -128(%rsp) .. V_RED+15 at -8(%rsp) */

uint64_t r3[R_N];

void r3call(void);
__asm__(".text\n"
        ".globl r3call\n"
        ".type r3call, @function\n"
        "r3call:\n"
        "  pushq %rbx\n"
        "  pushq %rbp\n"
        "  pushq %r12\n"
        "  pushq %r13\n"
        "  pushq %r14\n"
        "  pushq %r15\n"
        /* R11 = RFLAGS with CF set: the entry must hand it back. pushfq
         * writes below RSP, so it comes before the red zone is filled. */
        "  stc\n"
        "  pushfq\n"
        "  popq %r11\n"
        "  movq %r11, " SLOT(R_RFL_IN) "\n"
        "  movabsq $" STR(V_RED) ", %rax\n"
        "  movq $-128, %rdx\n"
        "1:\n"
        "  movq %rax, (%rsp,%rdx)\n"
        "  addq $1, %rax\n"
        "  addq $8, %rdx\n"
        "  jnz 1b\n"
        "  movabsq $" STR(V_RBX) ", %rbx\n"
        "  movabsq $" STR(V_RBP) ", %rbp\n"
        "  movabsq $" STR(V_R12) ", %r12\n"
        "  movabsq $" STR(V_R13) ", %r13\n"
        "  movabsq $" STR(V_R14) ", %r14\n"
        "  movabsq $" STR(V_R15) ", %r15\n"
        "  movabsq $" STR(V_R8) ", %r8\n"
        "  movabsq $" STR(V_R9) ", %r9\n"
        "  movabsq $" STR(V_R10) ", %r10\n"
        "  movq " SLOT(R_A0) ", %rdi\n"
        "  movq " SLOT(R_A1) ", %rsi\n"
        "  movq " SLOT(R_A2) ", %rdx\n"
        "  movq " SLOT(R_NR) ", %rax\n"
        "  leaq 2f(%rip), %rcx\n"
        "  movq %rcx, " SLOT(R_RET) "\n"
        "  movq %rsp, " SLOT(R_RSP_IN) "\n"
        "  jmp *" SLOT(R_ENTRY) "\n"
        "2:\n"
        /* Nothing here writes below RSP or changes RFLAGS until both are
         * recorded. */
        "  movq %rax, " SLOT(R_RAX) "\n"
        "  movq %rcx, " SLOT(R_RCX) "\n"
        "  movq %r11, " SLOT(R_R11) "\n"
        "  movq %rsp, " SLOT(R_RSP) "\n"
        "  movq %rbx, " SLOT(R_RBX) "\n"
        "  movq %rbp, " SLOT(R_RBP) "\n"
        "  movq %r12, " SLOT(R_R12) "\n"
        "  movq %r13, " SLOT(R_R13) "\n"
        "  movq %r14, " SLOT(R_R14) "\n"
        "  movq %r15, " SLOT(R_R15) "\n"
        "  movq %rdi, " SLOT(R_RDI) "\n"
        "  movq %rsi, " SLOT(R_RSI) "\n"
        "  movq %rdx, " SLOT(R_RDX) "\n"
        "  movq %r8, " SLOT(R_R8) "\n"
        "  movq %r9, " SLOT(R_R9) "\n"
        "  movq %r10, " SLOT(R_R10) "\n"
        /* Our own RSP back even if the entry lost it, to report that. */
        "  movq " SLOT(R_RSP_IN) ", %rsp\n"
        "  .irp i, 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16\n"
        "  movq -8*\\i(%rsp), %rax\n"
        "  movq %rax, r3+8*(" STR(R_RED) "-1+\\i)(%rip)\n"
        "  .endr\n"
        "  pushfq\n"
        "  popq " SLOT(R_RFL) "\n"
        "  popq %r15\n"
        "  popq %r14\n"
        "  popq %r13\n"
        "  popq %r12\n"
        "  popq %rbp\n"
        "  popq %rbx\n"
        "  ret\n"
        ".size r3call, .-r3call\n");

static const char msg[] = "r3 entry ok\n";

static int fail(const char *what, const char *why)
{
    puts1("ABORT: ");
    puts1(what);
    puts1(": ");
    puts1(why);
    puts1("\n");
    return 1;
}

static int parse_hex(const char *s, uint64_t *v)
{
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
        s += 2;
    if (!*s)
        return -1;
    uint64_t n = 0;
    for (; *s; s++) {
        unsigned d;
        if (*s >= '0' && *s <= '9')
            d = (unsigned)(*s - '0');
        else if (*s >= 'a' && *s <= 'f')
            d = (unsigned)(*s - 'a' + 10);
        else if (*s >= 'A' && *s <= 'F')
            d = (unsigned)(*s - 'A' + 10);
        else
            return -1;
        if (n >> 60)
            return -1;
        n = n << 4 | d;
    }
    *v = n;
    return 0;
}

/* One entry: nr with (rdi, rsi, rdx), expecting want in RAX. NULL if every
 * check holds, else what broke. */
static const char *check(uint64_t nr, uint64_t a0, uint64_t a1, uint64_t a2, int64_t want)
{
    r3[R_NR] = nr;
    r3[R_A0] = a0;
    r3[R_A1] = a1;
    r3[R_A2] = a2;
    r3call();
    if ((int64_t)r3[R_RAX] != want)
        return "RAX (the result) is wrong";
    if (r3[R_RSP] != r3[R_RSP_IN])
        return "RSP changed";
    if (r3[R_RCX] != r3[R_RET])
        return "RCX is not the return RIP";
    if (r3[R_R11] != r3[R_RFL_IN])
        return "R11 is not the RFLAGS passed in";
    /* CF PF AF ZF SF DF OF: what popfq must have restored. */
    if ((r3[R_RFL] & 0xcd5) != (r3[R_RFL_IN] & 0xcd5))
        return "RFLAGS at the return label differ from R11";
    if (r3[R_RBX] != V_RBX || r3[R_RBP] != V_RBP)
        return "RBX or RBP changed";
    if (r3[R_R12] != V_R12 || r3[R_R13] != V_R13 || r3[R_R14] != V_R14 || r3[R_R15] != V_R15)
        return "R12-R15 changed";
    if (r3[R_RDI] != a0 || r3[R_RSI] != a1 || r3[R_RDX] != a2)
        return "an argument register changed";
    if (r3[R_R8] != V_R8 || r3[R_R9] != V_R9 || r3[R_R10] != V_R10)
        return "R8-R10 changed";
    for (int i = 0; i < 16; i++)
        if (r3[R_RED + i] != V_RED + 15 - (uint64_t)i)
            return "the red zone below RSP was written";
    return 0;
}

int main(int argc, char **argv)
{
    uint64_t entry;
    if (argc < 2 || parse_hex(argv[1], &entry) != 0 || entry == 0)
        return fail("usage", "r3entry 0xADDRESS_OF_kiln_syscall_entry");
    r3[R_ENTRY] = entry;
    const char *why = check(1, 1, (uint64_t)(uintptr_t)msg, sizeof msg - 1, (int64_t)(sizeof msg - 1));
    if (why)
        return fail("write(1, msg, len)", why);
    why = check(999, 0, 0, 0, -38);
    if (why)
        return fail("syscall 999 (want -ENOSYS)", why);
    puts1("SUCCESS\n");
    return 0;
}
