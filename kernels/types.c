/* types.c - the ggml type table: names, block sizes, block bytes. */
#include "kernels/kernels.h"

static const moe_type_traits type_table[MOE_TYPE_COUNT] = {
    [MOE_TYPE_F32] = {"F32", 1, 4, true, MOE_TYPE_F32},
    [MOE_TYPE_F16] = {"F16", 1, 2, true, MOE_TYPE_F32},
    [MOE_TYPE_Q4_0] = {"Q4_0", 32, 18, true, MOE_TYPE_Q8_0},
    [MOE_TYPE_Q4_1] = {"Q4_1", 32, 20, true, MOE_TYPE_Q8_1},
    [MOE_TYPE_Q5_0] = {"Q5_0", 32, 22, true, MOE_TYPE_Q8_0},
    [MOE_TYPE_Q5_1] = {"Q5_1", 32, 24, true, MOE_TYPE_Q8_1},
    [MOE_TYPE_Q8_0] = {"Q8_0", 32, 34, true, MOE_TYPE_Q8_0},
    [MOE_TYPE_Q8_1] = {"Q8_1", 32, 36, false, MOE_TYPE_Q8_1},
    [MOE_TYPE_Q2_K] = {"Q2_K", 256, 84, true, MOE_TYPE_Q8_K},
    [MOE_TYPE_Q3_K] = {"Q3_K", 256, 110, true, MOE_TYPE_Q8_K},
    [MOE_TYPE_Q4_K] = {"Q4_K", 256, 144, true, MOE_TYPE_Q8_K},
    [MOE_TYPE_Q5_K] = {"Q5_K", 256, 176, true, MOE_TYPE_Q8_K},
    [MOE_TYPE_Q6_K] = {"Q6_K", 256, 210, true, MOE_TYPE_Q8_K},
    [MOE_TYPE_Q8_K] = {"Q8_K", 256, 292, false, MOE_TYPE_Q8_K},
    [MOE_TYPE_IQ2_XXS] = {"IQ2_XXS", 256, 66, true, MOE_TYPE_Q8_K},
    [MOE_TYPE_IQ2_XS] = {"IQ2_XS", 256, 74, true, MOE_TYPE_Q8_K},
    [MOE_TYPE_IQ3_XXS] = {"IQ3_XXS", 256, 98, true, MOE_TYPE_Q8_K},
    [MOE_TYPE_IQ1_S] = {"IQ1_S", 256, 50, true, MOE_TYPE_Q8_K},
    [MOE_TYPE_IQ4_NL] = {"IQ4_NL", 32, 18, true, MOE_TYPE_Q8_0},
    [MOE_TYPE_IQ3_S] = {"IQ3_S", 256, 110, true, MOE_TYPE_Q8_K},
    [MOE_TYPE_IQ2_S] = {"IQ2_S", 256, 82, true, MOE_TYPE_Q8_K},
    [MOE_TYPE_IQ4_XS] = {"IQ4_XS", 256, 136, true, MOE_TYPE_Q8_K},
    [MOE_TYPE_I8] = {"I8", 1, 1, false, MOE_TYPE_I8},
    [MOE_TYPE_I16] = {"I16", 1, 2, false, MOE_TYPE_I16},
    [MOE_TYPE_I32] = {"I32", 1, 4, false, MOE_TYPE_I32},
    [MOE_TYPE_I64] = {"I64", 1, 8, false, MOE_TYPE_I64},
    [MOE_TYPE_F64] = {"F64", 1, 8, false, MOE_TYPE_F64},
    [MOE_TYPE_IQ1_M] = {"IQ1_M", 256, 56, true, MOE_TYPE_Q8_K},
    [MOE_TYPE_BF16] = {"BF16", 1, 2, true, MOE_TYPE_F32},
    [MOE_TYPE_TQ1_0] = {"TQ1_0", 256, 54, false, MOE_TYPE_Q8_K},
    [MOE_TYPE_TQ2_0] = {"TQ2_0", 256, 66, false, MOE_TYPE_Q8_K},
    [MOE_TYPE_MXFP4] = {"MXFP4", 32, 17, true, MOE_TYPE_Q8_0},
};

const moe_type_traits *moe_type_get(moe_type t)
{
	if ((unsigned)t >= MOE_TYPE_COUNT || type_table[t].name == NULL)
		return NULL;
	return &type_table[t];
}

size_t moe_row_size(moe_type t, int64_t n)
{
	const moe_type_traits *tr = moe_type_get(t);

	if (tr == NULL || n < 0 || n % tr->block_size != 0)
		return 0;
	return (size_t)(n / tr->block_size) * tr->type_size;
}
