package main

import (
	"errors"
	"reflect"
	"testing"
)

func TestNBDExportArgs(t *testing.T) {
	type ex struct{ spec, path, name string }
	for _, c := range []struct {
		args, names []string
		want        []ex // nil: a usage error
	}{
		{[]string{"latest:/vm/a.img"}, nil, []ex{{"latest", "/vm/a.img", "a.img"}}},
		// the older spelling: the second argument is the path, colons and all
		{[]string{"latest", "/vm/a:b.img"}, nil, []ex{{"latest", "/vm/a:b.img", "a:b.img"}}},
		{[]string{"latest:", "/vm/a.img"}, []string{""}, []ex{{"latest", "/vm/a.img", ""}}},
		{[]string{"latest:/vm/a.img", "4f2a:/vm/b.img"}, []string{"sys"}, []ex{{"latest", "/vm/a.img", "sys"}, {"4f2a", "/vm/b.img", "b.img"}}},
		{[]string{"latest:/vm/a.img", "latest:/old/a.img"}, nil, nil},               // both a.img
		{[]string{"latest:/vm/a.img", "latest:/vm/b.img"}, []string{"x", "x"}, nil}, // a name twice
		{[]string{"latest:/vm/a.img", "latest:/vm/b.img"}, []string{"x", ""}, nil},  // only the first may be ""
		{[]string{"latest:/vm/a.img"}, []string{"x", "y"}, nil},                     // more names than exports
		{[]string{"latest:/vm/a.img", "/vm/b.img"}, nil, nil},                       // several need SNAPSHOT:PATH
		{[]string{"latest", "/vm/a.img", "/vm/b.img"}, nil, nil},
	} {
		got, err := nbdExportArgs(c.args, c.names)
		if c.want == nil {
			var u usageError
			if !errors.As(err, &u) {
				t.Errorf("%q --name %q: %v, want a usage error", c.args, c.names, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q --name %q: %v", c.args, c.names, err)
			continue
		}
		var gotEx []ex
		for _, x := range got {
			gotEx = append(gotEx, ex{x.spec, x.path, x.name})
		}
		if !reflect.DeepEqual(gotEx, c.want) {
			t.Errorf("%q --name %q: %+v, want %+v", c.args, c.names, gotEx, c.want)
		}
	}
}
