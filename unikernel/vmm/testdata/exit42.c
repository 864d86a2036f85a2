#include "guest.h"
int main(int argc, char **argv) { return 42; }
