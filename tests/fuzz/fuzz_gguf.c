/*
 * fuzz_gguf.c - libFuzzer harness for the GGUF reader and what reads a model
 * from it: the input is a whole GGUF file; every key, array and tensor the
 * reader accepts is read back, then the hyper-parameters, the tokenizer and
 * the model's tensor checks run on it as they do on a file from disk.
 */
#include <string.h>

#include "model/model.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	return 0;
}

static double touch_value(const moe_gguf *g, int64_t i)
{
	double acc = 0;
	moe_gguf_value v;
	if (moe_gguf_kv_value(&v, g, i) != MOE_OK)
		return 0;
	if (v.type == MOE_GGUF_STRING && v.s.len > 0)
		acc += (unsigned char)v.s.ptr[v.s.len - 1];
	moe_gguf_arr a;
	if (moe_gguf_kv_arr(&a, g, i) == MOE_OK) {
		for (uint64_t j = 0; j < a.n && j < 64; j++) {
			if (a.type == MOE_GGUF_STRING) {
				moe_gguf_str s = moe_gguf_arr_str(&a, j);
				acc += (double)s.len;
			} else if (a.type == MOE_GGUF_FLOAT32 || a.type == MOE_GGUF_FLOAT64) {
				acc += moe_gguf_arr_float(&a, j);
			} else if (a.type != MOE_GGUF_ARRAY) {
				acc += (double)moe_gguf_arr_int(&a, j);
			}
		}
	}
	double d;
	if (moe_gguf_kv_as_double(&d, g, i))
		acc += d;
	return acc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	moe_gguf *g = NULL;
	if (moe_gguf_open_mem(&g, data, size) != MOE_OK)
		return 0;
	volatile double sink = 0;
	for (int64_t i = 0; i < moe_gguf_n_kv(g); i++) {
		moe_gguf_str k = moe_gguf_kv_key(g, i);
		sink += (double)k.len + touch_value(g, i);
	}
	for (int64_t i = 0; i < moe_gguf_n_tensors(g); i++) {
		const moe_gguf_tensor *t = moe_gguf_tensor_at(g, i);
		if (t->size > 0) /* the bytes lie inside the input: read the last one */
			sink += ((const unsigned char *)t->data)[t->size - 1];
	}
	moe_hparams hp;
	if (moe_hparams_load(&hp, g) == MOE_OK) {
		moe_model *m = NULL;
		if (moe_model_load(&m, g) == MOE_OK)
			moe_model_destroy(m);
	}
	moe_tokenizer *tok = NULL;
	if (moe_tokenizer_from_gguf(&tok, g) == MOE_OK) {
		int32_t *ids = NULL;
		size_t n = 0;
		if (moe_tokenizer_encode(&ids, &n, tok, "In the beginning", 16,
		                         MOE_TOK_ENCODE_SPECIAL) == MOE_OK)
			free(ids);
		moe_tokenizer_destroy(tok);
	}
	(void)sink;
	moe_gguf_close(g);
	return 0;
}
