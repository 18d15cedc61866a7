package node

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
)

// The PROXY protocol (HAProxy's proxy-protocol.txt, versions 1 and 2): a
// proxy in front of the node (HAProxy with send-proxy-v2) writes one header
// before the client's bytes saying who the client is. The accept path reads
// it only from peers in TrustedProxies and refuses it from anyone else, so a
// client cannot claim another address.

// proxyV2Sig opens every version 2 header.
var proxyV2Sig = []byte("\r\n\r\n\x00\r\nQUIT\n")

// maxProxyV1 is the longest version 1 header, CRLF included.
const maxProxyV1 = 107

// maxProxyV2 bounds a version 2 header's address and TLV block; HAProxy
// sends far less (a few TLVs at most).
const maxProxyV2 = 2048

var errProxyHeader = errors.New("malformed PROXY protocol header")

// proxyHeaderKind reports whether br starts with a PROXY header: 1 or 2 for
// the version, 0 for none. It waits for the bytes it needs (under the
// handshake deadline).
func proxyHeaderKind(br *bufio.Reader) (int, error) {
	b, err := br.Peek(1)
	if err != nil {
		return 0, err
	}
	switch b[0] {
	case 'P':
		b, err = br.Peek(6)
		if err != nil {
			return 0, err
		}
		if string(b) == "PROXY " {
			return 1, nil
		}
	case '\r':
		b, err = br.Peek(len(proxyV2Sig))
		if err != nil {
			return 0, err
		}
		if bytes.Equal(b, proxyV2Sig) {
			return 2, nil
		}
	}
	return 0, nil
}

// readProxyHeader consumes a PROXY header of the given version from br and
// returns the client's address, or an invalid Addr when the header names
// none (v1 UNKNOWN, v2 LOCAL such as a health check, or a non-IP family):
// then the peer itself is the client.
func readProxyHeader(br *bufio.Reader, version int) (netip.Addr, error) {
	if version == 1 {
		return readProxyV1(br)
	}
	return readProxyV2(br)
}

func readProxyV1(br *bufio.Reader) (netip.Addr, error) {
	var line []byte
	for i := 0; ; i++ {
		b, err := br.Peek(i + 1)
		if err != nil {
			return netip.Addr{}, err
		}
		if b[i] == '\n' {
			line = b
			break
		}
		if i+1 >= maxProxyV1 {
			return netip.Addr{}, fmt.Errorf("%w: v1 line too long", errProxyHeader)
		}
	}
	src, err := parseProxyV1(line)
	if err != nil {
		return netip.Addr{}, err
	}
	_, _ = br.Discard(len(line))
	return src, nil
}

// parseProxyV1 parses "PROXY TCP4 src dst sport dport\r\n" (or TCP6, or
// "PROXY UNKNOWN …\r\n").
func parseProxyV1(line []byte) (netip.Addr, error) {
	body, ok := bytes.CutSuffix(line, []byte("\r\n"))
	if !ok {
		return netip.Addr{}, fmt.Errorf("%w: v1 line must end in CRLF", errProxyHeader)
	}
	f := bytes.Split(body, []byte{' '})
	if len(f) >= 2 && string(f[1]) == "UNKNOWN" {
		return netip.Addr{}, nil
	}
	if len(f) != 6 || (string(f[1]) != "TCP4" && string(f[1]) != "TCP6") {
		return netip.Addr{}, fmt.Errorf("%w: v1 wants PROXY TCP4|TCP6 src dst sport dport", errProxyHeader)
	}
	src, err1 := netip.ParseAddr(string(f[2]))
	dst, err2 := netip.ParseAddr(string(f[3]))
	if err := errors.Join(err1, err2); err != nil {
		return netip.Addr{}, fmt.Errorf("%w: v1 address: %v", errProxyHeader, err)
	}
	if src.Is4() != (string(f[1]) == "TCP4") || dst.Is4() != src.Is4() || src.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("%w: v1 address family", errProxyHeader)
	}
	for _, p := range f[4:] {
		if _, err := strconv.ParseUint(string(p), 10, 16); err != nil || (len(p) > 1 && p[0] == '0') {
			return netip.Addr{}, fmt.Errorf("%w: v1 port %q", errProxyHeader, p)
		}
	}
	return src, nil
}

func readProxyV2(br *bufio.Reader) (netip.Addr, error) {
	hdr, err := br.Peek(16)
	if err != nil {
		return netip.Addr{}, err
	}
	n := int(binary.BigEndian.Uint16(hdr[14:16]))
	if n > maxProxyV2 || 16+n > br.Size() {
		return netip.Addr{}, fmt.Errorf("%w: v2 block of %d bytes", errProxyHeader, n)
	}
	all, err := br.Peek(16 + n)
	if err != nil {
		return netip.Addr{}, err
	}
	src, err := parseProxyV2(all)
	if err != nil {
		return netip.Addr{}, err
	}
	_, _ = br.Discard(len(all))
	return src, nil
}

// parseProxyV2 parses a whole version 2 header (signature, 4 bytes, block).
func parseProxyV2(b []byte) (netip.Addr, error) {
	if len(b) < 16 || !bytes.Equal(b[:12], proxyV2Sig) {
		return netip.Addr{}, fmt.Errorf("%w: v2 signature", errProxyHeader)
	}
	verCmd, fam := b[12], b[13]
	if verCmd>>4 != 2 {
		return netip.Addr{}, fmt.Errorf("%w: v2 version %d", errProxyHeader, verCmd>>4)
	}
	block := b[16:]
	if int(binary.BigEndian.Uint16(b[14:16])) != len(block) {
		return netip.Addr{}, fmt.Errorf("%w: v2 length", errProxyHeader)
	}
	switch verCmd & 0xf {
	case 0: // LOCAL: the proxy's own connection (a health check)
		return netip.Addr{}, nil
	case 1: // PROXY
	default:
		return netip.Addr{}, fmt.Errorf("%w: v2 command %d", errProxyHeader, verCmd&0xf)
	}
	switch fam {
	case 0x11, 0x12: // TCP or UDP over IPv4
		if len(block) < 12 {
			return netip.Addr{}, fmt.Errorf("%w: v2 IPv4 block too short", errProxyHeader)
		}
		return netip.AddrFrom4([4]byte(block[:4])), nil
	case 0x21, 0x22: // over IPv6
		if len(block) < 36 {
			return netip.Addr{}, fmt.Errorf("%w: v2 IPv6 block too short", errProxyHeader)
		}
		return netip.AddrFrom16([16]byte(block[:16])).Unmap(), nil
	}
	return netip.Addr{}, nil // UNSPEC or a unix socket: no IP to go by
}
