/*
 * model.h - the public header of the model module: GGUF files, the tokenizer,
 * hyper-parameters and the forward pass.  Each part has its own header in this
 * folder; this one includes them all.  Depends on kernels/ and core/.
 */
#ifndef MOE_MODEL_H
#define MOE_MODEL_H

#include "kernels/kernels.h"
#include "model/tokenizer.h"

#endif
