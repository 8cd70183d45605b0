/*
 * model.h - the public header of model/: what code outside this folder
 * includes.  Its sections, each a header of this folder with the contracts of
 * its part:
 *
 *   gguf.h       GGUF v2/v3 files: validated reading (mapped, split sets),
 *                streamed writing, gguf-split
 *   hparams.h    hyper-parameters of the supported architectures
 *   tokenizer.h  byte-level BPE tokenizer (GGUF metadata or tokenizer.json)
 *   forward.h    the forward pass (moe_model, moe_fwd, expert backends)
 *   sample.h     sampling and stop strings
 *   trace.h      routing traces: the experts chosen per step, layer and token
 *
 * The other headers here (ops.h, fwd_internal.h, gguf_impl.h,
 * tokenizer_impl.h) are private to model/ (tests may use them).
 * Depends on kernels/ and core/.
 */
#ifndef MOE_MODEL_H
#define MOE_MODEL_H

#include "model/forward.h"
#include "model/gguf.h"
#include "model/hparams.h"
#include "model/sample.h"
#include "model/tokenizer.h"
#include "model/trace.h"

#endif
