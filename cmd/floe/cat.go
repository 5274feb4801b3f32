package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/ui"
)

// catObjects maps each object kind to whether it takes an ID.
var catObjects = map[string]bool{"config": false, "key": true, "snapshot": true, "index": true,
	"pack": true, "tree": true, "blob": true}

func newCatCommand(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "cat config | key ID | snapshot ID | index ID | pack ID | tree ID | blob ID",
		Short: "Print a repository object, decoded (for debugging)",
		Long: `Print one repository object as JSON, decrypted and decoded:

  config        the repository config
  key ID        a key record (it holds only sealed secrets: nothing secret
                is shown)
  snapshot ID   a snapshot record, exactly as stored ("latest" works too)
  index ID      an index file: the packs it lists and their blobs
  pack ID       a pack's header (its blobs) and size, and whether the
                index knows the pack
  tree ID       a tree blob's nodes; SNAPSHOT:PATH names the tree of a
                directory in a snapshot
  blob ID       a blob's plaintext, raw, to standard output

IDs can be shortened to a unique prefix. Keys, the config, index files and
pack headers can be read with a write-only key; snapshots, trees and data
need a full key.`,
		Example: `  floe cat config
  floe cat snapshot latest
  floe cat index 3e1f
  floe cat tree latest:/etc | jq '.nodes[].name'
  floe cat blob 9a4c17 > chunk.bin`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageError{fmt.Errorf("say what to print: config, key, snapshot, index, pack, tree or blob")}
			}
			needID, ok := catObjects[args[0]]
			switch {
			case !ok:
				return usageError{fmt.Errorf("unknown object %q: use config, key, snapshot, index, pack, tree or blob", args[0])}
			case needID && len(args) != 2:
				return usageError{fmt.Errorf("cat %s takes one ID", args[0])}
			case !needID && len(args) != 1:
				return usageError{fmt.Errorf("cat %s takes no ID", args[0])}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			what := args[0]
			needIndex := what == "pack" || what == "tree" || what == "blob"
			r, err := g.openRepo(ctx, needIndex)
			if err != nil {
				return err
			}
			defer r.Close()
			id := ""
			if len(args) > 1 {
				id = args[1]
				if !strings.Contains(id, ":") {
					id = strings.ToLower(id)
				}
			}
			switch what {
			case "config":
				return ui.WriteJSON(os.Stdout, r.Config())
			case "key":
				kid, rec, err := r.LoadKeyRecord(ctx, id)
				if err != nil {
					return err
				}
				return ui.WriteJSON(os.Stdout, struct {
					ID string `json:"id"`
					*repo.KeyRecord
				}{kid, rec})
			case "snapshot":
				return catSnapshot(ctx, r, id)
			case "index":
				iid, err := r.ResolvePrefix(ctx, storage.Index, id)
				if err != nil {
					return err
				}
				f, err := r.LoadIndexFile(ctx, iid)
				if err != nil {
					return err
				}
				packs := make([]packJSON, len(f.Packs))
				for i, p := range f.Packs {
					packs[i] = packJSON{ID: p.ID, Blobs: blobsJSON(p.Blobs)}
				}
				supersedes := f.Supersedes
				if supersedes == nil {
					supersedes = []hash.ID{}
				}
				return ui.WriteJSON(os.Stdout, struct {
					ID         hash.ID    `json:"id"`
					Signed     bool       `json:"signed"`
					Supersedes []hash.ID  `json:"supersedes"`
					Packs      []packJSON `json:"packs"`
				}{iid, f.Trusted, supersedes, packs})
			case "pack":
				pid, err := r.ResolvePrefix(ctx, storage.Pack, id)
				if err != nil {
					return err
				}
				size, err := r.PackSize(ctx, pid)
				if err != nil {
					return err
				}
				hdr, err := r.LoadPackHeader(ctx, pid, size)
				if err != nil {
					return err
				}
				indexed := false
				for _, p := range r.Index().Packs() {
					if p == pid {
						indexed = true
						break
					}
				}
				return ui.WriteJSON(os.Stdout, struct {
					ID      hash.ID    `json:"id"`
					Size    int64      `json:"size"`
					Indexed bool       `json:"indexed"`
					Blobs   []blobJSON `json:"blobs"`
				}{pid, size, indexed, blobsJSON(hdr.Blobs)})
			case "tree":
				tid, err := resolveTreeArg(ctx, r, id)
				if err != nil {
					return err
				}
				t, err := snapshot.LoadTree(ctx, r, tid)
				if err != nil {
					return err
				}
				nodes := make([]*nodeJSONObject, len(t.Nodes))
				for i, n := range t.Nodes {
					nodes[i] = nodeJSON("", n, true)
				}
				return ui.WriteJSON(os.Stdout, struct {
					ID    hash.ID           `json:"id"`
					Nodes []*nodeJSONObject `json:"nodes"`
				}{tid.ID, nodes})
			case "blob":
				h, err := r.Index().ResolveBlobPrefix(id)
				if err != nil {
					return err
				}
				ref, err := findRef(ctx, r, h)
				if err != nil {
					return err
				}
				data, err := r.LoadBlob(ctx, h.Type, ref, nil)
				if err != nil {
					return err
				}
				_, err = os.Stdout.Write(data)
				return err
			}
			return nil
		},
	}
	return c
}

func catSnapshot(ctx context.Context, r *repo.Repository, spec string) error {
	sn, err := snapshot.Find(ctx, r, spec, snapshot.Filter{})
	if err != nil {
		return err
	}
	plain, err := r.LoadSnapshotRecord(ctx, sn.ID)
	if err != nil {
		return err
	}
	// The root tree's ref holds the key that opens the whole snapshot: show
	// its ID only, as everywhere else.
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(plain, &doc); err != nil {
		return fmt.Errorf("snapshot %s: %w", sn.ID.Short(), err)
	}
	doc["tree"], _ = json.Marshal(sn.Tree.ID.String())
	redacted, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, redacted, "", "  "); err != nil {
		return fmt.Errorf("snapshot %s: %w", sn.ID.Short(), err)
	}
	buf.WriteByte('\n')
	_, err = os.Stdout.Write(buf.Bytes())
	return err
}

// resolveTreeArg reads a tree ID prefix or SNAPSHOT:PATH (a directory).
func resolveTreeArg(ctx context.Context, r *repo.Repository, arg string) (hash.Ref, error) {
	if strings.Contains(arg, ":") {
		spec, sub := splitSnapshotArg(arg)
		sn, p, node, err := findSnapshotPath(ctx, r, treeLoader(r), spec, sub, snapshot.Filter{})
		if err != nil {
			return hash.Ref{}, err
		}
		if node.Type != snapshot.TypeDir {
			return hash.Ref{}, fmt.Errorf("snapshot %s: %s is a %s, not a directory", sn.ID.Short(), p, node.Type)
		}
		return node.Subtree, nil
	}
	h, err := r.Index().ResolveBlobPrefix(arg, repo.TreeBlob)
	if err != nil {
		return hash.Ref{}, err
	}
	return findRef(ctx, r, h)
}

// findRef finds a reference to the blob h in the snapshots: a blob's ID
// names its stored bytes, but opening it takes the key that only the
// trees (and, for root trees, the snapshots) hold.
func findRef(ctx context.Context, r *repo.Repository, h repo.BlobHandle) (hash.Ref, error) {
	snaps, _, err := snapshot.List(ctx, r)
	if err != nil {
		return hash.Ref{}, err
	}
	l := treeLoader(r)
	seen := map[hash.ID]bool{}
	var stack []hash.Ref
	for _, sn := range snaps {
		stack = append(stack, sn.Tree)
	}
	for len(stack) > 0 {
		ref := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[ref.ID] {
			continue
		}
		seen[ref.ID] = true
		if h.Type == repo.TreeBlob && ref.ID == h.ID {
			return ref, nil
		}
		t, err := l.LoadTree(ctx, ref)
		if err != nil {
			continue // check reports damaged trees; another path may lead to the blob
		}
		for _, n := range t.Nodes {
			if h.Type == repo.DataBlob {
				for _, c := range n.Content {
					if c.ID == h.ID {
						return c, nil
					}
				}
			}
			if !n.Subtree.IsNull() {
				stack = append(stack, n.Subtree)
			}
		}
	}
	return hash.Ref{}, fmt.Errorf("%s blob %s: no snapshot refers to it, so its key is unknown and it cannot be decrypted", h.Type, h.ID.Short())
}

type packJSON struct {
	ID    hash.ID    `json:"id"`
	Blobs []blobJSON `json:"blobs"`
}

type blobJSON struct {
	Type   string  `json:"type"`
	ID     hash.ID `json:"id"`
	Offset uint32  `json:"offset"`
	Length uint32  `json:"length"`
}

func blobsJSON(bl []repo.PackedBlob) []blobJSON {
	out := make([]blobJSON, len(bl))
	for i, b := range bl {
		out[i] = blobJSON{Type: b.Type.String(), ID: b.ID, Offset: b.Offset, Length: b.Length}
	}
	return out
}
