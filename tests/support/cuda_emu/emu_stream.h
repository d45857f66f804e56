/* SPDX-License-Identifier: MIT */
/*
 * What the CUDA emulator's streams show to its cuBLAS (a separate shared
 * library, which cannot call into the test program): a cudaStream_t of
 * the emulator points at this.
 */
#ifndef LLMOS_EMU_STREAM_H
#define LLMOS_EMU_STREAM_H

#include <stdint.h>

#define LLMOS_EMU_STREAM_MAGIC 0x7374726dU /* "strm" */

/**
 * struct llmos_emu_stream - a stream, as a library that queues work sees it
 * @magic: LLMOS_EMU_STREAM_MAGIC while the stream exists
 * @submit: runs run(arg) in the stream's order: at once, or, while a graph
 *	is captured on the stream, each time that graph is launched. The
 *	stream owns @arg from then on and calls release(arg) when no run
 *	can come any more. Returns 0, or a cudaError_t (the work dropped
 *	then, @arg released): 901 (cudaErrorStreamCaptureInvalidated) when
 *	the capture on the stream has been invalidated.
 */
struct llmos_emu_stream {
	uint32_t magic;
	int (*submit)(struct llmos_emu_stream *s, void (*run)(void *arg), void *arg,
		      void (*release)(void *arg));
};

#endif /* LLMOS_EMU_STREAM_H */
