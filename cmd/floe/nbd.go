package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/floe-backup/floe/internal/nbd"
	"github.com/floe-backup/floe/internal/snapimage"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/ui"
	"github.com/floe-backup/floe/internal/walk"
)

func newNBDCommand(g *globals) *cobra.Command {
	var (
		filter                 snapshotFilterFlags
		listen                 string
		names, overlays        []string
		writable               bool
		cacheMiB               int
		tlsCert, tlsKey, tlsCA string
	)
	c := &cobra.Command{
		Use:   "nbd SNAPSHOT:PATH [SNAPSHOT:PATH...]",
		Short: "Serve backed-up disk images over NBD (Network Block Device)",
		Long: `Serve the regular file at PATH in a snapshot (a raw disk image, a database
file, ...) as an NBD export until Ctrl-C (or SIGTERM), without restoring it.
Any NBD client can then read it at any offset: qemu (boot a VM from the
backup), qemu-img, nbdcopy, nbdfuse, nbd-client (/dev/nbdX, then mount
it). Only what clients read is loaded and decrypted; holes (zeros in sparse
files) are reported as holes, so copies skip them.

Several SNAPSHOT:PATH arguments (of one snapshot or of several) are served
by one server, each as its own export: a VM's disks, say. SNAPSHOT PATH
(two arguments, the first without a colon) is the older spelling of one
SNAPSHOT:PATH.

Clients name the export they want: each export is named by --name, given
once per export in the order of the arguments, or else by its file's name
(web1.img for latest:/srv/vm/web1.img). Two exports may not have the same
name. The first export is also the default one, which clients asking for
no name (nbd://localhost/) get.

--listen takes HOST:PORT, HOST (port 10809) or unix:PATH (a socket only
this user may use). The default, 127.0.0.1:10809, takes connections from
this host only: NBD has no authentication of its own. To serve other hosts
use TLS (--tls-cert, --tls-key; --tls-client-ca requires client
certificates), which every client must then use (nbds:// URIs).

The exports are read-only unless --writable: writes then go to a local
copy-on-write file, --overlay FILE (a sparse file, with FILE.map beside it
recording the written blocks), and never to the repository. With several
exports, give one --overlay per export, in the order of the arguments.
An overlay belongs to the snapshot file it was made for; serving the same
one again continues where the last client left off. Writes are durable
when the client flushes (and when it disconnects).

Every export supports structured replies, block status (base:allocation)
and several connections at once (multi-conn).`,
		Example: `  floe nbd latest:/var/lib/libvirt/images/web1.img
  qemu-img convert -O qcow2 nbd://localhost/web1.img web1.qcow2
  floe nbd 4f2a9c1e:/srv/vm/db.raw --listen unix:/run/floe-db.sock
  floe nbd latest:/srv/vm/db.raw --writable --overlay /var/tmp/db.overlay
  qemu-system-x86_64 -drive file=nbd://localhost/db.raw,format=raw ...
  floe nbd latest:/srv/vm/sys.raw latest:/srv/vm/data.raw --name sys --name data
  floe nbd latest:/srv/vm/sys.raw latest:/srv/vm/data.raw --writable \
      --overlay /var/tmp/sys.overlay --overlay /var/tmp/data.overlay`,
		Args: usageArgs(cobra.MinimumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			exports, err := nbdExportArgs(args, names)
			if err != nil {
				return err
			}
			if writable != (len(overlays) > 0) {
				return usageError{errors.New("--writable needs --overlay FILE, and --overlay needs --writable")}
			}
			if writable {
				if len(overlays) != len(exports) {
					return usageError{fmt.Errorf("--writable with %s needs as many --overlay files, one per export in order; got %d", ui.Count(len(exports), "export"), len(overlays))}
				}
				seen := map[string]bool{}
				for _, o := range overlays {
					abs, err := filepath.Abs(o)
					if err != nil {
						return fmt.Errorf("overlay %s: %w", o, err)
					}
					if seen[abs] {
						return usageError{fmt.Errorf("--overlay %s is given twice: each export needs its own", o)}
					}
					seen[abs] = true
				}
			}
			if (tlsCert == "") != (tlsKey == "") || tlsCA != "" && tlsCert == "" {
				return usageError{errors.New("TLS needs both --tls-cert and --tls-key (and --tls-client-ca needs them)")}
			}
			var tlsConfig *tls.Config
			if tlsCert != "" {
				cert, err := tls.LoadX509KeyPair(tlsCert, tlsKey)
				if err != nil {
					return fmt.Errorf("TLS certificate: %w", err)
				}
				tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
				if tlsCA != "" {
					pem, err := os.ReadFile(tlsCA)
					if err != nil {
						return fmt.Errorf("TLS client CA: %w", err)
					}
					pool := x509.NewCertPool()
					if !pool.AppendCertsFromPEM(pem) {
						return fmt.Errorf("TLS client CA %s: no PEM certificate", tlsCA)
					}
					tlsConfig.ClientCAs, tlsConfig.ClientAuth = pool, tls.RequireAndVerifyClientCert
				}
			}
			// A server's reads are random and come back to the same packs
			// (a booting VM, a client reconnecting): they are read through
			// the page cache even with --repo-direct-io. Around it, a cold
			// 4 KiB read took 2.6 ms at the median instead of 1.85
			// (docs/PERFORMANCE.md).
			g.repoDirectIO = false
			r, err := g.openRepo(ctx, true)
			if err != nil {
				return err
			}
			defer r.Close()
			l := treeLoader(r)
			var served []nbd.Export
			for i, x := range exports {
				sn, p, node, err := findSnapshotPath(ctx, r, l, x.spec, x.path, filter.filter())
				if err != nil {
					return err
				}
				if node.Type != snapshot.TypeFile {
					return fmt.Errorf("%s:%s is a %s: only a regular file can be served", sn.ID.Short(), p, node.Type)
				}
				img, err := snapimage.Open(ctx, r, node, sn.ID.Short()+":"+p, int64(cacheMiB)<<20)
				if err != nil {
					return err
				}
				defer img.Close()
				var image nbd.Image = img
				if writable {
					ov, err := nbd.OpenOverlay(overlays[i], img, sn.ID.String()+":"+p)
					if err != nil {
						return err
					}
					defer func(overlay string) {
						if err := ov.Close(); err != nil {
							g.warn("floe: overlay %s: %v", overlay, err)
						}
					}(overlays[i])
					image = ov
				}
				exports[i].sn, exports[i].path = sn, p
				served = append(served, nbd.Export{Name: x.name, Description: sn.ID.Short() + ":" + p, Image: image})
			}
			ln, err := nbd.Listen(listen)
			if err != nil {
				return err
			}
			var docs []map[string]any
			for i, x := range exports {
				uri := nbd.URI(ln, x.name, tlsConfig != nil)
				size := served[i].Image.Size()
				d := map[string]any{"name": x.name, "snapshot": x.sn.ID.String(), "path": x.path, "size": size, "uri": uri, "writable": writable}
				mode := "read-only"
				if writable {
					mode = "writable, writes to " + overlays[i]
					d["overlay"] = overlays[i]
				}
				docs = append(docs, d)
				end := ""
				if i == len(exports)-1 {
					end = "; press Ctrl-C to stop"
				}
				g.say("serving %s:%s (%s, %s) at %s%s", x.sn.ID.Short(), x.path, ui.Bytes(uint64(size)), mode, uri, end)
			}
			if g.json {
				// The first export's fields at the top, as when only
				// one could be served, and every export in "exports".
				doc := map[string]any{"exports": docs}
				for k, v := range docs[0] {
					if k != "name" && k != "overlay" {
						doc[k] = v
					}
				}
				_ = writeDocument(doc)
			}
			s := &nbd.Server{Exports: served, TLSConfig: tlsConfig, Logf: g.warn}
			return s.Serve(ctx, ln)
		},
	}
	filter.add(c)
	f := c.Flags()
	f.StringVar(&listen, "listen", nbd.DefaultListen, "where to listen: `HOST:PORT`, HOST, or unix:PATH")
	f.StringArrayVar(&names, "name", nil, "export `NAME`, once per export in order (default: the file's name)")
	f.BoolVar(&writable, "writable", false, "accept writes, into the --overlay files (never into the repository)")
	f.StringArrayVar(&overlays, "overlay", nil, "copy-on-write `FILE` for writes, once per export in order (created if missing; FILE.map beside it)")
	f.IntVar(&cacheMiB, "cache-mib", snapimage.DefaultCacheBytes>>20, "memory for decrypted data, in MiB (per export)")
	f.StringVar(&tlsCert, "tls-cert", "", "TLS certificate `FILE` (PEM); clients must then use TLS")
	f.StringVar(&tlsKey, "tls-key", "", "TLS private key `FILE` (PEM)")
	f.StringVar(&tlsCA, "tls-client-ca", "", "require client certificates signed by the CA in `FILE` (PEM)")
	return c
}

// nbdExport is one SNAPSHOT:PATH of floe nbd's arguments and the name it
// is served under; sn and path are filled in once it is found.
type nbdExport struct {
	spec, path, name string
	sn               *snapshot.Record
}

// nbdExportArgs reads floe nbd's arguments: SNAPSHOT:PATH..., or the older
// SNAPSHOT PATH (two arguments, the first without a path: the second is
// then the path, whatever it holds, so that form stays what it was). Each
// export is named by names in order, else by its file's name; names must
// be distinct, and only the first (the default export) may be empty.
func nbdExportArgs(args, names []string) ([]nbdExport, error) {
	var out []nbdExport
	if spec, sub := splitSnapshotArg(args[0]); len(args) <= 2 && (len(args) == 1 || sub == "") {
		if len(args) == 2 {
			sub = args[1]
		}
		out = append(out, nbdExport{spec: spec, path: sub})
	} else {
		for _, a := range args {
			spec, sub := splitSnapshotArg(a)
			if sub == "" {
				return nil, usageError{fmt.Errorf("%q: with several exports give each as SNAPSHOT:PATH", a)}
			}
			out = append(out, nbdExport{spec: spec, path: sub})
		}
	}
	if len(names) > len(out) {
		return nil, usageError{fmt.Errorf("%d --name for %s: give at most one per export", len(names), ui.Count(len(out), "export"))}
	}
	byName := map[string]string{}
	for i := range out {
		if i < len(names) {
			out[i].name = names[i]
		} else {
			out[i].name = path.Base(walk.Clean(out[i].path))
		}
		if out[i].name == "" && i > 0 {
			return nil, usageError{fmt.Errorf("%s:%s: only the first export may have the empty name (it is the default export)", out[i].spec, out[i].path)}
		}
		if other, ok := byName[out[i].name]; ok {
			return nil, usageError{fmt.Errorf("two exports named %q (%s and %s:%s): give each its own --name, in the order of the arguments", out[i].name, other, out[i].spec, out[i].path)}
		}
		byName[out[i].name] = out[i].spec + ":" + out[i].path
	}
	return out, nil
}
