package auth

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

var secret = []byte("0123456789abcdef0123456789abcdef")

func sign(t *testing.T, method jwt.SigningMethod, key any, claims jwt.MapClaims, kid string) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func claimsFor(sub string, exp time.Duration, extra map[string]any) jwt.MapClaims {
	c := jwt.MapClaims{"sub": sub, "exp": time.Now().Add(exp).Unix()}
	for k, v := range extra {
		c[k] = v
	}
	return c
}

func TestHS256(t *testing.T) {
	v, err := New(Config{HS256Secret: secret})
	if err != nil {
		t.Fatal(err)
	}
	ok := sign(t, jwt.SigningMethodHS256, secret, claimsFor("u1", time.Hour, map[string]any{"name": "Zoe\u0308", "rooms": []string{"team-*", "lobby"}}), "")
	id, err := v.Verify(ok)
	if err != nil {
		t.Fatalf("valid token: %v", err)
	}
	if id.User != "u1" || id.Name != "Zoë" || !id.MayJoin("team-a") || !id.MayJoin("lobby") || id.MayJoin("other") {
		t.Fatalf("identity %+v", id)
	}
	for _, tc := range []struct {
		name  string
		token string
		want  error
	}{
		{"forged", sign(t, jwt.SigningMethodHS256, []byte("another secret, 32 bytes long!!!"), claimsFor("u1", time.Hour, nil), ""), ErrInvalid},
		{"expired", sign(t, jwt.SigningMethodHS256, secret, claimsFor("u1", -time.Minute, nil), ""), ErrExpired},
		{"no exp", sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"sub": "u1"}, ""), ErrInvalid},
		{"no sub", sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"exp": time.Now().Add(time.Hour).Unix()}, ""), ErrInvalid},
		{"not yet valid", sign(t, jwt.SigningMethodHS256, secret, claimsFor("u1", time.Hour, map[string]any{"nbf": time.Now().Add(time.Hour).Unix()}), ""), ErrInvalid},
		{"bad name claim", sign(t, jwt.SigningMethodHS256, secret, claimsFor("u1", time.Hour, map[string]any{"name": "al\u202eice"}), ""), ErrInvalid},
		{"alg none", sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, claimsFor("u1", time.Hour, nil), ""), ErrInvalid},
		{"tampered payload", tamper(ok), ErrInvalid},
		{"garbage", "not.a.token", ErrInvalid},
	} {
		if _, err := v.Verify(tc.token); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	empty := sign(t, jwt.SigningMethodHS256, secret, claimsFor("u1", time.Hour, map[string]any{"rooms": []string{}}), "")
	if id, err := v.Verify(empty); err != nil || id.MayJoin("lobby") {
		t.Errorf("rooms: [] must allow no room: %+v %v", id, err)
	}
}

// tamper swaps the payload for one naming another user.
func tamper(tok string) string {
	p := strings.Split(tok, ".")
	b, _ := json.Marshal(map[string]any{"sub": "admin", "exp": time.Now().Add(time.Hour).Unix()})
	p[1] = base64.RawURLEncoding.EncodeToString(b)
	return strings.Join(p, ".")
}

func TestShortSecretRefused(t *testing.T) {
	if _, err := New(Config{HS256Secret: []byte("short")}); err == nil {
		t.Fatal("a 5-byte HS256 secret was accepted")
	}
	if _, err := New(Config{}); err == nil {
		t.Fatal("a verifier without keys was accepted")
	}
}

func TestPublicKeys(t *testing.T) {
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	epub, epriv, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&rk.PublicKey)
	pemKeys := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	eder, _ := x509.MarshalPKIXPublicKey(epub)
	pemKeys = append(pemKeys, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: eder})...)
	jwks, _ := json.Marshal(map[string]any{"keys": []map[string]string{
		{"kty": "RSA", "kid": "r1", "n": base64.RawURLEncoding.EncodeToString(rk.N.Bytes()), "e": "AQAB"},
		{"kty": "OKP", "crv": "Ed25519", "kid": "e1", "x": base64.RawURLEncoding.EncodeToString(epub)},
		{"kty": "EC", "kid": "skipped"},
	}})
	for name, keys := range map[string][]byte{"PEM": pemKeys, "JWKS": jwks} {
		v, err := New(Config{PublicKeys: keys, Issuer: "https://id.example", Audience: "parley"})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		std := map[string]any{"iss": "https://id.example", "aud": "parley"}
		if _, err := v.Verify(sign(t, jwt.SigningMethodRS256, rk, claimsFor("u1", time.Hour, std), "r1")); err != nil {
			t.Errorf("%s RS256: %v", name, err)
		}
		if _, err := v.Verify(sign(t, jwt.SigningMethodEdDSA, epriv, claimsFor("u2", time.Hour, std), "e1")); err != nil {
			t.Errorf("%s EdDSA: %v", name, err)
		}
		// Algorithm confusion: HS256 "signed" with the public key's bytes.
		if _, err := v.Verify(sign(t, jwt.SigningMethodHS256, der, claimsFor("u1", time.Hour, std), "")); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s HS256 with the public key as secret: %v, want invalid", name, err)
		}
		_, other, _ := ed25519.GenerateKey(rand.Reader)
		if _, err := v.Verify(sign(t, jwt.SigningMethodEdDSA, other, claimsFor("u2", time.Hour, std), "")); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s EdDSA by another key: %v, want invalid", name, err)
		}
		if _, err := v.Verify(sign(t, jwt.SigningMethodEdDSA, epriv, claimsFor("u2", time.Hour, map[string]any{"iss": "https://evil.example", "aud": "parley"}), "")); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s wrong issuer: %v, want invalid", name, err)
		}
	}
}
