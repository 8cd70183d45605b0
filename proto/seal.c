/*
 * seal.c - the session keys of an authenticated handshake (HKDF-SHA256) and
 * sealed frames (AES-256-GCM, a per-direction frame counter as nonce, the
 * 24-byte prefix as associated data, the tag appended), over nng messages
 * (control) and stream sockets (data; receiving is moe_rx_read's, net.c).
 */
#include "proto/proto.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <stdlib.h>
#include <string.h>

struct moe_aead {
	EVP_CIPHER_CTX *ctx; /* keyed once; each frame sets only its nonce */
	bool seal;
	uint64_t n;   /* frames so far: the next frame's counter */
	uint8_t *buf; /* sealed payload when the caller's bytes must stay (64-aligned) */
	size_t cap;
};

/* ---- keys --------------------------------------------------------------------- */

static moe_err hkdf(uint8_t out[MOE_SEAL_KEY], EVP_KDF *kdf, const uint8_t *secret,
                    size_t secret_len, const uint8_t *salt, size_t salt_len, const char *info)
{
	moe_err err = MOE_OK;
	EVP_KDF_CTX *kc = EVP_KDF_CTX_new(kdf);
	OSSL_PARAM p[] = {
	    OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0),
	    OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)secret, secret_len),
	    OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, salt_len),
	    OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info, strlen(info)),
	    OSSL_PARAM_construct_end()};
	if (kc == NULL || EVP_KDF_derive(kc, out, MOE_SEAL_KEY, p) != 1)
		err = moe_fail(MOE_ERR_SYS, "HKDF-SHA256 (%s) failed", info);
	EVP_KDF_CTX_free(kc);
	return err;
}

moe_err moe_session_derive(moe_session_keys *out, const uint8_t *secret, size_t secret_len,
                           const uint8_t nonce_c[32], const uint8_t nonce_w[32],
                           const uint8_t model_id[MOE_ID_BYTES])
{
	uint8_t salt[64 + MOE_ID_BYTES];
	if (secret == NULL || secret_len == 0)
		return moe_fail(MOE_ERR_INVAL, "session keys need a secret");
	memcpy(salt, nonce_c, 32);
	memcpy(salt + 32, nonce_w, 32);
	memcpy(salt + 64, model_id, MOE_ID_BYTES);
	EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
	if (kdf == NULL)
		return moe_fail(MOE_ERR_SYS, "libcrypto has no HKDF");
	moe_err err;
	if ((err = hkdf(out->ctl_cw, kdf, secret, secret_len, salt, sizeof salt, MOE_KEY_CTL_CW)) ==
	        MOE_OK &&
	    (err = hkdf(out->ctl_wc, kdf, secret, secret_len, salt, sizeof salt, MOE_KEY_CTL_WC)) ==
	        MOE_OK &&
	    (err = hkdf(out->data_cw, kdf, secret, secret_len, salt, sizeof salt,
	                MOE_KEY_DATA_CW)) == MOE_OK)
		err =
		    hkdf(out->data_wc, kdf, secret, secret_len, salt, sizeof salt, MOE_KEY_DATA_WC);
	EVP_KDF_free(kdf);
	if (err != MOE_OK)
		moe_session_wipe(out);
	return err;
}

void moe_session_wipe(moe_session_keys *k)
{
	OPENSSL_cleanse(k, sizeof *k);
}

/* ---- one direction ------------------------------------------------------------ */

moe_err moe_aead_create(moe_aead **out, const uint8_t key[MOE_SEAL_KEY], bool seal)
{
	moe_aead *a = calloc(1, sizeof *a);
	if (a == NULL)
		return moe_fail(MOE_ERR_NOMEM, "AEAD state");
	a->seal = seal;
	a->ctx = EVP_CIPHER_CTX_new();
	if (a->ctx == NULL ||
	    EVP_CipherInit_ex(a->ctx, EVP_aes_256_gcm(), NULL, key, NULL, seal ? 1 : 0) != 1) {
		moe_aead_destroy(a);
		return moe_fail(MOE_ERR_SYS, "AES-256-GCM set-up failed");
	}
	*out = a;
	return MOE_OK;
}

void moe_aead_destroy(moe_aead *a)
{
	if (a == NULL)
		return;
	EVP_CIPHER_CTX_free(a->ctx); /* cleanses the key schedule */
	moe_aligned_free(a->buf);
	free(a);
}

uint64_t moe_aead_count(const moe_aead *a)
{
	return a->n;
}

/* Starts the next frame: its nonce, the prefix as associated data. */
static moe_err frame_begin(moe_aead *a, const uint8_t prefix[MOE_PROTO_PREFIX])
{
	uint8_t iv[12] = {0};
	int n = 0;
	if (a->n == UINT64_MAX)
		return moe_fail(MOE_ERR_CLOSED, "link used up its 2^64-1 frame counters");
	for (int i = 0; i < 8; i++)
		iv[i] = (uint8_t)(a->n >> (8 * i));
	if (EVP_CipherInit_ex(a->ctx, NULL, NULL, NULL, iv, -1) != 1 ||
	    EVP_CipherUpdate(a->ctx, NULL, &n, prefix, MOE_PROTO_PREFIX) != 1)
		return moe_fail(MOE_ERR_SYS, "AES-256-GCM failed");
	return MOE_OK;
}

/* Encrypts or decrypts len bytes from in to out (may be the same). */
static moe_err frame_update(moe_aead *a, uint8_t *out, const uint8_t *in, size_t len)
{
	while (len > 0) {
		const int k = len > (1u << 30) ? 1 << 30 : (int)len;
		int n = 0;
		if (EVP_CipherUpdate(a->ctx, out, &n, in, k) != 1 || n != k)
			return moe_fail(MOE_ERR_SYS, "AES-256-GCM failed");
		out += k;
		in += k;
		len -= (size_t)k;
	}
	return MOE_OK;
}

static moe_err seal_finish(moe_aead *a, uint8_t tag[MOE_SEAL_TAG])
{
	int n = 0;
	if (EVP_EncryptFinal_ex(a->ctx, tag, &n) != 1 ||
	    EVP_CIPHER_CTX_ctrl(a->ctx, EVP_CTRL_GCM_GET_TAG, MOE_SEAL_TAG, tag) != 1)
		return moe_fail(MOE_ERR_SYS, "AES-256-GCM tag failed");
	a->n++;
	return MOE_OK;
}

moe_err moe_aead_seal_frame(moe_aead *a, uint8_t tag[MOE_SEAL_TAG], void *frame, size_t len)
{
	uint8_t *p = frame;
	moe_err err;
	if (!a->seal || len < MOE_PROTO_PREFIX)
		return moe_fail(MOE_ERR_INVAL, "sealing %zu bytes with %s", len,
		                a->seal ? "a sealer" : "an opener");
	if ((err = frame_begin(a, p)) != MOE_OK ||
	    (err = frame_update(a, p + MOE_PROTO_PREFIX, p + MOE_PROTO_PREFIX,
	                        len - MOE_PROTO_PREFIX)) != MOE_OK)
		return err;
	return seal_finish(a, tag);
}

moe_err moe_aead_open_frame(moe_aead *a, void *frame, size_t len, const uint8_t tag[MOE_SEAL_TAG])
{
	uint8_t *p = frame;
	int n = 0;
	moe_err err;
	if (a->seal || len < MOE_PROTO_PREFIX)
		return moe_fail(MOE_ERR_INVAL, "opening %zu bytes with %s", len,
		                a->seal ? "a sealer" : "an opener");
	if ((err = frame_begin(a, p)) != MOE_OK ||
	    (err = frame_update(a, p + MOE_PROTO_PREFIX, p + MOE_PROTO_PREFIX,
	                        len - MOE_PROTO_PREFIX)) != MOE_OK)
		return err;
	if (EVP_CIPHER_CTX_ctrl(a->ctx, EVP_CTRL_GCM_SET_TAG, MOE_SEAL_TAG, (void *)tag) != 1)
		return moe_fail(MOE_ERR_SYS, "AES-256-GCM failed");
	if (EVP_DecryptFinal_ex(a->ctx, p, &n) != 1)
		return moe_fail(MOE_ERR_AUTH,
		                "%s frame %llu failed its authentication tag (tampered, replayed, "
		                "reordered, or sealed with another key): the link is dropped",
		                moe_msg_kind_name(p[6] | p[7] << 8), (unsigned long long)a->n);
	a->n++;
	return MOE_OK;
}

/* ---- nng ------------------------------------------------------------------------ */

moe_err moe_nng_open(moe_frame *f, nng_msg *m, moe_aead *open)
{
	uint8_t *p = nng_msg_body(m);
	const size_t len = nng_msg_len(m);
	size_t flen;
	moe_err err;
	if (open == NULL)
		return moe_frame_parse(f, p, len);
	if (len >= MOE_PROTO_PREFIX && moe_frame_length(&flen, p) == MOE_OK && flen == len) {
		/* no room for a tag: a plain frame, refused; a plain ERROR (a
		 * peer that refused our AUTH says why) is quoted */
		Moemesh__Error *e = NULL;
		if (moe_frame_parse(f, p, len) == MOE_OK && f->kind == MOE_MSG_ERROR)
			e = moemesh__error__unpack(NULL, f->header_len, f->header);
		err = moe_fail(MOE_ERR_AUTH, "an unsealed %s frame on a sealed link%s%s%s",
		               moe_msg_kind_name(p[6] | p[7] << 8), e ? " (it says: " : "",
		               e && e->message ? e->message : "", e ? ")" : "");
		moemesh__error__free_unpacked(e, NULL);
		return err;
	}
	if (len < MOE_PROTO_PREFIX + MOE_SEAL_TAG)
		return moe_fail(MOE_ERR_AUTH, "a sealed frame of %zu bytes has no room for its tag",
		                len);
	if ((err = moe_aead_open_frame(open, p, len - MOE_SEAL_TAG, p + len - MOE_SEAL_TAG)) !=
	    MOE_OK)
		return err;
	if (nng_msg_chop(m, MOE_SEAL_TAG) != 0)
		return moe_fail(MOE_ERR_SYS, "trimming a tag");
	return moe_frame_parse(f, nng_msg_body(m), nng_msg_len(m));
}

moe_err moe_nng_send_sealed(nng_socket s, moe_aead *seal, moe_msg_kind kind,
                            const ProtobufCMessage *msg)
{
	if (seal == NULL)
		return moe_nng_send(s, kind, msg);
	const size_t hlen = msg ? protobuf_c_message_get_packed_size(msg) : 0;
	const size_t size = moe_frame_size(hlen, 0);
	nng_msg *m;
	moe_err err;
	int rv;
	if (size == 0)
		return moe_fail(MOE_ERR_INVAL, "%s header of %zu bytes over cap",
		                moe_msg_kind_name(kind), hlen);
	if ((rv = nng_msg_alloc(&m, size + MOE_SEAL_TAG)) != 0)
		return moe_nng_fail(rv, "allocating a frame");
	uint8_t *p = nng_msg_body(m);
	if ((err = moe_frame_write(p, size, kind, msg, 0)) != MOE_OK ||
	    (err = moe_aead_seal_frame(seal, p + size, p, size)) != MOE_OK)
		goto out_free_msg;
	if ((rv = nng_sendmsg(s, m, 0)) != 0) {
		err = moe_nng_fail(rv, "sending a frame");
		goto out_free_msg;
	}
	return MOE_OK;

out_free_msg:
	nng_msg_free(m);
	return err;
}

moe_err moe_nng_recv_sealed(nng_msg **msg, moe_frame *f, nng_socket s, moe_aead *open,
                            int timeout_ms)
{
	nng_msg *m;
	moe_err err;
	int rv;
	if (open == NULL)
		return moe_nng_recv(msg, f, s, timeout_ms);
	if (timeout_ms >= 0 &&
	    (rv = nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, (nng_duration)timeout_ms)) != 0)
		return moe_nng_fail(rv, "setting the receive timeout");
	if ((rv = nng_recvmsg(s, &m, 0)) != 0)
		return moe_nng_fail(rv, "receiving a frame");
	if ((err = moe_nng_open(f, m, open)) != MOE_OK) {
		nng_msg_free(m);
		return err;
	}
	*msg = m;
	return MOE_OK;
}

/* ---- stream sockets --------------------------------------------------------------- */

moe_err moe_stream_send_sealed(int fd, moe_aead *seal, moe_msg_kind kind,
                               const ProtobufCMessage *msg, const struct iovec *payload,
                               int n_payload, bool in_place)
{
	enum { MAX_PARTS = 64 };
	size_t plen = 0, head_len, hcap;
	uint8_t stack[4096], tag[MOE_SEAL_TAG];
	uint8_t *head = stack;
	struct iovec small[MAX_PARTS + 2];
	struct iovec *iov = small;
	int n_iov = 0;
	moe_err err;

	for (int i = 0; i < n_payload; i++)
		plen += payload[i].iov_len;
	hcap = moe_frame_payload_offset(msg ? protobuf_c_message_get_packed_size(msg) : 0);
	if (hcap > sizeof stack && (head = malloc(hcap)) == NULL)
		return moe_fail(MOE_ERR_NOMEM, "frame head of %zu bytes", hcap);
	if (n_payload > MAX_PARTS &&
	    (iov = malloc(((size_t)n_payload + 2) * sizeof *iov)) == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "%d payload parts", n_payload);
		goto out_free_head;
	}
	if ((err = moe_frame_write_head(&head_len, head, hcap, kind, msg, plen)) != MOE_OK)
		goto out_free_iov;
	if (seal == NULL) { /* plain: head and payload where they lie */
		iov[n_iov++] = (struct iovec){.iov_base = head, .iov_len = head_len};
		for (int i = 0; i < n_payload; i++)
			iov[n_iov++] = payload[i];
		err = moe_sock_writev_all(fd, iov, n_iov);
		goto out_free_iov;
	}
	if (!in_place && plen > seal->cap) {
		uint8_t *b = moe_aligned_alloc(MOE_PROTO_ALIGN, plen);
		if (b == NULL) {
			err = moe_fail(MOE_ERR_NOMEM, "sealed payload of %zu bytes", plen);
			goto out_free_iov;
		}
		moe_aligned_free(seal->buf);
		seal->buf = b;
		seal->cap = plen;
	}
	if ((err = frame_begin(seal, head)) != MOE_OK ||
	    (err = frame_update(seal, head + MOE_PROTO_PREFIX, head + MOE_PROTO_PREFIX,
	                        head_len - MOE_PROTO_PREFIX)) != MOE_OK)
		goto out_free_iov;
	iov[n_iov++] = (struct iovec){.iov_base = head, .iov_len = head_len};
	size_t at = 0;
	for (int i = 0; i < n_payload; i++) {
		uint8_t *in = payload[i].iov_base;
		uint8_t *out = in_place ? in : seal->buf + at;
		if ((err = frame_update(seal, out, in, payload[i].iov_len)) != MOE_OK)
			goto out_free_iov;
		if (in_place)
			iov[n_iov++] = payload[i];
		at += payload[i].iov_len;
	}
	if (!in_place && plen > 0)
		iov[n_iov++] = (struct iovec){.iov_base = seal->buf, .iov_len = plen};
	if ((err = seal_finish(seal, tag)) != MOE_OK)
		goto out_free_iov;
	iov[n_iov++] = (struct iovec){.iov_base = tag, .iov_len = MOE_SEAL_TAG};
	err = moe_sock_writev_all(fd, iov, n_iov);

out_free_iov:
	if (iov != small)
		free(iov);
out_free_head:
	if (head != stack)
		free(head);
	return err;
}
