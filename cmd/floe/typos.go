package main

import (
	"fmt"
	"regexp"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// hintedError is an error that knows what to do about it: cmd/floe's own
// errors whose hint depends on the command line (the command, its flags),
// which hintFor cannot know from the error's type alone.
type hintedError struct {
	error
	hint string
}

func (e hintedError) Unwrap() error { return e.error }

// suggestDistance is how many edits apart a typo and the command or flag
// it suggests may be (cobra's default for commands; the same for flags).
const suggestDistance = 2

// unknownCommandRE matches cobra's error for an unknown command or a
// superfluous argument (cobra.NoArgs and the root's own check say the
// same); cobra has no error type for it.
var unknownCommandRE = regexp.MustCompile(`^unknown command "(.*)" for "(.*)"`)

// explainUnknownCommand turns cobra's "unknown command" error into a usage
// error that says what to do: the closest subcommands (cobra's own
// suggestions come as text with newlines in the error itself), or, for a
// command without subcommands, that it takes no such argument. Other
// errors are returned as they are.
func explainUnknownCommand(root *cobra.Command, err error) error {
	m := unknownCommandRE.FindStringSubmatch(err.Error())
	if m == nil {
		return err
	}
	typed, path := m[1], m[2]
	c, _, ferr := root.Find(strings.Fields(path)[1:])
	if ferr != nil || c == nil || c.CommandPath() != path {
		return usageError{hintedError{fmt.Errorf("unknown command %q for %q", typed, path), "`floe --help` lists the commands"}}
	}
	if !c.HasAvailableSubCommands() {
		return usageError{hintedError{fmt.Errorf("%s takes no argument %q", path, typed), fmt.Sprintf("`%s --help` shows its usage and examples", path)}}
	}
	hint := fmt.Sprintf("`%s --help` lists the commands", path)
	if s := commandSuggestions(c, typed); len(s) > 0 {
		hint = fmt.Sprintf("did you mean %s? (%s)", orList(s), hint)
	}
	return usageError{hintedError{fmt.Errorf("unknown command %q for %q", typed, path), hint}}
}

func commandSuggestions(c *cobra.Command, typed string) []string {
	if c.SuggestionsMinimumDistance <= 0 {
		c.SuggestionsMinimumDistance = suggestDistance
	}
	var out []string
	for _, s := range c.SuggestionsFor(typed) {
		out = append(out, "`"+c.CommandPath()+" "+s+"`")
	}
	return out
}

// unknownFlagRE matches pflag's error for an unknown long flag.
var unknownFlagRE = regexp.MustCompile(`^unknown flag: --([^\s=]+)`)

// flagError is the root's flag error function: every flag error is wrong
// usage (exit 2), and a mistyped long flag gets the closest flags of the
// command as a hint.
func flagError(c *cobra.Command, err error) error {
	hint := fmt.Sprintf("`%s --help` lists its flags", c.CommandPath())
	if m := unknownFlagRE.FindStringSubmatch(err.Error()); m != nil {
		if s := flagSuggestions(c, m[1]); len(s) > 0 {
			hint = fmt.Sprintf("did you mean %s? (%s)", orList(s), hint)
		}
	}
	return usageError{hintedError{err, hint}}
}

// flagSuggestions are the flags of c (its own and those it inherits)
// within suggestDistance edits of typed, or that start with it, closest
// first.
func flagSuggestions(c *cobra.Command, typed string) []string {
	type cand struct {
		name string
		d    int
	}
	var cands []cand
	seen := map[string]bool{}
	visit := func(f *pflag.Flag) {
		if f.Hidden || seen[f.Name] {
			return
		}
		seen[f.Name] = true
		d := editDistance(strings.ToLower(typed), strings.ToLower(f.Name))
		if d <= suggestDistance || (len(typed) >= 3 && strings.HasPrefix(f.Name, typed)) {
			cands = append(cands, cand{f.Name, d})
		}
	}
	c.LocalFlags().VisitAll(visit)
	c.InheritedFlags().VisitAll(visit)
	sort.SliceStable(cands, func(i, j int) bool {
		if cands[i].d != cands[j].d {
			return cands[i].d < cands[j].d
		}
		return cands[i].name < cands[j].name
	})
	var out []string
	for i, c := range cands {
		if i == 3 {
			break
		}
		out = append(out, "--"+c.name)
	}
	return out
}

// orList joins a, b and c as "a, b or c".
func orList(s []string) string {
	if len(s) == 1 {
		return s[0]
	}
	return strings.Join(s[:len(s)-1], ", ") + " or " + s[len(s)-1]
}

// editDistance is the Levenshtein distance of a and b (cobra's is not
// exported).
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}

// newHelpCommand replaces cobra's help command, which answers `floe help
// bogus` with the root's usage and exit 0: here an unknown topic is wrong
// usage (exit 2) with suggestions, like `floe bogus`.
func newHelpCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "help [command]",
		Short: "Help about any command",
		Long:  "Help provides help for any command: `floe help restore` is `floe restore --help`.",
		Example: `  floe help
  floe help restore
  floe help serve token add`,
		ValidArgsFunction: func(c *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
			cmd, _, err := c.Root().Find(args)
			if err != nil {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			var names []string
			for _, sub := range cmd.Commands() {
				if sub.IsAvailableCommand() && strings.HasPrefix(sub.Name(), toComplete) {
					names = append(names, sub.Name())
				}
			}
			return names, cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(c *cobra.Command, args []string) error {
			cmd, rest, err := c.Root().Find(args)
			if err != nil {
				return err
			}
			if len(rest) > 0 {
				// Find stops at the last command it knows and leaves the rest
				return fmt.Errorf("unknown command %q for %q", rest[0], cmd.CommandPath())
			}
			return cmd.Help()
		},
	}
}
