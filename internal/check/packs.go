package check

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/par"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/ui"
)

// packState is what check learned about a pack with a problem; blob
// causes are derived from it.
type packState struct {
	problem    *Problem
	missing    bool                     // in the index, not in storage
	unreadable bool                     // read-data could not read it
	headerBad  bool                     // its header does not load
	pastEnd    map[repo.BlobHandle]bool // blobs beyond the end of a truncated pack
	entryBad   map[repo.BlobHandle]bool
	read       bool                       // read-data verified its indexed blobs ...
	blobBad    map[repo.BlobHandle]string // ... and these failed
}

type packResult struct {
	id         hash.ID
	referenced bool
	state      packState
	issues     []string
	header     *repo.PackHeader // of unreferenced packs, to find lost blobs
	read       bool
	bytesRead  int64
	verified   int64
	// denied: the storage refuses this credential to read packs (a floe
	// server's backup token), which says nothing about the packs
	denied    error
	decrypted int64
	refBad    []refProblem
}

// checkPacks checks every pack the index lists and every pack in
// storage: presence and size, header against the index, and with ReadData
// every blob in it (and the whole pack where readPack needs it).
func (c *checker) checkPacks(ctx context.Context) error {
	ids := make([]hash.ID, 0, len(c.packSizes)+len(c.packRefs))
	for id := range c.packSizes {
		ids = append(ids, id)
	}
	for id := range c.packRefs {
		if _, ok := c.packSizes[id]; !ok {
			ids = append(ids, id)
		}
	}
	slices.SortFunc(ids, func(a, b hash.ID) int { return strings.Compare(string(a[:]), string(b[:])) })

	read := map[hash.ID]bool{}
	var bytesTotal int64
	if c.opts.ReadData {
		stored := make([]hash.ID, 0, len(c.packSizes))
		for id := range c.packSizes {
			stored = append(stored, id)
		}
		sel := stored
		if c.opts.Subset != nil {
			sel = c.opts.Subset.Select(stored)
		}
		for _, id := range sel {
			read[id] = true
			bytesTotal += c.packSizes[id]
		}
	}
	phase := "checking packs"
	if c.opts.ReadData {
		phase = "reading packs"
	}
	c.opts.Progress.Phase(phase, int64(len(ids)), bytesTotal)

	var mu sync.Mutex
	var denied error
	// one scanner per worker: each reuses its buffers from pack to pack
	scanners := make([]*repo.PackScanner, c.opts.Workers)
	for w := range scanners {
		scanners[w] = c.r.NewPackScanner()
	}
	par.For(ctx, len(ids), c.opts.Workers, func(w, i int) {
		res := c.checkPack(ctx, ids[i], read[ids[i]], scanners[w])
		c.opts.Progress.Done(1, res.bytesRead)
		if ctx.Err() != nil {
			return // errors of a canceled check are no damage
		}
		mu.Lock()
		defer mu.Unlock()
		if res.denied != nil {
			denied = res.denied
			return
		}
		c.mergePack(res)
	})
	if denied != nil {
		return denied // the credential may not read packs: nothing to check
	}
	return ctx.Err()
}

// mergePack records and reports the result of one pack (under a lock).
func (c *checker) mergePack(res *packResult) {
	s := &c.res.Summary
	s.BytesRead += res.bytesRead
	s.BlobsVerified += res.verified
	for _, rp := range res.refBad {
		c.refBad[rp.ref] = rp.why
	}
	if res.read {
		s.PacksRead++
	}
	object := "data/" + res.id.String()
	if !res.referenced {
		s.UnreferencedPacks++
		if res.header != nil {
			for _, b := range res.header.Blobs {
				h := repo.BlobHandle{Type: b.Type, ID: b.ID}
				if _, ok := c.orphans[h]; !ok {
					c.orphans[h] = res.id
				}
			}
		}
		msg := fmt.Sprintf("pack %s is unreferenced (left by an interrupted backup; harmless, prune removes it)", res.id.Short())
		if c.indexDamaged > 0 {
			msg = fmt.Sprintf("pack %s is in no readable index file; since an index file is damaged, it may hold data that snapshots need: do not prune; `floe repair` rebuilds the index from the intact packs", res.id.Short())
		}
		if len(res.issues) > 0 {
			msg += "; also, it " + strings.Join(res.issues, "; ")
		}
		c.problem(Warning, KindUnreferenced, object, "%s", msg)
		return
	}
	if len(res.issues) == 0 {
		return
	}
	st := res.state
	st.problem = c.problem(Error, KindPack, object, "pack %s %s", res.id.Short(), strings.Join(res.issues, "; "))
	c.packStates[res.id] = &st
}

// checkPack checks one pack; it touches no shared state but the
// read-only maps of the index phase.
func (c *checker) checkPack(ctx context.Context, id hash.ID, read bool, sc *repo.PackScanner) *packResult {
	refs := c.packRefs[id]
	size, present := c.packSizes[id]
	res := &packResult{id: id, referenced: len(refs) > 0}
	st := &res.state

	if !res.referenced {
		// its header says which blobs it holds: if snapshots need one,
		// its index file was damaged or lost (also deleted, which leaves
		// no trace), and the missing blobs' problem says so (two small
		// reads; unreferenced packs are few)
		if hdr, err := c.r.LoadPackHeader(ctx, id, size); err == nil {
			res.header = hdr
		}
		if read {
			scan, err := sc.Scan(ctx, id, nil, true, nil)
			res.read = err == nil
			res.bytesRead = scan.Size
			switch {
			case errors.Is(err, storage.ErrDenied):
				res.denied = err
			case err != nil:
				res.issues = append(res.issues, fmt.Sprintf("cannot be read: %v", trimPackPrefix(err.Error(), id)))
			case scan.Sum != id:
				res.issues = append(res.issues, "is damaged: its content does not match its name")
			}
		}
		return res
	}

	var indexNames []string
	for _, ref := range refs {
		indexNames = append(indexNames, ref.index.Short())
	}
	if !present {
		st.missing = true
		res.issues = append(res.issues, fmt.Sprintf("is missing (listed in index %s)", strings.Join(indexNames, ", ")))
		return res
	}

	// The index says exactly what the pack holds, so its size is known.
	if want := repo.PackSizeFor(refs[0].info.Blobs); size != want {
		what := "damaged"
		if size < want {
			what = "truncated"
		}
		res.issues = append(res.issues, fmt.Sprintf("is %d bytes, but its index entry implies %d (%s)", size, want, what))
		for _, ref := range refs {
			for _, b := range ref.info.Blobs {
				if int64(b.Offset)+int64(b.Length) > size {
					if st.pastEnd == nil {
						st.pastEnd = map[repo.BlobHandle]bool{}
					}
					st.pastEnd[repo.BlobHandle{Type: b.Type, ID: b.ID}] = true
				}
			}
		}
	}
	hdr, err := c.r.LoadPackHeader(ctx, id, size)
	if errors.Is(err, storage.ErrDenied) {
		res.denied = err
		return res
	}
	if err != nil {
		st.headerBad = true
		res.issues = append(res.issues, "has a damaged header: "+trimPackPrefix(err.Error(), id))
	} else {
		c.compareHeader(res, hdr, refs)
	}

	if read {
		c.readPack(ctx, res, sc, refs)
	}
	return res
}

// compareHeader checks that every index entry of the pack matches its header.
func (c *checker) compareHeader(res *packResult, hdr *repo.PackHeader, refs []packRef) {
	st := &res.state
	inHeader := make(map[repo.BlobHandle]repo.PackedBlob, len(hdr.Blobs))
	for _, b := range hdr.Blobs {
		inHeader[repo.BlobHandle{Type: b.Type, ID: b.ID}] = b
	}
	indexed := map[repo.BlobHandle]bool{}
	for _, ref := range refs {
		bad := 0
		for _, b := range ref.info.Blobs {
			h := repo.BlobHandle{Type: b.Type, ID: b.ID}
			indexed[h] = true
			if hb, ok := inHeader[h]; !ok || hb != b {
				if st.entryBad == nil {
					st.entryBad = map[repo.BlobHandle]bool{}
				}
				st.entryBad[h] = true
				bad++
			}
		}
		if bad > 0 {
			res.issues = append(res.issues, fmt.Sprintf("disagrees with index %s (%s) about %d of its blobs", ref.index.Short(), signedWord(ref.signed), bad))
		}
	}
	extra := 0
	for h := range inHeader {
		if !indexed[h] {
			extra++
		}
	}
	if extra > 0 {
		res.issues = append(res.issues, fmt.Sprintf("holds %s that its index entry does not list", ui.Count(extra, "blob")))
	}
}

// readPack reads the whole pack once, in order (repo.PackScanner): every
// blob the index lists in it must hash to its ID, and every data blob that
// a tree refers to must decrypt and verify with each ref the trees hold
// for it (decryptBlob).
//
// The whole pack is hashed against its name only when something is
// wrong with it. Otherwise its header equals the index entries byte for
// byte (compareHeader), its size is what they imply, and its blobs, which
// a header lays out to cover the body exactly, match their IDs: every
// byte is verified but the 16 random "unique" bytes of the header, which
// no reader uses. Hashing the pack again cost 10-15% of check
// --read-data's CPU time (docs/PERFORMANCE.md).
func (c *checker) readPack(ctx context.Context, res *packResult, sc *repo.PackScanner, refs []packRef) {
	st := &res.state
	hashPack := len(res.issues) > 0
	// Every entry is checked, from whichever index file, by hashing: no
	// key is needed, so a write-only key checks as much as a full one.
	seen := map[repo.PackedBlob]bool{}
	listedBy := map[repo.BlobHandle][]string{}
	var blobs []repo.PackedBlob
	for _, ref := range refs {
		for _, b := range ref.info.Blobs {
			h := repo.BlobHandle{Type: b.Type, ID: b.ID}
			listedBy[h] = append(listedBy[h], fmt.Sprintf("index %s (%s)", ref.index.Short(), signedWord(ref.signed)))
			if !seen[b] {
				seen[b] = true
				blobs = append(blobs, b)
			}
		}
	}
	var first string
	scan, err := sc.Scan(ctx, res.id, blobs, hashPack, func(b repo.PackedBlob, data []byte, err error) error {
		h := repo.BlobHandle{Type: b.Type, ID: b.ID}
		if err == nil {
			res.verified++
			c.decryptBlob(res, sc, b, data)
			return nil
		}
		if st.blobBad == nil {
			st.blobBad = map[repo.BlobHandle]string{}
		}
		msg := fmt.Sprintf("%v; listed by %s", err, strings.Join(listedBy[h], ", "))
		st.blobBad[h] = msg
		if first == "" {
			first = msg
		}
		return nil
	})
	if err != nil {
		st.unreadable = true
		res.issues = append(res.issues, fmt.Sprintf("cannot be read: %v", trimPackPrefix(err.Error(), res.id)))
		return
	}
	res.read = true
	st.read = true
	res.bytesRead = scan.Size
	if !hashPack && len(st.blobBad) > 0 {
		// damaged after all: read it again to say whether it still is
		// what was stored under its name (then an index file lied)
		// (a failure now adds nothing to what the blobs said)
		again, err := sc.Scan(ctx, res.id, nil, true, nil)
		hashPack = err == nil
		scan.Sum = again.Sum
	}
	if hashPack && scan.Sum != res.id {
		res.issues = append(res.issues, "is damaged: its content does not match its name")
	}
	if n := len(st.blobBad); n > 0 {
		res.issues = append(res.issues, fmt.Sprintf("has %s of %d whose bytes do not match their IDs, damaged or forged (first: %s)", ui.Count(n, "blob"), len(blobs), first))
	}
}

// decryptBlob decrypts a data blob of a pack (its bytes verified against
// its ID) with every ref the trees hold for it, and records the refs whose
// key or size the plaintext does not match: a damaged or hostile tree (the
// stored bytes are what their ID says, so the fault is the tree's).
func (c *checker) decryptBlob(res *packResult, sc *repo.PackScanner, b repo.PackedBlob, data []byte) {
	for _, br := range c.refs[repo.BlobHandle{Type: b.Type, ID: b.ID}] {
		plain, err := sc.Open(b, br.ref, data)
		var why string
		switch {
		case err != nil:
			why = err.Error()
		case len(plain) != int(br.size):
			why = fmt.Sprintf("data blob %s holds %d bytes, the tree says %d", b.ID.Short(), len(plain), br.size)
		}
		if err == nil {
			res.decrypted++
		}
		if why != "" {
			res.refBad = append(res.refBad, refProblem{br, why})
		}
	}
}

// refProblem is a tree's ref that the blob's plaintext does not match.
type refProblem struct {
	ref blobRef
	why string
}

func signedWord(signed bool) string {
	if signed {
		return "signed by a full key"
	}
	return "unsigned"
}

// trimPackPrefix drops the "pack 1a2b3c4d: " that repo's errors start with.
func trimPackPrefix(msg string, id hash.ID) string {
	for _, p := range []string{"pack " + id.Short() + ": ", "pack " + id.Short() + " header: "} {
		if s, ok := strings.CutPrefix(msg, p); ok {
			return s
		}
	}
	return msg
}

// cause says why a blob a snapshot needs is damaged, and which problem it
// belongs to.
type cause struct {
	problem *Problem
	text    string
	// definite is false when the blob may be intact (its pack's header is
	// damaged, but the blob itself was not read).
	definite bool
}

// blobCause returns why the blob cannot be read, or nil if some copy of
// it is (as far as this check knows) intact.
func (c *checker) blobCause(h repo.BlobHandle) *cause {
	loc, ok := c.r.Index().Lookup(h)
	if !ok {
		return c.missing(h)
	}
	cs := c.copyCause(loc.Pack, h)
	if cs == nil {
		return nil
	}
	for _, p := range c.altCopies[h] {
		if c.copyCause(p, h) == nil {
			return nil
		}
	}
	return cs
}

func (c *checker) copyCause(pack hash.ID, h repo.BlobHandle) *cause {
	ps := c.packStates[pack]
	if ps == nil {
		return nil
	}
	definite := true
	var text string
	switch {
	case ps.missing:
		text = fmt.Sprintf("pack %s is missing", pack.Short())
	case ps.unreadable:
		text = fmt.Sprintf("pack %s cannot be read", pack.Short())
	case ps.read:
		reason, bad := ps.blobBad[h]
		if !bad {
			return nil
		}
		return &cause{problem: ps.problem, text: reason, definite: true}
	case ps.pastEnd[h]:
		text = fmt.Sprintf("pack %s is truncated before the blob's end", pack.Short())
	case ps.headerBad:
		text = fmt.Sprintf("pack %s has a damaged header (reading the whole pack tells whether the blob is intact)", pack.Short())
		definite = false
	case ps.entryBad[h]:
		text = fmt.Sprintf("its index entry disagrees with the header of pack %s", pack.Short())
		definite = false
	default:
		return nil
	}
	return &cause{problem: ps.problem, text: fmt.Sprintf("%s blob %s: %s", h.Type, h.ID.Short(), text), definite: definite}
}

// missing returns the cause of a blob that no index lists.
func (c *checker) missing(h repo.BlobHandle) *cause {
	if c.missingProb == nil {
		c.missingProb = &Problem{Severity: Error, Kind: KindMissingBlob, Object: "index"}
		c.missingCount = map[repo.BlobType]int{}
		c.missingSeen = map[repo.BlobHandle]bool{}
	}
	text := fmt.Sprintf("%s blob %s is in no index file", h.Type, h.ID.Short())
	pack, orphan := c.orphans[h]
	if orphan {
		text += fmt.Sprintf(" (unreferenced pack %s holds it)", pack.Short())
	}
	if !c.missingSeen[h] {
		c.missingSeen[h] = true
		c.missingCount[h.Type]++
		if orphan {
			c.missingOrphan++
		}
	}
	return &cause{problem: c.missingProb, text: text, definite: true}
}
