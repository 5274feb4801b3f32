// Command farlink is a user-space netem: a far link between two network
// namespaces on a kernel without the netem qdisc (bench/remote.sh's far
// part uses it when `tc qdisc ... netem` is unknown).
//
//	farlink link --a DEV --b DEV --delay 50ms --rate 1gbit --loss 0.1% [--limit N] [--mtu N] [--seed N]
//
// opens two TUN devices and forwards raw IP packets between them, in each
// direction with a one-way delay, a rate (serialisation at a bottleneck), a
// random loss and a queue limit, as netem does on an interface. It works at
// the packet level, not as a proxy: TCP runs end to end between the
// namespaces, so congestion control sees the real delay, loss and
// bottleneck. The caller moves each device into its namespace (the open
// file keeps working) and gives it an address. On SIGTERM or SIGINT it
// prints its counters and its CPU time.
//
//	farlink sink --listen ADDR
//	farlink send --to ADDR [--streams N] [--seconds S] [--cc NAME]
//	farlink rtt  --to ADDR [--count N]
//
// measure the link: sink discards what it receives; send writes for S
// seconds over N TCP connections and reports the throughput once the sink
// has read every byte; rtt times TCP connects (SYN to SYN-ACK: one round
// trip) to a listener, for machines without ping.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "link":
		err = runLink(os.Args[2:])
	case "sink":
		err = runSink(os.Args[2:])
	case "send":
		err = runSend(os.Args[2:])
	case "rtt":
		err = runRTT(os.Args[2:])
	case "-h", "--help", "help":
		usage()
	default:
		fmt.Fprintf(os.Stderr, "farlink: unknown command %q\n", os.Args[1])
		usage()
	}
	if err != nil {
		var ue usageError
		fmt.Fprintf(os.Stderr, "farlink %s: %v\n", os.Args[1], err)
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  farlink link --a DEV --b DEV [--delay 50ms] [--rate 1gbit] [--loss 0.1%] [--limit N] [--mtu N] [--seed N]
  farlink sink --listen ADDR
  farlink send --to ADDR [--streams N] [--seconds S] [--cc NAME]
  farlink rtt  --to ADDR [--count N]
`)
	os.Exit(2)
}

// usageError is a bad flag or argument: exit status 2.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// parseFlags parses a subcommand's flags; -h lists them.
func parseFlags(fs *flag.FlagSet, args []string) error {
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		fs.SetOutput(os.Stderr)
		fs.PrintDefaults()
	}
	if err != nil {
		return usageError{err}
	}
	return nil
}
