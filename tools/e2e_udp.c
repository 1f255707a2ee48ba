/* The e2e guest's steady UDP stream: one datagram every INTERVAL_MS to DST:PORT, numbered.
 * Static, so the busybox initrd of a Xen guest can run it: e2e_udp DST PORT INTERVAL_MS */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s DST PORT INTERVAL_MS\n", argv[0]);
        return 2;
    }
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &dst.sin_addr) != 1) {
        fprintf(stderr, "bad address %s\n", argv[1]);
        return 2;
    }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) {
        perror("socket");
        return 1;
    }
    long interval_ns = atol(argv[3]) * 1000000L;
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    for (unsigned long seq = 0;; seq++) {
        char msg[32];
        int len = snprintf(msg, sizeof msg, "%lu", seq);
        sendto(fd, msg, len, 0, (struct sockaddr *)&dst, sizeof dst); /* ENOBUFS etc.: go on */
        next.tv_nsec += interval_ns;
        while (next.tv_nsec >= 1000000000L) {
            next.tv_nsec -= 1000000000L;
            next.tv_sec++;
        }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
    }
}
