/*
 * tiersim reference workload: replays an access trace over anonymous memory.
 *
 * The host generates, from the same workload description tiersim runs, the
 * exact sequence of page accesses (tiersim's own access generator) and the
 * exact bytes every written page holds (tiersim's content models), and puts
 * both on a raw disk image:
 *
 *   block 0   header (struct header below, little endian)
 *   trace     one uint32 per access: page index, bit 31 set when the access
 *             stores the next page of the content stream into that page
 *             (a first touch or a write), clear for a read
 *   stream    the stored pages, 4096 bytes each, in the order they are used
 *
 * So the kernel swaps, compresses, demotes and promotes the very bytes that
 * tiersim compresses, in the very order tiersim touches them.
 *
 * The disk is read with O_DIRECT in small chunks: the page cache would
 * otherwise hold a copy of the corpus and compete with the workload for the
 * memory under test. The footprint is one anonymous mapping without
 * transparent huge pages (tiersim models 4 KiB pages). Everything else the
 * program owns (text, data, stack, the two bounce buffers) is locked before
 * the footprint is mapped, so that only footprint pages are ever reclaimed
 * and counted; what the locked pages cost the cgroup is printed as
 * baseline_bytes, for the translation to take off tiersim's memory.max.
 *
 * The clock is read at the start of every PROGRESS_MARKS-th part of the
 * trace (a multiple of TRACE_CHUNK accesses) and the times are reported as
 * progress_ns: under TCG a first-touch store costs far more than a read, and
 * tiersim paces its run by where the guest's time actually went. The
 * program's own CPU time is read at the same points (progress_cpu_ns) and in
 * all (cpu_ns): the wall clock also counts the time kswapd and other kernel
 * threads took the one vCPU from it, which tiersim charges itself.
 *
 * When the trace is done the program reports on stdout, writes "done" to
 * file descriptor 3 (the init script waits on it to read the counters while
 * the memory is still mapped, as tiersim reports at the end of its run) and
 * sleeps until it is killed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
#define MAGIC "TSREFv1"
#define STORE_BIT 0x80000000u
#define TRACE_CHUNK 4096u /* entries, 16 KiB */
#define STREAM_CHUNK 16u  /* pages, 64 KiB */
#define PROGRESS_MARKS 500u /* clock readings kept (a page of BSS per clock) */

static uint64_t marks[PROGRESS_MARKS];
static uint64_t cpu_marks[PROGRESS_MARKS];

struct header {
	char magic[8];
	uint32_t version;
	uint32_t page_size;
	uint64_t npages;
	uint64_t naccesses;
	uint64_t trace_offset;
	uint64_t stream_offset;
	uint64_t nstream;
};

static void fail(const char *what)
{
	printf("error %s: %s\n", what, strerror(errno));
	fflush(stdout);
	exit(1);
}

static void read_at(int fd, void *buf, size_t len, uint64_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pread(fd, (char *)buf + done, len - done, (off_t)(off + done));

		if (n < 0) {
			if (errno == EINTR)
				continue;
			fail("pread");
		}
		if (n == 0) {
			errno = EIO;
			fail("short read");
		}
		done += (size_t)n;
	}
}

static uint64_t clock_ns(clockid_t clock)
{
	struct timespec ts;

	clock_gettime(clock, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t now_ns(void)
{
	return clock_ns(CLOCK_MONOTONIC);
}

/* The task's runtime (sum_exec_runtime): its own CPU time, faults and direct reclaim included. */
static uint64_t cpu_now_ns(void)
{
	return clock_ns(CLOCK_THREAD_CPUTIME_ID);
}

int main(int argc, char **argv)
{
	struct header h;
	void *hdr, *tbuf, *sbuf;
	uint32_t *trace;
	uint8_t *stream, *mem;
	uint64_t i, stores = 0, reads = 0, sum = 0, spos = 0, sfill = 0, snext = 0;
	uint64_t t0, t1, c0, c1, every, nmarks = 0;
	int fd;

	if (argc < 2) {
		fprintf(stderr, "usage: %s DEVICE [CGROUP-MEMORY-CURRENT]\n", argv[0]);
		return 2;
	}
	fd = open(argv[1], O_RDONLY | O_DIRECT);
	if (fd < 0)
		fail("open");
	if (posix_memalign(&tbuf, PAGE, TRACE_CHUNK * 4) ||
	    posix_memalign(&sbuf, PAGE, STREAM_CHUNK * PAGE))
		fail("posix_memalign");
	trace = tbuf;
	stream = sbuf;
	hdr = sbuf;
	read_at(fd, hdr, PAGE, 0);
	memcpy(&h, hdr, sizeof(h));
	if (memcmp(h.magic, MAGIC, 8) != 0 || h.version != 1 || h.page_size != PAGE) {
		errno = EINVAL;
		fail("bad header");
	}
	printf("npages %" PRIu64 "\naccesses_planned %" PRIu64 "\n", h.npages, h.naccesses);
	fflush(stdout);
	memset(tbuf, 0, TRACE_CHUNK * 4);
	if (mlockall(MCL_CURRENT) != 0)
		fail("mlockall");
	if (argc > 2) {
		FILE *f = fopen(argv[2], "r");
		unsigned long long cur = 0;

		if (f && fscanf(f, "%llu", &cur) == 1)
			printf("baseline_bytes %llu\n", cur);
		if (f)
			fclose(f);
		fflush(stdout);
	}
	mem = mmap(NULL, h.npages * PAGE, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (mem == MAP_FAILED)
		fail("mmap");
	madvise(mem, h.npages * PAGE, MADV_NOHUGEPAGE);

	/* Accesses between clock readings: whole trace chunks, at most PROGRESS_MARKS readings. */
	every = TRACE_CHUNK;
	while (h.naccesses / every >= PROGRESS_MARKS)
		every *= 2;
	t0 = now_ns();
	c0 = cpu_now_ns();
	for (i = 0; i < h.naccesses; i++) {
		uint32_t e, page;

		if (i % every == 0 && nmarks < PROGRESS_MARKS) {
			cpu_marks[nmarks] = cpu_now_ns() - c0;
			marks[nmarks++] = now_ns() - t0;
		}
		if (i % TRACE_CHUNK == 0)
			read_at(fd, trace, TRACE_CHUNK * 4, h.trace_offset + i * 4);
		e = trace[i % TRACE_CHUNK];
		page = e & ~STORE_BIT;
		if (page >= h.npages) {
			errno = ERANGE;
			fail("trace");
		}
		if (e & STORE_BIT) {
			if (spos == sfill) {
				uint64_t n = h.nstream - snext;

				if (n == 0) {
					errno = ERANGE;
					fail("stream exhausted");
				}
				if (n > STREAM_CHUNK)
					n = STREAM_CHUNK;
				read_at(fd, stream, n * PAGE, h.stream_offset + snext * PAGE);
				snext += n;
				spos = 0;
				sfill = n;
			}
			memcpy(mem + (uint64_t)page * PAGE, stream + spos * PAGE, PAGE);
			spos++;
			stores++;
		} else {
			sum += *(volatile uint64_t *)(mem + (uint64_t)page * PAGE + (page % 64) * 64);
			reads++;
		}
	}
	t1 = now_ns();
	c1 = cpu_now_ns();

	printf("elapsed_ns %" PRIu64 "\naccesses %" PRIu64 "\nstores %" PRIu64 "\nreads %" PRIu64
	       "\nchecksum %" PRIu64 "\n",
	       t1 - t0, i, stores, reads, sum);
	printf("cpu_ns %" PRIu64 "\n", c1 - c0);
	printf("progress_every %" PRIu64 "\nprogress_ns ", every);
	for (i = 0; i < nmarks; i++)
		printf(i ? ",%" PRIu64 : "%" PRIu64, marks[i]);
	printf("\nprogress_cpu_ns ");
	for (i = 0; i < nmarks; i++)
		printf(i ? ",%" PRIu64 : "%" PRIu64, cpu_marks[i]);
	printf("\n");
	fflush(stdout);
	if (write(3, "done\n", 5) < 0)
		perror("notify");
	close(3);
	for (;;)
		pause();
}
