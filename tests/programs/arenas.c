/* A multi-threaded glibc-malloc program for `softdirty record` (scripts/record-corpus.sh,
 * crates/softdirty-cli/tests/record.rs): each thread gets a malloc arena, a 64 MiB
 * MAP_NORESERVE heap that glibc grows with mprotect; the main thread grows the brk heap;
 * a fork child writes its copy of the heap. Deterministic in what it allocates.
 *
 *   cc -O2 -pthread -o arenas arenas.c && ./arenas [THREADS] [ROUNDS]
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int rounds = 200;

static void *worker(void *arg) {
    unsigned long seed = (unsigned long)arg * 2654435761u + 1;
    void *keep[64] = {0};
    for (int r = 0; r < rounds; r++) {
        for (int i = 0; i < 64; i++) {
            seed = seed * 6364136223846793005ul + 1442695040888963407ul;
            size_t n = 64 + (seed >> 33) % 32768;
            free(keep[i]);
            keep[i] = malloc(n);
            memset(keep[i], r, n);
        }
    }
    for (int i = 0; i < 64; i++)
        free(keep[i]);
    return NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 4;
    if (argc > 2)
        rounds = atoi(argv[2]);
    if (threads < 1 || threads > 64 || rounds < 1)
        return 2;
    /* the main thread's brk heap */
    char *heap = malloc(1 << 20);
    memset(heap, 1, 1 << 20);
    pthread_t t[64];
    for (long i = 0; i < threads; i++)
        pthread_create(&t[i], NULL, worker, (void *)(i + 1));
    for (int i = 0; i < threads; i++)
        pthread_join(t[i], NULL);
    pid_t c = fork();
    if (c == 0) {
        memset(heap, 2, 1 << 19); /* the child's copy of half the heap */
        _exit(0);
    }
    int st = 0;
    waitpid(c, &st, 0);
    free(heap);
    printf("arenas: %d threads x %d rounds\n", threads, rounds);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 1;
}
