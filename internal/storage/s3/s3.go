// Package s3 stores a repository in a bucket of an S3-compatible object
// store (AWS S3, MinIO, Ceph RGW, versitygw, ...), under an optional key
// prefix, laid out like the local backend (docs/FORMAT.md "Layout"):
//
//	PREFIX/config
//	PREFIX/keys/<id>
//	PREFIX/data/<first 2 hex>/<id>
//	PREFIX/index/<id>
//	PREFIX/snapshots/<id>
//	PREFIX/gc/<id>
//
// so that a repository can be moved between a directory and a bucket with
// any sync tool.
//
// Immutability: every write is a conditional write (If-None-Match: *), so a
// Save of an existing name fails with storage.ErrExist even when two writers
// race. A server that answers such a write with 501 Not Implemented is
// remembered, and from then on Save asks (HEAD) before writing: two writers
// racing on one name can then both succeed, the second overwriting the
// first. Every name but config is the hash of the object's bytes, so both
// wrote the same bytes and nothing is lost; config is written once by init,
// which checks for it first, so only two inits at the same instant on the
// same location race. A server that silently ignores If-None-Match behaves
// the same way. A conditional write that minio-go retried after its answer
// was lost meets its own object: a token in the object's metadata tells
// that from another writer's object (see put).
//
// Atomicity: a PUT is atomic, and a multipart upload is invisible until it
// is completed, so an interrupted upload leaves nothing under a final name.
// Failed multipart uploads are aborted; one left by a killed process is
// reported by LeftoverTempFiles (check) and aborted by RemoveTempFiles
// (prune) once older than the grace period.
//
// Retries: minio-go retries each request up to 10 times with exponential
// backoff on connection errors and on 408, 429, 500, 502, 503, 504 and the
// S3 codes for throttling and internal errors, for every request whose body
// can be re-read (all of ours). It does not retry a response body that
// breaks off (a connection reset in the middle of a GET or of a listing):
// Load and List resume those themselves, see retry.go.
package s3

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"os"
	"path"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/s3utils"

	"github.com/floe-backup/floe/internal/idle"
	"github.com/floe-backup/floe/internal/storage"
)

// Lookup says how the bucket is addressed.
type Lookup int

const (
	// LookupAuto uses virtual-host style where the endpoint is known to
	// support it (AWS, Google, Aliyun, ...) and path style elsewhere.
	LookupAuto Lookup = iota
	// LookupPath puts the bucket in the path: https://host/bucket/key.
	LookupPath
	// LookupVirtualHost puts the bucket in the host: https://bucket.host/key.
	LookupVirtualHost
)

// Config says where the repository is and how to reach it.
type Config struct {
	Endpoint string // host or host:port
	Secure   bool   // https (else http)
	Bucket   string
	Prefix   string // key prefix without leading or trailing slash; may be empty
	Region   string // empty: asked from the server (GetBucketLocation) or us-east-1
	Lookup   Lookup

	// Creds are the credentials; nil means the usual chain: the environment
	// (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN), then
	// the AWS shared files (~/.aws/credentials and ~/.aws/config, profile
	// AWS_PROFILE or "default"), then an EC2/ECS instance role unless
	// AWS_EC2_METADATA_DISABLED=true. See DefaultCredentials.
	Creds *credentials.Credentials

	// Transport replaces the HTTP transport (tests inject faults with it).
	Transport http.RoundTripper

	// IdleTimeout is how long the server may send nothing of an answer
	// (or take nothing of an upload) before the request is given up on
	// and retried; minio's transport bounds only the wait for headers,
	// and a stalled body would hang a command for good. 0 means
	// DefaultIdleTimeout.
	IdleTimeout time.Duration

	// PartSize is the size of a multipart upload's parts; objects up to
	// this size are sent in one PUT. 0 means DefaultPartSize.
	PartSize int64
}

// DefaultIdleTimeout is the default of Config.IdleTimeout.
const DefaultIdleTimeout = 5 * time.Minute

// DefaultPartSize is the part size of multipart uploads. Objects up to this
// size (every pack of the default 16 MiB target but the rare one that ends
// with a large blob) are one PUT: one request instead of three or more.
const DefaultPartSize = 32 << 20

// minPartSize is S3's smallest part (all but the last).
const minPartSize = 5 << 20

// uploadThreads is how many parts of one object are sent at once.
const uploadThreads = 4

// UploadMaxAge is the age after which LeftoverTempFiles reports an
// incomplete multipart upload: no upload of a pack takes that long, so an
// older one was left by a writer that was killed.
const UploadMaxAge = time.Hour

// DefaultCredentials returns the credential chain of Config.Creds.
func DefaultCredentials() *credentials.Credentials {
	providers := []credentials.Provider{
		&credentials.EnvAWS{},
		&credentials.FileAWSCredentials{},
	}
	// The instance metadata service is asked last, and only where the AWS
	// tools would ask it too: off a cloud machine it is not there and a
	// request to it only costs time.
	if v := strings.ToLower(os.Getenv("AWS_EC2_METADATA_DISABLED")); v != "true" && v != "1" {
		providers = append(providers, &credentials.IAM{})
	}
	return credentials.NewChainCredentials(providers)
}

// Backend is a repository in an S3 bucket. It is safe for concurrent use.
type Backend struct {
	cfg      Config
	client   *minio.Client
	core     *minio.Core
	tr       *http.Transport // ours, closed by Close; nil with Config.Transport
	loc      string
	partSize int64
	// noConditional is set once the server refused a conditional write
	// (501): Save then asks before it writes (see the package comment).
	noConditional atomic.Bool
	// checksums is set once the server answered a PUT with the CRC32C it
	// was sent (x-amz-checksum-crc32c): it knows the header, so the
	// payload need not be signed as well (see putSingle).
	checksums atomic.Bool
	// noChecksum: the endpoint is Google Cloud Storage, whose XML API
	// minio-go never sends an S3 checksum to; PUTs go as minio-go sends
	// them by default.
	noChecksum bool
}

var (
	_ storage.Backend         = (*Backend)(nil)
	_ storage.StreamSaver     = (*Backend)(nil)
	_ storage.TempFiles       = (*Backend)(nil)
	_ storage.ConnectionsHint = (*Backend)(nil)
	_ storage.ParallelSaver   = (*Backend)(nil)
)

// Connections implements storage.ConnectionsHint: an object store serves
// many requests at once, and each waits a round trip, so copy and export
// run 8 at a time by default (else 4).
func (b *Backend) Connections() int { return 8 }

// parallelSaves is how many packs a backup uploads at once.
const parallelSaves = 4

// ParallelSaves implements storage.ParallelSaver: a backup uploads up to
// 4 packs at once, each from its own spool file (no memory per pack).
// With one upload at a time the workers that fill packs waited for it:
// on versitygw on loopback they spent 2.9 s blocked in a 2 GiB backup
// (measured on 2 cores), and a far object store waits a round trip or
// more per request, which one connection at a time leaves unused.
func (b *Backend) ParallelSaves() int { return parallelSaves }

// URL returns the location of cfg as the user writes it:
// s3:https://host[:port]/bucket[/prefix]. It never holds credentials.
func (cfg Config) URL() string {
	scheme := "http"
	if cfg.Secure {
		scheme = "https"
	}
	s := "s3:" + scheme + "://" + cfg.Endpoint + "/" + cfg.Bucket
	if cfg.Prefix != "" {
		s += "/" + cfg.Prefix
	}
	return s
}

func newBackend(cfg Config) (*Backend, error) {
	if cfg.Endpoint == "" || cfg.Bucket == "" {
		return nil, fmt.Errorf("s3: endpoint and bucket are required")
	}
	cfg.Prefix = strings.Trim(cfg.Prefix, "/")
	b := &Backend{cfg: cfg, loc: cfg.URL(), partSize: cfg.PartSize}
	if b.partSize == 0 {
		b.partSize = DefaultPartSize
	}
	if b.partSize < minPartSize {
		return nil, fmt.Errorf("s3: part size %d is below S3's minimum of %d", b.partSize, minPartSize)
	}
	creds := cfg.Creds
	if creds == nil {
		creds = DefaultCredentials()
	}
	tr := cfg.Transport
	if tr == nil {
		t, err := minio.DefaultTransport(cfg.Secure)
		if err != nil {
			return nil, fmt.Errorf("s3 %s: %w", b.loc, err)
		}
		b.tr = t
		tr = t
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	tr = idle.Transport{Base: tr, Timeout: cfg.IdleTimeout}
	lookup := minio.BucketLookupAuto
	switch cfg.Lookup {
	case LookupPath:
		lookup = minio.BucketLookupPath
	case LookupVirtualHost:
		lookup = minio.BucketLookupDNS
	}
	client, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds:        creds,
		Secure:       cfg.Secure,
		Transport:    tr,
		Region:       cfg.Region,
		BucketLookup: lookup,
	})
	if err != nil {
		return nil, fmt.Errorf("s3 %s: %w", b.loc, err)
	}
	b.client = client
	b.noChecksum = s3utils.IsGoogleEndpoint(*client.EndpointURL())
	b.core = &minio.Core{Client: client}
	return b, nil
}

// Open returns the backend of the existing repository cfg names. A missing
// bucket or config object is an error that wraps storage.ErrNotExist.
func Open(ctx context.Context, cfg Config) (*Backend, error) {
	b, err := newBackend(cfg)
	if err != nil {
		return nil, err
	}
	// The config object alone, so that credentials limited to the
	// repository's objects (no s3:ListBucket on the bucket) suffice.
	_, err = b.stat(ctx, b.key(storage.Handle{Type: storage.Config}))
	if err == nil {
		return b, nil
	}
	b.Close()
	if !storage.IsNotExist(err) {
		return nil, fmt.Errorf("open repository at %s: %w", b.loc, err)
	}
	// A HEAD answer has no body to tell a missing bucket from a missing
	// object: ask.
	if ok, berr := b.client.BucketExists(ctx, cfg.Bucket); berr == nil && !ok {
		return nil, fmt.Errorf("no repository at %s: bucket %q does not exist: %w", b.loc, cfg.Bucket, storage.ErrNotExist)
	}
	return nil, fmt.Errorf("no repository at %s: no config object: %w", b.loc, storage.ErrNotExist)
}

// Create returns the backend of a new repository at cfg, creating the
// bucket if it does not exist. It fails with a wrapped storage.ErrExist if
// a config object is already there. The caller then saves the config.
func Create(ctx context.Context, cfg Config) (*Backend, error) {
	b, err := newBackend(cfg)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*Backend, error) {
		b.Close()
		return nil, fmt.Errorf("create repository at %s: %w", b.loc, err)
	}
	ok, err := b.client.BucketExists(ctx, cfg.Bucket)
	switch {
	case isAccessDenied(err):
		// Credentials for the repository's objects only: the bucket
		// exists, or saving the config says it does not.
		ok, err = true, nil
	case err != nil:
		return fail(b.explain(err))
	}
	if !ok {
		err := b.client.MakeBucket(ctx, cfg.Bucket, minio.MakeBucketOptions{Region: cfg.Region})
		if code := minio.ToErrorResponse(err).Code; code == "BucketAlreadyOwnedByYou" {
			err = nil // made meanwhile by another init
		}
		if err != nil {
			return fail(fmt.Errorf("bucket %q does not exist and could not be made: %w", cfg.Bucket, b.explain(err)))
		}
	}
	_, err = b.Stat(ctx, storage.Handle{Type: storage.Config})
	switch {
	case err == nil:
		return fail(fmt.Errorf("a repository (config object) already exists there: %w", storage.ErrExist))
	case !storage.IsNotExist(err):
		return fail(err)
	}
	return b, nil
}

// Location implements storage.Backend.
func (b *Backend) Location() string { return b.loc }

// Close implements storage.Backend: it closes idle connections.
func (b *Backend) Close() error {
	if b.tr != nil {
		b.tr.CloseIdleConnections()
	}
	return nil
}

// key returns the object key of a validated handle.
func (b *Backend) key(h storage.Handle) string {
	var k string
	switch h.Type {
	case storage.Config:
		k = "config"
	case storage.Pack:
		k = string(storage.Pack) + "/" + h.Name[:2] + "/" + h.Name
	default:
		k = string(h.Type) + "/" + h.Name
	}
	return b.prefixed(k)
}

func (b *Backend) prefixed(k string) string {
	if b.cfg.Prefix == "" {
		return k
	}
	return b.cfg.Prefix + "/" + k
}

// isNotFound reports whether err is S3's answer for a missing object.
func isNotFound(err error) bool {
	r := minio.ToErrorResponse(err)
	return r.StatusCode == http.StatusNotFound || r.Code == "NoSuchKey" || r.Code == "NotFound"
}

func isAccessDenied(err error) bool {
	if err == nil {
		return false
	}
	r := minio.ToErrorResponse(err)
	return r.Code == "AccessDenied" || r.StatusCode == http.StatusForbidden
}

// explain maps S3 errors to the storage errors and adds a hint where the
// usual cause is known. Credentials are never part of the message: minio
// errors carry the server's code and message only.
func (b *Backend) explain(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	r := minio.ToErrorResponse(err)
	switch {
	case r.Code == "NoSuchBucket":
		return fmt.Errorf("bucket %q does not exist: %w", b.cfg.Bucket, storage.ErrNotExist)
	case isNotFound(err):
		return storage.ErrNotExist
	case r.Code == "RequestTimeTooSkewed":
		return fmt.Errorf("%w (this machine's clock is off: S3 signatures allow 15 minutes)", err)
	case r.Code == "InvalidAccessKeyId" || r.Code == "SignatureDoesNotMatch" || isAccessDenied(err):
		return fmt.Errorf("%w (check the credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE and ~/.aws/credentials)", err)
	case r.Code == "PermanentRedirect" || r.Code == "AuthorizationHeaderMalformed" || r.Code == "IllegalLocationConstraintException":
		return fmt.Errorf("%w (the bucket may be in another region: set AWS_REGION)", err)
	}
	return err
}

// Save implements storage.Backend.
func (b *Backend) Save(ctx context.Context, h storage.Handle, data []byte) error {
	if err := h.Validate(); err != nil {
		return fmt.Errorf("save %s: %w", h, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("save %s: %w", h, err)
	}
	if err := b.put(ctx, b.key(h), bytes.NewReader(data), int64(len(data)), crc32.Checksum(data, castagnoli)); err != nil {
		return fmt.Errorf("save %s: %w", h, err)
	}
	return nil
}

// put stores size bytes of r under key without overwriting: in one PUT up
// to the part size, else as a multipart upload. It reads r with ReadAt
// only, so parts can be read in parallel and re-read by retries. crc is
// the CRC32C (Castagnoli) of the size bytes, which a single PUT sends for
// the server to check (see putSingle).
//
// Each write carries a random token as user metadata (x-amz-meta-floe-write).
// When minio-go retries a conditional write whose first attempt was stored
// but whose answer was lost, the retry is refused (412) because of our own
// object; the token tells that case from an object another writer saved,
// so that only the latter is ErrExist.
func (b *Backend) put(ctx context.Context, key string, r io.ReaderAt, size int64, crc uint32) error {
	token := writeToken()
	for {
		conditional := !b.noConditional.Load()
		if !conditional {
			// The server cannot refuse an overwrite: ask first.
			_, err := b.core.StatObject(ctx, b.cfg.Bucket, key, minio.StatObjectOptions{})
			if err == nil {
				return storage.ErrExist
			}
			if !isNotFound(err) {
				return b.explain(err)
			}
		}
		var err error
		if size <= b.partSize {
			err = b.putSingle(ctx, key, io.NewSectionReader(r, 0, size), size, crc, conditional, token)
		} else {
			err = b.putMultipart(ctx, key, r, size, conditional, token)
		}
		if conditional && notImplemented(err) {
			b.noConditional.Store(true)
			continue
		}
		if conditional && err != nil && minio.ToErrorResponse(err).StatusCode == 0 && ctx.Err() == nil {
			// No answer, only a broken connection: a server that
			// refuses a conditional write as soon as it has the headers
			// (412, the name exists) may close the connection while
			// the body is still being sent, and the client then sees
			// the reset, not the 412 (versitygw, with unsigned
			// payloads). Whether the name exists says which it was.
			if _, serr := b.core.StatObject(ctx, b.cfg.Bucket, key, minio.StatObjectOptions{}); serr == nil {
				err = storage.ErrExist
			}
		}
		if errors.Is(err, storage.ErrExist) && b.writtenBy(ctx, key, token) {
			return nil
		}
		return err
	}
}

// writeMeta is the user metadata key of the write token.
const writeMeta = "Floe-Write"

func writeToken() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// writtenBy reports whether the object at key was stored by the write
// with this token.
func (b *Backend) writtenBy(ctx context.Context, key, token string) bool {
	oi, err := b.core.StatObject(ctx, b.cfg.Bucket, key, minio.StatObjectOptions{})
	if err != nil {
		return false
	}
	return oi.UserMetadata[writeMeta] == token || oi.Metadata.Get("X-Amz-Meta-"+writeMeta) == token
}

// putOpts are the options of a write: the token, and If-None-Match: * if
// conditional.
func putOpts(conditional bool, token string) minio.PutObjectOptions {
	var opts minio.PutObjectOptions
	if token != "" {
		opts.UserMetadata = map[string]string{writeMeta: token}
	}
	if conditional {
		opts.SetMatchETagExcept("*") // If-None-Match: *
	}
	return opts
}

// notImplemented reports whether the server refused the conditional write.
func notImplemented(err error) bool {
	r := minio.ToErrorResponse(err)
	return r.StatusCode == http.StatusNotImplemented || r.Code == "NotImplemented"
}

// putError maps the answer to a conditional write.
func (b *Backend) putError(err error) error {
	r := minio.ToErrorResponse(err)
	if r.StatusCode == http.StatusPreconditionFailed || r.Code == "PreconditionFailed" {
		return storage.ErrExist
	}
	return b.explain(err)
}

// castagnoli is the CRC32C table: S3's x-amz-checksum-crc32c, computed
// with the CPU's CRC instruction (SSE 4.2, ARMv8) at memory speed.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// crcMeta is the header of a CRC32C that S3 checks against the payload.
const crcMeta = "X-Amz-Checksum-Crc32c"

// putSingle stores an object in one PUT with its CRC32C in the
// x-amz-checksum-crc32c header (not to Google Cloud Storage, see
// noChecksum), which the servers that know it (AWS, MinIO, versitygw,
// recent Ceph RGW) check against the payload, refusing (BadDigest) a
// payload damaged on its way. A server that does not know it ignores
// it and does not answer with it, so its payloads stay signed.
//
// Over plain http, minio-go also signs the payload by default (a
// streaming signature: a SHA-256 of every 64 KiB chunk on the client,
// again on the server), which makes S3 refuse a damaged payload too,
// at a cost measured at 7% of a large backup's client CPU and 15% of
// versitygw's. Once the server has answered a PUT with the checksum it
// was sent, so that it is known to handle the header, the payload goes
// unsigned (UNSIGNED-PAYLOAD, which is what minio-go sends over https,
// where TLS protects the payload) and the CRC32C alone catches damage.
// The signature guarded against no attacker that matters: the answers
// are not signed, so a man in the middle of plain http can as well
// drop a PUT and answer "200 OK"; and a pack's blobs are authenticated
// by their AEAD and its name is the BLAKE3 of its bytes, which check
// --read-data verifies. restic sends a Content-MD5 and the signed
// payload, an MD5 and a SHA-256 of every byte.
func (b *Backend) putSingle(ctx context.Context, key string, r io.Reader, size int64, crc uint32, conditional bool, token string) error {
	opts := putOpts(conditional, token)
	sum := ""
	if !b.noChecksum {
		sum = crcString(crc)
		if opts.UserMetadata == nil {
			opts.UserMetadata = map[string]string{}
		}
		opts.UserMetadata[crcMeta] = sum
	}
	checked := b.checksums.Load()
	opts.DisableContentSha256 = checked
	err := retryConflict(ctx, func() error {
		info, err := b.core.PutObject(ctx, b.cfg.Bucket, key, r, size, "", "", opts)
		if err == nil && !checked && sum != "" && info.ChecksumCRC32C == sum {
			b.checksums.Store(true)
		}
		return err
	})
	if err != nil && !notImplemented(err) {
		return b.putError(err)
	}
	return err
}

// crcString is a CRC32C as S3 writes it: the 4 bytes, big-endian, base64.
func crcString(crc uint32) string {
	return base64.StdEncoding.EncodeToString(binary.BigEndian.AppendUint32(nil, crc))
}

// Stat implements storage.Backend.
func (b *Backend) Stat(ctx context.Context, h storage.Handle) (storage.FileInfo, error) {
	if err := h.Validate(); err != nil {
		return storage.FileInfo{}, fmt.Errorf("stat %s: %w", h, err)
	}
	if err := ctx.Err(); err != nil {
		return storage.FileInfo{}, fmt.Errorf("stat %s: %w", h, err)
	}
	size, err := b.stat(ctx, b.key(h))
	if err != nil {
		return storage.FileInfo{}, fmt.Errorf("stat %s: %w", h, err)
	}
	return storage.FileInfo{Name: h.Name, Size: size}, nil
}

func (b *Backend) stat(ctx context.Context, key string) (int64, error) {
	oi, err := b.core.StatObject(ctx, b.cfg.Bucket, key, minio.StatObjectOptions{})
	if err != nil {
		return 0, b.explain(err)
	}
	return oi.Size, nil
}

// Remove implements storage.Backend. S3's DELETE succeeds whether or not
// the object exists, so Remove asks first to report a missing object; an
// object removed by someone else between the two is reported removed.
func (b *Backend) Remove(ctx context.Context, h storage.Handle) error {
	if err := h.Validate(); err != nil {
		return fmt.Errorf("remove %s: %w", h, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("remove %s: %w", h, err)
	}
	key := b.key(h)
	if _, err := b.stat(ctx, key); err != nil {
		return fmt.Errorf("remove %s: %w", h, err)
	}
	if err := b.client.RemoveObject(ctx, b.cfg.Bucket, key, minio.RemoveObjectOptions{}); err != nil {
		return fmt.Errorf("remove %s: %w", h, b.explain(err))
	}
	return nil
}

// List implements storage.Backend. Keys that are not valid object names
// of the layout (strays, packs in the wrong data/ subdirectory, "folders")
// are skipped.
func (b *Backend) List(ctx context.Context, t storage.FileType, fn func(storage.FileInfo) error) error {
	if err := storage.ValidateListType(t); err != nil {
		return fmt.Errorf("list %s: %w", t, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("list %s: %w", t, err)
	}
	top := b.prefixed(string(t)) + "/"
	err := b.listKeys(ctx, top, t == storage.Pack, func(key string, size int64) error {
		rel := strings.TrimPrefix(key, top)
		name := path.Base(rel)
		if t == storage.Pack {
			if len(rel) != 3+storage.NameLen || rel[2] != '/' || rel[:2] != name[:min(2, len(name))] {
				return nil
			}
		} else if rel != name {
			return nil
		}
		// a size below zero is no object's: a hostile or broken server's
		// listing, which must not reach callers that add sizes up or
		// allocate by them (the floe server's client skips them too)
		if (storage.Handle{Type: t, Name: name}).Validate() != nil || size < 0 {
			return nil
		}
		return fn(storage.FileInfo{Name: name, Size: size})
	})
	if err != nil {
		return fmt.Errorf("list %s: %w", t, err)
	}
	return nil
}

// Load implements storage.Backend: one ranged GET (plus a HEAD in the rare
// cases that a range alone cannot settle).
func (b *Backend) Load(ctx context.Context, h storage.Handle, offset, length int64) ([]byte, error) {
	if err := h.Validate(); err != nil {
		return nil, fmt.Errorf("load %s: %w", h, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("load %s: %w", h, err)
	}
	data, err := b.load(ctx, b.key(h), offset, length)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", h, err)
	}
	return data, nil
}

// maxObjectSize is S3's largest object; a range beyond it cannot be
// satisfied, and is settled with a HEAD instead of a GET.
const maxObjectSize = 5 << 40

func (b *Backend) load(ctx context.Context, key string, offset, length int64) ([]byte, error) {
	if offset < 0 || length < 0 || offset > maxObjectSize || length > maxObjectSize {
		// CheckRange gives the right error; a missing object comes first.
		size, err := b.stat(ctx, key)
		if err != nil {
			return nil, err
		}
		_, err = storage.CheckRange(offset, length, size)
		if err == nil {
			err = fmt.Errorf("range %d+%d past S3's largest object: %w", offset, length, io.ErrUnexpectedEOF)
		}
		return nil, err
	}
	data, err := b.getRange(ctx, key, offset, length)
	if errors.Is(err, errRangeNotSatisfiable) {
		// offset at or past the end (or anything of an empty object)
		size, serr := b.stat(ctx, key)
		if serr != nil {
			return nil, serr
		}
		n, cerr := storage.CheckRange(offset, length, size)
		if cerr != nil {
			return nil, cerr
		}
		if n == 0 {
			return []byte{}, nil
		}
		return nil, fmt.Errorf("server refused the range %d+%d of a %d-byte object", offset, length, size)
	}
	return data, err
}

// errRangeNotSatisfiable is a 416 answer: the range starts past the end.
var errRangeNotSatisfiable = errors.New("range not satisfiable")

// parseContentRange parses "bytes first-last/total".
func parseContentRange(s string) (first, last, total int64, ok bool) {
	s, found := strings.CutPrefix(s, "bytes ")
	if !found {
		return 0, 0, 0, false
	}
	rng, tot, found := strings.Cut(s, "/")
	if !found {
		return 0, 0, 0, false
	}
	a, z, found := strings.Cut(rng, "-")
	if !found {
		return 0, 0, 0, false
	}
	var err1, err2, err3 error
	first, err1 = strconv.ParseInt(a, 10, 64)
	last, err2 = strconv.ParseInt(z, 10, 64)
	total, err3 = strconv.ParseInt(tot, 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || first < 0 || last < first || total <= last {
		return 0, 0, 0, false
	}
	return first, last, total, true
}
