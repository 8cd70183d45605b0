/* test_api.c - the API layer's helpers (server/api.h) that every route
 * builds its JSON with: text pieces that are not NUL-terminated where they
 * end (the reply parser hands out pieces of a larger buffer), NUL bytes,
 * growing buffers, tool call ids. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "server/api.h"

Test(api, add_text_takes_exactly_len_bytes)
{
	cJSON *o = cJSON_CreateObject();
	const char buf[] = "abc}}\n</tool_call>";
	moe_api_add_text(o, "a", buf, 3);
	moe_api_add_text(o, "b", "x\0y", 3);
	moe_api_add_text(o, "c", buf, 0);
	cr_assert_str_eq(cJSON_GetObjectItem(o, "a")->valuestring, "abc");
	cr_assert_str_eq(cJSON_GetObjectItem(o, "b")->valuestring, "x\xef\xbf\xbdy");
	cr_assert_str_eq(cJSON_GetObjectItem(o, "c")->valuestring, "");
	cJSON_Delete(o);
}

Test(api, grow_keeps_a_terminated_copy)
{
	char *b = NULL;
	size_t n = 0, cap = 0;
	for (int i = 0; i < 1000; i++)
		cr_assert(moe_api_grow(&b, &n, &cap, "0123456789", i % 11));
	size_t want = 0;
	for (int i = 0; i < 1000; i++)
		want += (size_t)(i % 11);
	cr_assert_eq(n, want);
	cr_assert_eq(b[n], '\0');
	cr_assert_eq(strlen(b), n);
	free(b);
}

Test(api, call_ids_have_the_prefix_and_differ)
{
	char a[40], b[40], small[8];
	moe_api_call_id(a, sizeof a, "call_");
	moe_api_call_id(b, sizeof b, "call_");
	cr_assert_eq(strlen(a), 5 + 24);
	cr_assert_eq(strncmp(a, "call_", 5), 0);
	cr_assert_str_neq(a, b);
	moe_api_call_id(small, sizeof small, "toolu_");
	cr_assert_eq(strlen(small), 7);
}
