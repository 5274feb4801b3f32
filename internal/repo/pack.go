package repo

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/floe-backup/floe/internal/crypto"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/storage"
)

const (
	packMagic      = "FLOEPACK"
	packTrailerLen = 4 + len(packMagic)
	adPackHeader   = "floe v1 pack header"
	// maxHeaderLen bounds what a hostile pack can make us read: a 1 GiB pack
	// of 1 KiB blobs has a ~70 MiB header.
	maxHeaderLen = 128 << 20
)

// PackHeader is the decoded header of a pack.
type PackHeader struct {
	Ephemeral crypto.PublicKey
	Blobs     []PackedBlob
}

func encodePackHeader(h *PackHeader) []byte {
	b := make([]byte, 0, 40+len(h.Blobs)*50)
	b = append(b, 1)
	b = append(b, h.Ephemeral[:]...)
	return appendBlobList(b, h.Blobs)
}

// DecodePackHeader decodes a pack header's plaintext and checks that the
// blobs lie in order, without overlap, inside a body of bodyLen bytes.
func DecodePackHeader(plain []byte, bodyLen int64) (*PackHeader, error) {
	d := &decoder{b: plain}
	if v := d.byte(); d.err == nil && v != 1 {
		return nil, fmt.Errorf("pack header version %d not supported", v)
	}
	h := &PackHeader{}
	copy(h.Ephemeral[:], d.bytes(32))
	h.Blobs = d.blobList()
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%d bytes of trailing garbage", len(d.b))
	}
	if d.err != nil {
		return nil, fmt.Errorf("decode pack header: %w", d.err)
	}
	var end int64
	for i, b := range h.Blobs {
		if int64(b.Offset) != end {
			return nil, fmt.Errorf("decode pack header: blob %d at offset %d, expected %d", i, b.Offset, end)
		}
		end += int64(b.Length)
	}
	if end != bodyLen {
		return nil, fmt.Errorf("decode pack header: blobs cover %d bytes, pack body has %d", end, bodyLen)
	}
	return h, nil
}

// LoadPackHeader reads and verifies the header of a pack of the given size.
func (r *Repository) LoadPackHeader(ctx context.Context, id hash.ID, size int64) (*PackHeader, error) {
	h := storage.Handle{Type: storage.Pack, Name: id.String()}
	if size < int64(packTrailerLen+crypto.Overhead) {
		return nil, fmt.Errorf("pack %s: %d bytes is too short for a pack", id.Short(), size)
	}
	trailer, err := r.be.Load(ctx, h, size-int64(packTrailerLen), int64(packTrailerLen))
	if err != nil {
		return nil, fmt.Errorf("pack %s: %w", id.Short(), err)
	}
	if string(trailer[4:]) != packMagic {
		return nil, fmt.Errorf("pack %s: not a floe pack (bad trailer)", id.Short())
	}
	hdrLen := int64(binary.LittleEndian.Uint32(trailer[:4]))
	if hdrLen < crypto.Overhead || hdrLen > maxHeaderLen || hdrLen > size-int64(packTrailerLen) {
		return nil, fmt.Errorf("pack %s: header length %d is impossible for a %d-byte pack", id.Short(), hdrLen, size)
	}
	env, err := r.be.Load(ctx, h, size-int64(packTrailerLen)-hdrLen, hdrLen)
	if err != nil {
		return nil, fmt.Errorf("pack %s: %w", id.Short(), err)
	}
	plain, err := r.meta.Open(nil, env, []byte(adPackHeader))
	if err != nil {
		return nil, fmt.Errorf("pack %s header: %w", id.Short(), err)
	}
	hdr, err := DecodePackHeader(plain, size-int64(packTrailerLen)-hdrLen)
	if err != nil {
		return nil, fmt.Errorf("pack %s: %w", id.Short(), err)
	}
	return hdr, nil
}

// packAEAD returns the AEAD that opens blobs of pack, deriving the pack's
// data key from its ephemeral public key once.
func (r *Repository) packAEAD(pack hash.ID, ephemeral *crypto.PublicKey) (*crypto.AEAD, error) {
	if r.secrets.DataPrivate == nil {
		return nil, ErrWriteOnly
	}
	r.packKeysMu.Lock()
	a, ok := r.packKeys[pack]
	r.packKeysMu.Unlock()
	if ok {
		return a, nil
	}
	var eph crypto.PublicKey
	if ephemeral != nil {
		eph = *ephemeral
	} else if eph, ok = r.idx.ephemeral(pack); !ok {
		return nil, fmt.Errorf("pack %s is not in the index", pack.Short())
	}
	key, err := crypto.Unseal(*r.secrets.DataPrivate, r.secrets.DataPublic, eph)
	if err != nil {
		return nil, fmt.Errorf("pack %s: %w", pack.Short(), err)
	}
	a = crypto.NewAEAD(key)
	r.packKeysMu.Lock()
	if len(r.packKeys) > 4096 {
		r.packKeys = map[hash.ID]*crypto.AEAD{}
	}
	r.packKeys[pack] = a
	r.packKeysMu.Unlock()
	return a, nil
}

func blobAD(h BlobHandle) []byte {
	ad := make([]byte, 0, 12+1+32)
	ad = append(ad, "floe v1 blob"...)
	ad = append(ad, byte(h.Type))
	return append(ad, h.ID[:]...)
}

// ErrBlobNotFound means a blob is not in the index.
var ErrBlobNotFound = errors.New("blob not in index")
