package main

import (
	"context"
	"errors"
	"time"

	"github.com/floe-backup/floe/internal/devrestore"
	"github.com/floe-backup/floe/internal/ui"
)

// restoreToDevice is `floe restore SNAP:PATH --to-device DEV`.
func restoreToDevice(ctx context.Context, g *globals, arg, device string, writeZeros, verify, bufferedIO bool, filter snapshotFilterFlags) error {
	if _, sub := splitSnapshotArg(arg); sub == "" || sub == "/" {
		return usageError{errors.New("--to-device writes one image: give it as SNAPSHOT:PATH, e.g. latest:/dev/vdb")}
	}
	sp, err := g.openSnapshotPath(ctx, []string{arg}, filter.filter())
	if err != nil {
		return err
	}
	defer sp.r.Close()
	r, sn, p, node := sp.r, sp.sn, sp.path, sp.node
	prog := &ui.Meter{}
	start := time.Now()
	st := g.status()
	fetched := g.fetchedCounter(prog)
	line := &ui.RestoreLine{Start: start}
	st.Run(200*time.Millisecond, func() string {
		_, _, _, _, bytes, bytesTotal := prog.Current()
		return line.Line(0, 1, bytes, bytesTotal, fetched())
	})
	res, err := devrestore.Run(ctx, r, node, sn.ID.Short()+":"+p, devrestore.Options{Device: device, WriteZeros: writeZeros, Verify: verify, BufferedIO: bufferedIO, Progress: prog})
	st.Stop()
	if err != nil {
		return err
	}
	warnForged(g, r.ForgedCopies())
	if g.json {
		stdoutJSON.summary(map[string]any{"snapshot": sn.ID.String(), "path": p, "device": device,
			"bytes": res.Bytes, "data_bytes": res.DataBytes, "zero_bytes": res.ZeroBytes, "zeroing": res.Zeroing,
			"device_size": res.DeviceSize, "verified": res.Verified, "duration_seconds": time.Since(start).Seconds()})
		return nil
	}
	g.say("restored %s:%s (%s) to %s in %s: %s of data written", sn.ID.Short(), p, ui.Bytes(res.Bytes), device,
		ui.Duration(time.Since(start)), ui.Bytes(res.DataBytes))
	switch res.Zeroing {
	case devrestore.ZeroDevice:
		g.say("%s of zero regions not written: the device zeroed them (write zeroes with unmap)", ui.Bytes(res.ZeroBytes))
	case devrestore.ZeroWritten:
		why := "--write-zeros"
		if !writeZeros {
			why = "the device cannot zero ranges without writing them"
		}
		g.say("%s of zero regions written as zeros (%s)", ui.Bytes(res.ZeroBytes), why)
	}
	if res.DeviceSize > res.Bytes {
		g.say("the device is larger than the image: its last %s were left as they were", ui.Bytes(res.DeviceSize-res.Bytes))
	}
	if res.Verified {
		g.say("verified: the device holds the image")
	}
	return nil
}
