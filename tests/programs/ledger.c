/* The ledger program of `softdirty record`'s test (crates/softdirty-cli/tests/record.rs):
 * it writes known pages in phases, each phase ended by a marker mapping (a one-page
 * PROT_READ mmap at MARK + k pages, MAP_FIXED_NOREPLACE), and writes its ledger to the
 * file argv[1]: one line per phase and space, "PHASE SPACE PAGE_ADDR..." for the pages it
 * stored to. The test checks that the trace's `write` lines between marker k-1 and marker
 * k are exactly those pages (within the regions below), in the right space.
 *
 * The phases cover the cases where a recorder can lose a write or invent one: stores
 * before an mprotect that takes write permission away, before and after an mremap move,
 * in a fork child, from four threads at once, and reads (not stores) after a dontneed.
 *
 *   cc -O1 -pthread -o ledger ledger.c && ./ledger LEDGER_FILE
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define P 4096UL
#define A ((char *)0x500000000000UL)  /* 64 pages, then moved to A2 and grown to 128 */
#define A2 ((char *)0x520000000000UL)
#define B ((char *)0x510000000000UL)  /* 64 pages, written by four threads */
#define MARK 0x5a0000000000UL

static FILE *ledger;
static int phase = 1;

static void marker(void) {
    /* the phase's end: a layout call the trace shows as a one-page read-only mmap */
    if (mmap((void *)(MARK + phase * P), P, PROT_READ,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0) == MAP_FAILED)
        exit(3);
    phase++;
}

static void store(const char *space, char *base, const int *pages, int n) {
    fprintf(ledger, "%d %s", phase, space);
    for (int i = 0; i < n; i++) {
        base[pages[i] * P + 17] = (char)(phase + i);
        fprintf(ledger, " %#lx", (unsigned long)(base + pages[i] * P));
    }
    fprintf(ledger, "\n");
    fflush(ledger);
}

static void *thread_store(void *arg) {
    long t = (long)arg;
    int pages[8];
    for (int i = 0; i < 8; i++)
        pages[i] = (int)t * 16 + i * 2; /* 0,2,..14 for thread 0; 16,18,.. for thread 1 */
    for (int r = 0; r < 1000; r++)
        for (int i = 0; i < 8; i++)
            B[pages[i] * P + r % 64] = (char)r;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2 || !(ledger = fopen(argv[1], "w")))
        return 2;
    if (mmap(A, 64 * P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
             -1, 0) == MAP_FAILED ||
        mmap(B, 64 * P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
             -1, 0) == MAP_FAILED)
        return 3;
    marker();
    /* phase 1: stores, then an mprotect takes write permission from half of them */
    static const int p1[] = {0, 1, 5, 40, 41, 63};
    store("main", A, p1, 6);
    mprotect(A + 32 * P, 32 * P, PROT_READ);
    marker();
    /* phase 2: stores before an mremap move and growth (of one VMA: the kernel refuses
     * a move of several userfaultfd-armed VMAs) */
    mprotect(A + 32 * P, 32 * P, PROT_READ | PROT_WRITE);
    static const int p2[] = {2, 3, 31};
    store("main", A, p2, 3);
    if (mremap(A, 64 * P, 128 * P, MREMAP_MAYMOVE | MREMAP_FIXED, A2) == MAP_FAILED)
        return 4;
    marker();
    /* phase 3: stores after the move, in the moved pages and the new tail */
    static const int p3[] = {0, 33, 64, 127};
    store("main", A2, p3, 4);
    marker();
    /* phase 4: a fork child stores to its copy, the parent to its own */
    pid_t c = fork();
    if (c == 0) {
        static const int pc[] = {7, 8, 9, 100};
        store("c1", A2, pc, 4);
        _exit(0);
    }
    int st;
    waitpid(c, &st, 0);
    static const int pp[] = {10, 11};
    store("main", A2, pp, 2);
    marker();
    /* phase 5: four threads store to B at once */
    pthread_t t[4];
    for (long i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, thread_store, (void *)i);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    fprintf(ledger, "%d main", phase);
    for (int th = 0; th < 4; th++)
        for (int i = 0; i < 8; i++)
            fprintf(ledger, " %#lx", (unsigned long)(B + (th * 16 + i * 2) * P));
    fprintf(ledger, "\n");
    marker();
    /* phase 6: dontneed, then only loads: no page of B is written */
    madvise(B, 64 * P, MADV_DONTNEED);
    volatile char sum = 0;
    for (int i = 0; i < 64; i++)
        sum += B[i * P];
    fprintf(ledger, "%d main\n", phase);
    fflush(ledger);
    marker();
    return sum == 0 ? 0 : 1;
}
