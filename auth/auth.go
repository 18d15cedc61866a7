// Package auth verifies the JSON Web Tokens clients present to a node
// (github.com/golang-jwt/jwt/v5) and turns them into an Identity: the user
// id, the display name, the rooms the user may join, and when the token
// expires.
//
// A Verifier is built once from a Config and is immutable afterwards: it is
// safe for concurrent use and starts no goroutines.
package auth

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/golang-jwt/jwt/v5"

	"parley/protocol"
)

// MaxUserLen is the longest user id (the token's sub claim) a node accepts.
const MaxUserLen = 128

// Config says which tokens a Verifier accepts. Set HS256Secret, or
// PublicKeys, or both.
type Config struct {
	// HS256Secret is the shared secret of HS256 tokens (nil: HS256 off).
	HS256Secret []byte
	// PublicKeys holds the RS256 and EdDSA verification keys: the contents
	// of a PEM file (one or more PUBLIC KEY blocks) or of a JWKS document
	// ({"keys":[…]}, RSA and Ed25519 keys; a token's kid picks its key).
	PublicKeys []byte
	// Issuer and Audience, when set, must match the token's iss and aud.
	Issuer, Audience string
	// Leeway tolerates clock skew on exp, nbf and iat (default 0).
	Leeway time.Duration
	// Now is the clock (nil: time.Now); tests set it.
	Now func() time.Time
}

// Identity is what a valid token says about its holder.
type Identity struct {
	// User is the user id (the sub claim): it travels with every message
	// the user sends, so other members can tell two "alice"s apart.
	User string
	// Name is the display name (the name claim, NFC-normalized; the user id
	// when absent).
	Name string
	// Rooms are the rooms (path.Match patterns such as "team-*") the user
	// may join; nil means every room.
	Rooms []string
	// Expires is when the token stops being valid.
	Expires time.Time
}

// MayJoin reports whether the identity may join room.
func (id *Identity) MayJoin(room string) bool {
	if id.Rooms == nil {
		return true
	}
	for _, p := range id.Rooms {
		if ok, _ := path.Match(p, room); ok {
			return true
		}
	}
	return false
}

// Errors returned by Verify, wrapped with the detail.
var (
	// ErrExpired: the token was valid but its exp has passed.
	ErrExpired = errors.New("token expired")
	// ErrInvalid: the token is malformed, forged, not yet valid, or its
	// claims are missing or wrong.
	ErrInvalid = errors.New("invalid token")
)

// Verifier checks tokens; see Config.
type Verifier struct {
	secret  []byte
	keys    []keyEntry
	parser  *jwt.Parser
	methods []string
}

type keyEntry struct {
	kid string
	key crypto.PublicKey
}

// claims are the token's claims Parley reads.
type claims struct {
	jwt.RegisteredClaims
	Name  string   `json:"name,omitempty"`
	Rooms []string `json:"rooms,omitempty"`
}

// New validates cfg and builds a Verifier.
func New(cfg Config) (*Verifier, error) {
	v := &Verifier{}
	if len(cfg.HS256Secret) > 0 {
		if len(cfg.HS256Secret) < 32 {
			return nil, errors.New("auth: HS256 secret must be at least 32 bytes")
		}
		v.secret = append([]byte(nil), cfg.HS256Secret...)
		v.methods = append(v.methods, "HS256")
	}
	if len(cfg.PublicKeys) > 0 {
		keys, err := parseKeys(cfg.PublicKeys)
		if err != nil {
			return nil, fmt.Errorf("auth: public keys: %w", err)
		}
		v.keys = keys
		v.methods = append(v.methods, "RS256", "EdDSA")
	}
	if len(v.methods) == 0 {
		return nil, errors.New("auth: no HS256 secret and no public keys")
	}
	if cfg.Leeway < 0 {
		return nil, errors.New("auth: leeway must not be negative")
	}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(v.methods),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(cfg.Leeway),
	}
	if cfg.Now != nil {
		opts = append(opts, jwt.WithTimeFunc(cfg.Now))
	}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	v.parser = jwt.NewParser(opts...)
	return v, nil
}

// Verify checks token's signature and claims and returns its identity. Its
// errors wrap ErrExpired or ErrInvalid, with a reason short enough for a
// close frame.
func (v *Verifier) Verify(token string) (*Identity, error) {
	var c claims
	_, err := v.parser.ParseWithClaims(token, &c, v.keyFor)
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return nil, ErrExpired
	case errors.Is(err, jwt.ErrTokenSignatureInvalid), errors.Is(err, jwt.ErrTokenUnverifiable):
		return nil, fmt.Errorf("%w: bad signature", ErrInvalid)
	case errors.Is(err, jwt.ErrTokenMalformed):
		return nil, fmt.Errorf("%w: malformed", ErrInvalid)
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return nil, fmt.Errorf("%w: no exp claim", ErrInvalid)
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return nil, fmt.Errorf("%w: not valid yet", ErrInvalid)
	case errors.Is(err, jwt.ErrTokenInvalidIssuer), errors.Is(err, jwt.ErrTokenInvalidAudience):
		return nil, fmt.Errorf("%w: wrong issuer or audience", ErrInvalid)
	case err != nil:
		return nil, fmt.Errorf("%w: rejected", ErrInvalid)
	}
	id := &Identity{User: c.Subject, Rooms: c.Rooms, Expires: c.ExpiresAt.Time}
	if id.User == "" || len(id.User) > MaxUserLen || !utf8.ValidString(id.User) || strings.ContainsFunc(id.User, isControl) {
		return nil, fmt.Errorf("%w: sub must be 1 to %d bytes without control characters", ErrInvalid, MaxUserLen)
	}
	name := c.Name
	if name == "" {
		name = id.User
	}
	if id.Name, err = protocol.NormalizeName(name); err != nil {
		return nil, fmt.Errorf("%w: name claim: %v", ErrInvalid, err)
	}
	for _, p := range id.Rooms {
		if _, err := path.Match(p, ""); err != nil {
			return nil, fmt.Errorf("%w: rooms claim: bad pattern", ErrInvalid)
		}
	}
	if c.Rooms != nil && len(c.Rooms) == 0 {
		id.Rooms = []string{} // an empty list allows no room at all
	}
	return id, nil
}

func isControl(r rune) bool { return r < 0x20 || r >= 0x7f && r < 0xa0 }

// keyFor picks the verification key(s) for a parsed (unverified) token.
func (v *Verifier) keyFor(t *jwt.Token) (any, error) {
	switch t.Method.Alg() {
	case "HS256":
		return v.secret, nil
	}
	kid, _ := t.Header["kid"].(string)
	var set jwt.VerificationKeySet
	for _, k := range v.keys {
		if kid != "" && k.kid != "" && k.kid != kid {
			continue
		}
		switch k.key.(type) {
		case *rsa.PublicKey:
			if t.Method.Alg() != "RS256" {
				continue
			}
		case ed25519.PublicKey:
			if t.Method.Alg() != "EdDSA" {
				continue
			}
		}
		set.Keys = append(set.Keys, k.key)
	}
	if len(set.Keys) == 0 {
		return nil, errors.New("no key for this token")
	}
	return set, nil
}

// parseKeys reads RSA and Ed25519 public keys from PEM or a JWKS document.
func parseKeys(b []byte) ([]keyEntry, error) {
	if s := strings.TrimSpace(string(b)); strings.HasPrefix(s, "{") {
		return parseJWKS([]byte(s))
	}
	var keys []keyEntry
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		var k any
		var err error
		switch blk.Type {
		case "PUBLIC KEY":
			k, err = x509.ParsePKIXPublicKey(blk.Bytes)
		case "RSA PUBLIC KEY":
			k, err = x509.ParsePKCS1PublicKey(blk.Bytes)
		default:
			return nil, fmt.Errorf("PEM block %q: want PUBLIC KEY", blk.Type)
		}
		if err != nil {
			return nil, fmt.Errorf("PEM block: %w", err)
		}
		if err := checkKey(k); err != nil {
			return nil, err
		}
		keys = append(keys, keyEntry{key: k})
	}
	if len(keys) == 0 {
		return nil, errors.New("no PEM public key and not a JWKS document")
	}
	return keys, nil
}

func checkKey(k any) error {
	switch k := k.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return fmt.Errorf("RSA key of %d bits: want at least 2048", k.N.BitLen())
		}
	case ed25519.PublicKey:
	default:
		return fmt.Errorf("key type %T: want RSA or Ed25519", k)
	}
	return nil
}

// parseJWKS reads the RSA and Ed25519 keys of a JWKS document; other key
// types are skipped.
func parseJWKS(b []byte) ([]keyEntry, error) {
	var doc struct {
		Keys []struct {
			Kty string `json:"kty"`
			Kid string `json:"kid"`
			Use string `json:"use"`
			N   string `json:"n"`
			E   string `json:"e"`
			Crv string `json:"crv"`
			X   string `json:"x"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("JWKS: %w", err)
	}
	var keys []keyEntry
	for i, j := range doc.Keys {
		if j.Use != "" && j.Use != "sig" {
			continue
		}
		var k any
		switch {
		case j.Kty == "RSA":
			n, err1 := base64.RawURLEncoding.DecodeString(j.N)
			e, err2 := base64.RawURLEncoding.DecodeString(j.E)
			if err := errors.Join(err1, err2); err != nil || len(e) == 0 || len(e) > 4 {
				return nil, fmt.Errorf("JWKS key %d: bad RSA n or e", i)
			}
			k = &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
		case j.Kty == "OKP" && j.Crv == "Ed25519":
			x, err := base64.RawURLEncoding.DecodeString(j.X)
			if err != nil || len(x) != ed25519.PublicKeySize {
				return nil, fmt.Errorf("JWKS key %d: bad Ed25519 x", i)
			}
			k = ed25519.PublicKey(x)
		default:
			continue
		}
		if err := checkKey(k); err != nil {
			return nil, fmt.Errorf("JWKS key %d: %w", i, err)
		}
		keys = append(keys, keyEntry{kid: j.Kid, key: k})
	}
	if len(keys) == 0 {
		return nil, errors.New("JWKS: no RSA or Ed25519 signing key")
	}
	return keys, nil
}

// LoadSecret reads an HS256 secret from a file (surrounding whitespace is
// trimmed), so that it never appears on a command line.
func LoadSecret(file string) ([]byte, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("auth: secret file: %w", err)
	}
	return []byte(strings.TrimSpace(string(b))), nil
}
