package local

import "os"

// linkNoReplace hard-links new to old, which fails if new exists, then
// removes old. A failure to remove old leaves a temporary file that
// LeftoverTempFiles reports; the object itself is complete.
func linkNoReplace(old, new string) error {
	if err := os.Link(old, new); err != nil {
		return err
	}
	_ = os.Remove(old)
	return nil
}
