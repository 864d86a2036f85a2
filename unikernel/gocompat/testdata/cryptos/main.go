// Command cryptos runs known-answer tests of the standard library's
// hashes, HMAC, AES-GCM and Ed25519 (fixed keys, so every output is
// deterministic) and checks that tampering is detected.
package main

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"strings"

	"github.com/kilnfaas/kiln/unikernel/gocompat/testdata/check"
)

func main() {
	// FIPS 180-2 test vectors.
	abc := []byte("abc")
	kat := []struct{ name, got, want string }{
		{"sha1(abc)", hex.EncodeToString(sha1Sum(abc)), "a9993e364706816aba3e25717850c26c9cd0d89d"},
		{"sha256(abc)", hex.EncodeToString(sha256Sum(abc)), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
		{"sha512(abc)", hex.EncodeToString(sha512Sum(abc)),
			"ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"},
	}
	for _, k := range kat {
		check.That(k.name, k.got == k.want, "got %s", k.got)
	}
	// A million 'a's (FIPS 180-2), hashed in uneven chunks.
	h := sha256.New()
	chunk := []byte(strings.Repeat("a", 997))
	left := 1000000
	for left > 0 {
		n := min(left, len(chunk))
		h.Write(chunk[:n])
		left -= n
	}
	got := hex.EncodeToString(h.Sum(nil))
	check.That("sha256(1e6 x a)", got == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0", "got %s", got)

	// RFC 4231 test case 2.
	mac := hmac.New(sha256.New, []byte("Jefe"))
	mac.Write([]byte("what do ya want for nothing?"))
	sum := mac.Sum(nil)
	check.That("hmac-sha256 RFC 4231 #2", hex.EncodeToString(sum) == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843", "got %x", sum)
	check.That("hmac.Equal", hmac.Equal(sum, append([]byte(nil), sum...)) && !hmac.Equal(sum, sum[1:]), "equal wrong")

	// AES-256-GCM with a fixed key and nonce.
	key := sha256Sum([]byte("kiln aes key"))
	block, err := aes.NewCipher(key)
	if err != nil {
		check.Fail("aes.NewCipher", "%v", err)
		check.Done()
	}
	gcm, _ := cipher.NewGCM(block)
	nonce := make([]byte, gcm.NonceSize())
	for i := range nonce {
		nonce[i] = byte(i)
	}
	plain := []byte(strings.Repeat("sealed in a unikernel. ", 100))
	sealed := gcm.Seal(nil, nonce, plain, []byte("header"))
	check.Value("aes-gcm sha256(ciphertext)", "%x", sha256Sum(sealed))
	opened, err := gcm.Open(nil, nonce, sealed, []byte("header"))
	check.That("aes-gcm open", err == nil && bytes.Equal(opened, plain), "err %v", err)
	sealed[10] ^= 1
	_, err = gcm.Open(nil, nonce, sealed, []byte("header"))
	check.That("aes-gcm detects tampering", err != nil, "tampered ciphertext opened")

	// Ed25519 with a fixed seed: signatures are deterministic.
	seed := sha256Sum([]byte("kiln ed25519 seed"))
	priv := ed25519.NewKeyFromSeed(seed)
	pub := priv.Public().(ed25519.PublicKey)
	msg := []byte("the same bytes natively and in the VM")
	sig := ed25519.Sign(priv, msg)
	check.Value("ed25519 public key", "%x", []byte(pub))
	check.Value("ed25519 signature", "%x", sig)
	check.That("ed25519 verify", ed25519.Verify(pub, msg, sig), "valid signature rejected")
	msg[0] ^= 1
	check.That("ed25519 rejects altered message", !ed25519.Verify(pub, msg, sig), "altered message accepted")

	// RFC 8032 test 1: empty message.
	seed1, _ := hex.DecodeString("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
	sig1 := ed25519.Sign(ed25519.NewKeyFromSeed(seed1), nil)
	check.That("ed25519 RFC 8032 #1", hex.EncodeToString(sig1) ==
		"e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b", "got %x", sig1)
	check.Done()
}

func sha1Sum(b []byte) []byte   { s := sha1.Sum(b); return s[:] }
func sha256Sum(b []byte) []byte { s := sha256.Sum256(b); return s[:] }
func sha512Sum(b []byte) []byte { s := sha512.Sum512(b); return s[:] }
