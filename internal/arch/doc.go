// Package arch holds no code: its test enforces the layer rules of
// docs/ARCHITECTURE.md on the imports of every package in the module, so
// that a dependency pointing upward fails the build's tests instead of
// waiting for a reviewer.
package arch
