/*
 * guest.h — what every test guest shares: the SUCCESS / ABORT convention.
 * EXPECT names the failed condition and errno, so a failure in a VM says
 * what broke without a debugger.
 */
#ifndef KILN_GUEST_H
#define KILN_GUEST_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ABORT(...)                                                             \
    do {                                                                       \
        printf("ABORT: ");                                                     \
        printf(__VA_ARGS__);                                                   \
        printf("\n");                                                          \
        exit(1);                                                               \
    } while (0)

#define EXPECT(cond)                                                           \
    do {                                                                       \
        if (!(cond))                                                           \
            ABORT("%s:%d: %s (errno %d %s)", __FILE__, __LINE__, #cond, errno, \
                  strerror(errno));                                            \
    } while (0)

#endif
