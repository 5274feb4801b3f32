//go:build !linux

package crypto

func adviseHugePages([]byte) {}
