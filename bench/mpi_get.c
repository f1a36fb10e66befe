/* mpi_get.c — the MPI peer of bench_remote: one-sided MPI_Get of 4 KiB
 * under MPI_Win_lock / MPI_Win_unlock, rank 0 reading rank 1's window.
 *
 * Built only when MPI is installed (bench/CMakeLists.txt). bench_remote
 * starts it once with mpirun (2 ranks, loopback TCP only: see
 * ../shared/notes/machine.md) and drives it batch by batch through FIFOs,
 * so its batches interleave with the capdsm figures of the same run:
 *
 *   mpi_get --cmd0 FIFO --cmd1 FIFO --reply FIFO [--cpu0 N] [--cpu1 N]
 *
 * Each rank reads commands from its own FIFO ("N\n": one batch of N gets,
 * "q\n": quit). Rank 1 (the target) waits for a command in read() — asleep,
 * so it does not spin on a core between batches — then tells rank 0 it is
 * ready and stays in MPI_Recv (OpenMPI's progress engine, which serves the
 * passive-target gets) until rank 0 says the batch is over. Rank 0 times the N iterations of
 *   MPI_Win_lock(SHARED, 1); MPI_Get(4 KiB); MPI_Win_unlock(1)
 * and writes the nanoseconds as "NS\n" on the reply FIFO. Every get is
 * checked against the pattern rank 1 wrote into its window. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <mpi.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define GET_BYTES 4096
#define WIN_PAGES 16

static void die(const char *what)
{
	fprintf(stderr, "mpi_get: %s: %s\n", what, strerror(errno));
	MPI_Abort(MPI_COMM_WORLD, 1);
	exit(1);
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void pin(int cpu)
{
	cpu_set_t set;

	if (cpu < 0)
		return;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof set, &set) != 0)
		die("sched_setaffinity");
}

int main(int argc, char **argv)
{
	const char *cmd[2] = { NULL, NULL }, *reply = NULL;
	int cpu[2] = { -1, -1 };
	int rank, size;

	MPI_Init(&argc, &argv);
	for (int i = 1; i + 1 < argc; i += 2) {
		if (strcmp(argv[i], "--cmd0") == 0)
			cmd[0] = argv[i + 1];
		else if (strcmp(argv[i], "--cmd1") == 0)
			cmd[1] = argv[i + 1];
		else if (strcmp(argv[i], "--reply") == 0)
			reply = argv[i + 1];
		else if (strcmp(argv[i], "--cpu0") == 0)
			cpu[0] = atoi(argv[i + 1]);
		else if (strcmp(argv[i], "--cpu1") == 0)
			cpu[1] = atoi(argv[i + 1]);
	}
	MPI_Comm_rank(MPI_COMM_WORLD, &rank);
	MPI_Comm_size(MPI_COMM_WORLD, &size);
	if (size != 2 || !cmd[0] || !cmd[1] || !reply) {
		if (rank == 0)
			fprintf(stderr, "usage: mpirun -np 2 mpi_get --cmd0 FIFO "
			        "--cmd1 FIFO --reply FIFO [--cpu0 N] [--cpu1 N]\n");
		MPI_Finalize();
		return 2;
	}
	pin(cpu[rank]);

	uint8_t *base;
	MPI_Win win;
	MPI_Alloc_mem(GET_BYTES * WIN_PAGES, MPI_INFO_NULL, &base);
	for (int i = 0; i < GET_BYTES * WIN_PAGES; i++)
		base[i] = (uint8_t)(i / GET_BYTES + 7);
	/* MPI_Win_create, not MPI_Win_allocate: no shared-memory window
	 * (osc sm), the gets go through the network path. */
	MPI_Win_create(base, GET_BYTES * WIN_PAGES, 1, MPI_INFO_NULL,
	               MPI_COMM_WORLD, &win);

	FILE *in = fopen(cmd[rank], "r");
	FILE *out = rank == 0 ? fopen(reply, "w") : NULL;
	if (!in || (rank == 0 && !out))
		die("opening the FIFOs");
	static uint8_t buf[GET_BYTES];
	char line[64];
	int bad = 0;

	while (fgets(line, sizeof line, in)) {
		if (line[0] == 'q')
			break;
		long n = strtol(line, NULL, 10);
		if (n <= 0)
			continue;
		int flag = 1;
		if (rank == 1) {
			/* Awake and in MPI's progress engine before rank 0
			 * starts its clock; there until the batch is over. */
			MPI_Send(&flag, 1, MPI_INT, 0, 2, MPI_COMM_WORLD);
			MPI_Recv(&flag, 1, MPI_INT, 0, 1, MPI_COMM_WORLD,
			         MPI_STATUS_IGNORE);
			continue;
		}
		MPI_Recv(&flag, 1, MPI_INT, 1, 2, MPI_COMM_WORLD,
		         MPI_STATUS_IGNORE);
		uint64_t t0 = now_ns();
		for (long i = 0; i < n; i++) {
			int pg = (int)(i % WIN_PAGES);
			MPI_Win_lock(MPI_LOCK_SHARED, 1, 0, win);
			MPI_Get(buf, GET_BYTES, MPI_BYTE, 1,
			        (MPI_Aint)pg * GET_BYTES, GET_BYTES, MPI_BYTE, win);
			MPI_Win_unlock(1, win);
			if (buf[0] != (uint8_t)(pg + 7) ||
			    buf[GET_BYTES - 1] != (uint8_t)(pg + 7))
				bad++;
		}
		uint64_t ns = now_ns() - t0;
		MPI_Send(&flag, 1, MPI_INT, 1, 1, MPI_COMM_WORLD);
		fprintf(out, "%llu %d\n", (unsigned long long)ns, bad);
		fflush(out);
	}
	MPI_Win_free(&win);
	MPI_Free_mem(base);
	if (out)
		fclose(out);
	fclose(in);
	MPI_Finalize();
	return 0;
}
