/* test_prefix.c - the prefix cache (server/prefix.h) on made-up KV rows and
 * states whose bytes say which position and token they belong to: the
 * deepest checkpoint of a prompt is found and read back row for row,
 * sequences sharing a prefix split the tree, without a recurrent state
 * any position on a path is a hit, the budget evicts least
 * recently used entries but never the path being inserted (of a
 * conversation's one path, the older checkpoints), the disk tier
 * rebuilds a prefix after a restart, and refuses files of another model or
 * broken ones. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "server/prefix.h"

#define KB 16 /* bytes of one position's made-up KV row */
#define SB 24 /* bytes of one made-up state */

/* The row of position p of a sequence: p, its token, a pattern. */
static void row(uint8_t *out, int64_t p, int32_t tok)
{
	memset(out, 0, KB);
	memcpy(out, &p, 8);
	memcpy(out + 8, &tok, 4);
	out[12] = (uint8_t)(p * 7 + (uint64_t)tok);
}

/* The state after tokens[0..n). */
static void state_of(uint8_t *out, const int32_t *tokens, size_t n)
{
	memset(out, 0, SB);
	uint64_t h = 1469598103934665603ull;
	for (size_t i = 0; i < n; i++)
		h = (h ^ (uint64_t)tokens[i]) * 1099511628211ull;
	memcpy(out, &h, 8);
	memcpy(out + 8, &n, sizeof n);
}

typedef struct seq {
	const int32_t *tokens;
	int asked; /* positions the cache asked the source for */
} seq;

static moe_err source(void *ctx, int64_t p0, int64_t p1, void *kv)
{
	seq *s = ctx;
	for (int64_t p = p0; p < p1; p++)
		row((uint8_t *)kv + (p - p0) * KB, p, s->tokens[p]);
	s->asked += (int)(p1 - p0);
	return MOE_OK;
}

typedef struct check {
	const int32_t *tokens;
	int64_t next; /* the position the next run must start at */
	bool ok;
} check;

static bool sink(void *ctx, int64_t p0, int64_t p1, const void *kv)
{
	check *k = ctx;
	uint8_t want[KB];
	if (p0 != k->next)
		k->ok = false;
	for (int64_t p = p0; p < p1; p++) {
		row(want, p, k->tokens[p]);
		if (memcmp(want, (const uint8_t *)kv + (p - p0) * KB, KB) != 0)
			k->ok = false;
	}
	k->next = p1;
	return true;
}

static moe_prefix_cache *make(size_t ram, const char *dir, uint8_t id)
{
	moe_prefix_opts o = {
	    .ram_bytes = ram, .dir = dir, .kv_pos_bytes = KB, .state_bytes = SB, .block = 8};
	memset(o.identity, id, sizeof o.identity);
	moe_prefix_cache *c = NULL;
	cr_assert_eq(moe_prefix_cache_create(&c, &o), MOE_OK, "%s", moe_err_detail());
	return c;
}

static void insert(moe_prefix_cache *c, const int32_t *t, size_t n)
{
	uint8_t st[SB];
	state_of(st, t, n);
	seq s = {.tokens = t};
	cr_assert_eq(moe_prefix_cache_insert(c, t, n, source, &s, st), MOE_OK);
}

/* Looks up t[0..n) (at most max) and checks the hit's rows and state;
 * returns its length. */
static size_t hit(moe_prefix_cache *c, const int32_t *t, size_t n, size_t max)
{
	const size_t len = moe_prefix_cache_lookup(c, t, n, max);
	if (len == 0)
		return 0;
	check k = {.tokens = t, .ok = true};
	uint8_t st[SB], want[SB];
	cr_assert_eq(moe_prefix_cache_read(c, len, sink, &k, st), MOE_OK);
	cr_assert(k.ok && k.next == (int64_t)len, "rows of the hit of %zu are wrong", len);
	state_of(want, t, len);
	cr_assert(memcmp(st, want, SB) == 0, "the state at %zu is not the one inserted there", len);
	return len;
}

Test(prefix, the_deepest_checkpoint_of_a_prompt_comes_back_row_for_row)
{
	moe_prefix_cache *c = make(1 << 20, NULL, 1);
	int32_t t[100];
	for (int i = 0; i < 100; i++)
		t[i] = 1000 + i;
	insert(c, t, 20); /* a prompt */
	insert(c, t, 45); /* + its reply */
	insert(c, t, 60); /* + the next turn */
	cr_assert_eq(hit(c, t, 100, 100), 60);
	cr_assert_eq(hit(c, t, 100, 59), 45, "max bounds the hit");
	cr_assert_eq(hit(c, t, 44, 44), 20);
	cr_assert_eq(hit(c, t, 19, 19), 0);
	int32_t u[100];
	memcpy(u, t, sizeof u);
	u[30] = 7; /* another continuation after position 30 */
	cr_assert_eq(hit(c, u, 100, 100), 20);
	moe_prefix_cache_read(c, 20, sink, &(check){.tokens = u}, (uint8_t[SB]){0});
	cr_assert_eq(moe_prefix_cache_read(c, 45, sink, &(check){.tokens = u}, (uint8_t[SB]){0}),
	             MOE_ERR_STATE, "only the last hit can be read");
	moe_prefix_stats st = moe_prefix_cache_stats(c);
	cr_assert_eq(st.checkpoints, 3);
	cr_assert_eq(st.bytes, (size_t)60 * KB + 3 * SB);
	moe_prefix_cache_destroy(c);
	moe_prefix_cache_destroy(NULL);
}

Test(prefix, sequences_sharing_a_prefix_split_the_tree_and_share_its_rows)
{
	moe_prefix_cache *c = make(1 << 20, NULL, 1);
	int32_t a[64], b[64];
	for (int i = 0; i < 64; i++) {
		a[i] = i;
		b[i] = i < 40 ? i : 500 + i;
	}
	insert(c, a, 64);
	seq s = {.tokens = b};
	uint8_t st[SB];
	state_of(st, b, 64);
	cr_assert_eq(moe_prefix_cache_insert(c, b, 64, source, &s, st), MOE_OK);
	cr_assert_eq(s.asked, 24, "only the rows after the shared 40 are asked for");
	insert(c, a, 40); /* a checkpoint where the two part */
	cr_assert_eq(hit(c, a, 64, 64), 64);
	cr_assert_eq(hit(c, b, 64, 64), 64);
	cr_assert_eq(hit(c, b, 64, 50), 40);
	const moe_prefix_stats k = moe_prefix_cache_stats(c);
	cr_assert_eq(k.bytes, (size_t)(64 + 24) * KB + 3 * SB, "the 40 shared rows are held once");
	cr_assert_eq(k.nodes, 3);
	moe_prefix_cache_destroy(c);
}

Test(prefix, without_a_recurrent_state_any_position_on_a_path_is_a_hit)
{
	moe_prefix_opts o = {.ram_bytes = 1 << 20, .kv_pos_bytes = KB, .state_bytes = 0, .block = 8};
	moe_prefix_cache *c = NULL;
	cr_assert_eq(moe_prefix_cache_create(&c, &o), MOE_OK, "%s", moe_err_detail());
	int32_t t[50], u[50];
	for (int i = 0; i < 50; i++) {
		t[i] = 300 + i;
		u[i] = i < 33 ? t[i] : 9;
	}
	seq s = {.tokens = t};
	cr_assert_eq(moe_prefix_cache_insert(c, t, 40, source, &s, NULL), MOE_OK);
	struct {
		const int32_t *tok;
		size_t n, max, want;
	} cases[] = {{t, 50, 50, 40}, {t, 50, 17, 17}, {u, 50, 50, 33}, {t, 1, 1, 1}};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const size_t len = moe_prefix_cache_lookup(c, cases[i].tok, cases[i].n, cases[i].max);
		cr_assert_eq(len, cases[i].want, "case %zu: %zu, not %zu", i, len, cases[i].want);
		check k = {.tokens = cases[i].tok, .ok = true};
		cr_assert_eq(moe_prefix_cache_read(c, len, sink, &k, NULL), MOE_OK);
		cr_assert(k.ok && k.next == (int64_t)len, "case %zu: the rows up to %zu", i, len);
	}
	moe_prefix_cache_destroy(c);
}

Test(prefix, the_budget_evicts_least_recently_used_never_the_new_path)
{
	/* room for about three 30-token sequences */
	moe_prefix_cache *c = make(3 * (30 * KB + SB) + 10, NULL, 1);
	int32_t t[4][30];
	for (int s = 0; s < 4; s++)
		for (int i = 0; i < 30; i++)
			t[s][i] = s * 1000 + i;
	insert(c, t[0], 30);
	insert(c, t[1], 30);
	insert(c, t[2], 30);
	cr_assert_eq(hit(c, t[0], 30, 30), 30); /* t[0] is used: t[1] is now the oldest */
	insert(c, t[3], 30);
	cr_assert_eq(hit(c, t[1], 30, 30), 0, "the least recently used went");
	cr_assert_eq(hit(c, t[0], 30, 30), 30);
	cr_assert_eq(hit(c, t[3], 30, 30), 30, "the new one stays");
	const moe_prefix_stats k = moe_prefix_cache_stats(c);
	cr_assert_leq(k.bytes, (size_t)3 * (30 * KB + SB) + 10);
	cr_assert_geq(k.evictions, 1);
	/* longer than the whole budget: not kept, nothing else lost */
	int32_t big[400];
	for (int i = 0; i < 400; i++)
		big[i] = 9000 + i;
	insert(c, big, 400);
	cr_assert_eq(hit(c, big, 400, 400), 0);
	cr_assert_eq(hit(c, t[0], 30, 30), 30);
	moe_prefix_cache_destroy(c);
}

Test(prefix, a_long_conversation_gives_up_its_older_checkpoints_first)
{
	/* one path of 100 rows, room for two states besides */
	moe_prefix_cache *c = make(100 * KB + 2 * SB + 4, NULL, 1);
	int32_t t[100];
	for (int i = 0; i < 100; i++)
		t[i] = 70 + i;
	for (size_t n = 20; n <= 100; n += 20)
		insert(c, t, n);
	cr_assert_eq(hit(c, t, 100, 100), 100, "the newest checkpoint stays");
	cr_assert_eq(hit(c, t, 100, 99), 80, "the one before it too");
	cr_assert_eq(hit(c, t, 100, 79), 0, "the older ones went");
	const moe_prefix_stats k = moe_prefix_cache_stats(c);
	cr_assert_eq(k.checkpoints, 2);
	cr_assert_eq(k.evictions, 3);
	cr_assert_eq(k.bytes, (size_t)100 * KB + 2 * SB, "every row stays: the newest needs them");
	moe_prefix_cache_destroy(c);
}

static void temp_dir(char *out, size_t n)
{
	snprintf(out, n, "/tmp/moe-prefix-%d-XXXXXX", (int)getpid());
	cr_assert(mkdtemp(out) != NULL);
}

static void rm_rf(const char *d)
{
	char cmd[1200];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", d);
	cr_assert_eq(system(cmd), 0);
}

/* The block files of dir (any identity): their paths in out, the count. */
static int block_files(const char *dir, char out[][600], int max)
{
	int n = 0;
	DIR *d = opendir(dir);
	cr_assert(d != NULL);
	const struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		char sub[512];
		snprintf(sub, sizeof sub, "%s/%s", dir, e->d_name);
		DIR *s = opendir(sub);
		if (s == NULL)
			continue;
		const struct dirent *f;
		while ((f = readdir(s)) != NULL && n < max)
			if (strstr(f->d_name, ".moeblk") != NULL)
				snprintf(out[n++], 600, "%.300s/%.200s", sub, f->d_name);
		closedir(s);
	}
	closedir(d);
	return n;
}

Test(prefix, the_disk_tier_rebuilds_a_prefix_after_a_restart)
{
	char dir[256];
	temp_dir(dir, sizeof dir);
	int32_t t[40];
	for (int i = 0; i < 40; i++)
		t[i] = 300 + i * 3;
	moe_prefix_cache *c = make(1 << 20, dir, 1);
	insert(c, t, 8); /* blocks of 8: checkpoints at 8, 16, 24 go to disk */
	insert(c, t, 13);
	insert(c, t, 16);
	insert(c, t, 24);
	insert(c, t, 30);
	moe_prefix_cache_destroy(c); /* flushes the writer */
	char files[16][600];
	cr_assert_eq(block_files(dir, files, 16), 3);
	c = make(1 << 20, dir, 1); /* a restart: memory empty */
	cr_assert_eq(hit(c, t, 40, 40), 24, "the chain of 3 blocks is read back");
	cr_assert_eq(hit(c, t, 40, 20), 16);
	cr_assert_geq(moe_prefix_cache_stats(c).disk_hits, 3);
	int32_t u[40];
	memcpy(u, t, sizeof u);
	u[20] = 1; /* differs inside the third block */
	cr_assert_eq(hit(c, u, 40, 40), 16);
	moe_prefix_cache_destroy(c);
	/* another model (identity) does not see them */
	c = make(1 << 20, dir, 2);
	cr_assert_eq(hit(c, t, 40, 40), 0);
	moe_prefix_cache_destroy(c);
	rm_rf(dir);
}

Test(prefix, files_of_another_model_or_broken_are_refused)
{
	char dir[256];
	temp_dir(dir, sizeof dir);
	int32_t t[16];
	for (int i = 0; i < 16; i++)
		t[i] = 70 + i;
	/* model 2 writes its blocks ... */
	moe_prefix_cache *c = make(1 << 20, dir, 2);
	insert(c, t, 8);
	insert(c, t, 16);
	moe_prefix_cache_destroy(c);
	char f2[4][600];
	cr_assert_eq(block_files(dir, f2, 4), 2);
	/* ... model 1 makes its directory, and model 2's files are put in it */
	c = make(1 << 20, dir, 1);
	insert(c, (int32_t[1]){5}, 1);
	moe_prefix_cache_destroy(c);
	char f[8][600];
	const int n = block_files(dir, f, 8);
	cr_assert_eq(n, 2, "1-token checkpoints are not blocks");
	char d1[600] = "";
	DIR *d = opendir(dir);
	const struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		char sub[600];
		snprintf(sub, sizeof sub, "%s/%s", dir, e->d_name);
		if (e->d_name[0] != '.' && strstr(f2[0], sub) == NULL)
			snprintf(d1, sizeof d1, "%s", sub);
	}
	closedir(d);
	cr_assert(d1[0] != '\0');
	for (int i = 0; i < 2; i++) {
		char cmd[1400];
		/* paths: temp_dir names (under 100 bytes) */
		snprintf(cmd, sizeof cmd, "cp '%.600s' '%.600s/'", f2[i], d1);
		cr_assert_eq(system(cmd), 0);
	}
	c = make(1 << 20, dir, 1);
	cr_assert_eq(hit(c, t, 16, 16), 0, "model 2's files were used by model 1");
	cr_assert_eq(moe_prefix_cache_stats(c).disk_rejects, 1);
	moe_prefix_cache_destroy(c);
	/* model 2's own file with one byte flipped: refused and removed */
	FILE *fp = fopen(f2[0], "r+b");
	cr_assert(fp != NULL);
	fseek(fp, 200, SEEK_SET);
	const int ch = fgetc(fp);
	fseek(fp, 200, SEEK_SET);
	fputc(ch ^ 1, fp);
	fclose(fp);
	c = make(1 << 20, dir, 2);
	const size_t got = hit(c, t, 16, 16);
	cr_assert(got == 0 || got == 8, "a broken block was used (%zu)", got);
	cr_assert_eq(moe_prefix_cache_stats(c).disk_rejects, 1);
	moe_prefix_cache_destroy(c);
	struct stat st;
	cr_assert(stat(f2[0], &st) != 0, "the broken file is still there");
	rm_rf(dir);
}
