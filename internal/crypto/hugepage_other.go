//go:build !linux

package crypto

func adviseHugePages([]byte) (withdraw func()) { return func() {} }
