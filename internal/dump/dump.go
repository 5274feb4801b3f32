// Package dump streams what a snapshot holds: a file's content, or a
// directory (or any node) as a tar archive in PAX format, to an io.Writer
// such as standard output or a tape. A device node whose numbers a PAX
// header cannot hold is written with a GNU header, which GNU tar reads in
// any archive; what no tar header holds is left out with a warning
// (Result.Skipped), never failing the archive.
//
// Tar names are relative to the parent of the dumped path, as
// `tar -C PARENT -c NAME` would write them: dumping /etc gives "etc/",
// "etc/passwd", ...; dumping / gives "etc/", "usr/", ... (no entry for the
// root itself). Names never start with "/" and never hold "." or ".."
// elements. Names that are not UTF-8 are written as their raw bytes, as
// GNU tar does (no "hdrcharset" record, which GNU tar does not know).
package dump

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"path"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/walk"
)

// BlobLoader loads data blobs; *repo.Repository is one.
type BlobLoader interface {
	LoadBlob(ctx context.Context, t repo.BlobType, ref hash.Ref, buf []byte) ([]byte, error)
}

// prefetch is how many blobs of a file are loaded ahead of the writer.
const prefetch = 4

// ErrUnsafeName means a tree holds a name that could escape the archive;
// snapshot.CheckName rejects those when trees are decoded, so it means a
// bug, not a hostile repository.
var ErrUnsafeName = errors.New("unsafe name")

// ErrSizeMismatch is wrapped by errors about a file whose content does
// not have the size its node says: the repository is damaged.
var ErrSizeMismatch = errors.New("damaged repository?")

// File writes the content of the regular file n to w, its data blobs in
// order, and returns the number of bytes written. It fails if the content
// is not n.Size bytes long.
func File(ctx context.Context, bl BlobLoader, n *snapshot.Node, w io.Writer) (uint64, error) {
	if n.Type != snapshot.TypeFile {
		return 0, fmt.Errorf("%s is a %s, not a regular file", n.Name, n.Type)
	}
	written, err := writeContent(ctx, bl, n.Content, w)
	if err != nil {
		return written, err
	}
	if written != n.Size {
		return written, fmt.Errorf("content is %d bytes, the snapshot says %d (%w)", written, n.Size, ErrSizeMismatch)
	}
	return written, nil
}

type loaded struct {
	data []byte
	err  error
}

// writeContent loads blobs in order, up to prefetch of them concurrently,
// and writes them to w.
func writeContent(ctx context.Context, bl BlobLoader, ids []hash.Ref, w io.Writer) (uint64, error) {
	var total uint64
	if len(ids) <= 1 {
		for _, id := range ids {
			data, err := bl.LoadBlob(ctx, repo.DataBlob, id, nil)
			if err != nil {
				return 0, err
			}
			n, err := w.Write(data)
			return uint64(n), err
		}
		return 0, nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	queue := make(chan chan loaded, prefetch)
	go func() {
		defer close(queue)
		for _, id := range ids {
			ch := make(chan loaded, 1)
			select {
			case queue <- ch:
			case <-ctx.Done():
				return
			}
			go func(id hash.Ref) {
				data, err := bl.LoadBlob(ctx, repo.DataBlob, id, nil)
				ch <- loaded{data, err}
			}(id)
		}
	}()
	var err error
	for ch := range queue {
		if err != nil {
			continue // drain so the producer ends
		}
		res := <-ch
		if res.err != nil {
			err = res.err
			cancel()
			continue
		}
		var n int
		n, err = w.Write(res.data)
		total += uint64(n)
		if err != nil {
			cancel()
		}
	}
	return total, err
}

// Device numbers a tar header holds. Linux's are at most 4095,1048575,
// which a ustar header holds; only a hostile or damaged snapshot has more.
const (
	ustarMaxDev = 1<<21 - 1     // 7 octal digits (ustar, PAX)
	gnuMaxDev   = math.MaxInt32 // GNU tar's major_t and minor_t: "out of minor_t range" beyond
)

// Result counts what Tar wrote.
type Result struct {
	Files, Dirs, Links, Others uint64
	Bytes                      uint64
	// Skipped lists what a tar archive cannot hold (sockets, xattrs whose
	// names contain '=', device numbers beyond what tar readers read, a
	// header archive/tar cannot encode), with a reason.
	Skipped []string
}

type tarDumper struct {
	bl     BlobLoader
	tw     *tar.Writer
	prefix string               // stripped from snapshot paths to make tar names
	links  map[[2]uint64]string // (device, inode) of a hard-linked file -> first tar name
	res    Result
}

// Tar writes the node n, whose path in the snapshot is p, as a PAX tar
// archive to w: a directory with everything below it (loaded through l),
// anything else as a single entry. p "/" with walk.Root(tree) dumps a
// whole snapshot. The archive is finished (trailer written) on success.
func Tar(ctx context.Context, bl BlobLoader, l snapshot.TreeLoader, p string, n *snapshot.Node, w io.Writer) (*Result, error) {
	p = walk.Clean(p)
	d := &tarDumper{bl: bl, tw: tar.NewWriter(w), links: map[[2]uint64]string{}}
	if p == "/" {
		d.prefix = "/"
	} else {
		d.prefix = strings.TrimSuffix(path.Dir(p), "/") + "/"
		if err := d.entry(ctx, p, n); err != nil {
			return &d.res, err
		}
	}
	if n.Type == snapshot.TypeDir && !n.Subtree.IsNull() {
		err := walk.Walk(ctx, l, p, n.Subtree, func(path string, node *snapshot.Node) error {
			return d.entry(ctx, path, node)
		})
		if err != nil {
			return &d.res, err
		}
	}
	if err := d.tw.Close(); err != nil {
		return &d.res, fmt.Errorf("finish tar: %w", err)
	}
	return &d.res, nil
}

// tarName turns a snapshot path into a relative tar name, checking every
// element.
func (d *tarDumper) tarName(p string) (string, error) {
	name, ok := strings.CutPrefix(p, d.prefix)
	if !ok || name == "" {
		return "", fmt.Errorf("%w: %q is not below %q", ErrUnsafeName, p, d.prefix)
	}
	for _, c := range strings.Split(name, "/") {
		if err := snapshot.CheckName(c); err != nil {
			return "", fmt.Errorf("%w: %q: %v", ErrUnsafeName, p, err)
		}
	}
	return name, nil
}

func (d *tarDumper) entry(ctx context.Context, p string, n *snapshot.Node) error {
	name, err := d.tarName(p)
	if err != nil {
		return err
	}
	hdr := &tar.Header{
		Name:       name,
		Mode:       int64(n.Mode & snapshot.ModeMask),
		Uid:        int(n.UID),
		Gid:        int(n.GID),
		Uname:      n.User,
		Gname:      n.Group,
		ModTime:    n.ModTime,
		AccessTime: n.AccessTime,
		ChangeTime: n.ChangeTime,
		Format:     tar.FormatPAX,
	}
	if hdr.ModTime.IsZero() {
		hdr.ModTime = time.Unix(0, 0)
	}
	var content []hash.Ref
	var count *uint64 // what the entry adds to once its header is written
	var linkKey [2]uint64
	switch n.Type {
	case snapshot.TypeFile:
		linkKey = [2]uint64{n.Device, n.Inode}
		if first, ok := d.links[linkKey]; ok && n.Links > 1 && n.Inode != 0 {
			hdr.Typeflag = tar.TypeLink
			hdr.Linkname = first
			count = &d.res.Links
			break
		}
		hdr.Typeflag = tar.TypeReg
		hdr.Size = int64(n.Size)
		content = n.Content
		count = &d.res.Files
	case snapshot.TypeDir:
		hdr.Typeflag = tar.TypeDir
		hdr.Name += "/"
		count = &d.res.Dirs
	case snapshot.TypeSymlink:
		hdr.Typeflag = tar.TypeSymlink
		hdr.Linkname = n.LinkTarget
		count = &d.res.Others
	case snapshot.TypeFIFO:
		hdr.Typeflag = tar.TypeFifo
		count = &d.res.Others
	case snapshot.TypeCharDev, snapshot.TypeBlockDev:
		hdr.Typeflag = tar.TypeChar
		if n.Type == snapshot.TypeBlockDev {
			hdr.Typeflag = tar.TypeBlock
		}
		hdr.Devmajor = int64(unix.Major(n.Rdev))
		hdr.Devminor = int64(unix.Minor(n.Rdev))
		if hdr.Devmajor > gnuMaxDev || hdr.Devminor > gnuMaxDev {
			d.res.Skipped = append(d.res.Skipped, fmt.Sprintf("%s: device number %d,%d: tar readers hold at most %d (GNU tar)",
				p, hdr.Devmajor, hdr.Devminor, gnuMaxDev))
			return nil
		}
		if hdr.Devmajor > ustarMaxDev || hdr.Devminor > ustarMaxDev {
			// A ustar (and so PAX) header holds 7 octal digits; a GNU
			// header holds more, in base 256, and GNU tar, bsdtar and Go
			// read it. No PAX record holds them that GNU tar reads: it
			// ignores star's SCHILY.devmajor and would make 0,0.
			hdr.Format = tar.FormatGNU
		}
		count = &d.res.Others
	default:
		d.res.Skipped = append(d.res.Skipped, fmt.Sprintf("%s: a %s cannot be stored in a tar archive", p, n.Type))
		return nil
	}
	for _, x := range n.Xattrs {
		if strings.Contains(x.Name, "=") {
			d.res.Skipped = append(d.res.Skipped, fmt.Sprintf("%s: xattr %q: a name with '=' cannot be stored in a tar archive", p, x.Name))
			continue
		}
		if hdr.Format == tar.FormatGNU {
			d.res.Skipped = append(d.res.Skipped, fmt.Sprintf("%s: xattr %q: the GNU header its device number needs cannot hold it", p, x.Name))
			continue
		}
		if hdr.PAXRecords == nil {
			hdr.PAXRecords = map[string]string{}
		}
		hdr.PAXRecords["SCHILY.xattr."+x.Name] = string(x.Value)
	}
	if err := d.tw.WriteHeader(hdr); err != nil {
		if d.tw.Flush() != nil {
			// the writer failed (the output): nothing more can be written
			return fmt.Errorf("%s: tar header: %w", p, err)
		}
		// archive/tar refuses a header it cannot encode before writing a
		// byte of it: this entry is left out, the archive goes on
		d.res.Skipped = append(d.res.Skipped, fmt.Sprintf("%s: %v", p, err))
		return nil
	}
	*count++
	if hdr.Typeflag == tar.TypeReg && n.Links > 1 && n.Inode != 0 {
		d.links[linkKey] = name // later links to it name this entry
	}
	if hdr.Typeflag == tar.TypeReg {
		written, err := writeContent(ctx, d.bl, content, d.tw)
		d.res.Bytes += written
		if err != nil {
			if errors.Is(err, tar.ErrWriteTooLong) {
				return fmt.Errorf("%s: content is longer than the %d bytes the snapshot says (%w)", p, n.Size, ErrSizeMismatch)
			}
			return fmt.Errorf("%s: %w", p, err)
		}
		if written != n.Size {
			return fmt.Errorf("%s: content is %d bytes, the snapshot says %d (%w)", p, written, n.Size, ErrSizeMismatch)
		}
	}
	return nil
}
