package repo

// Size limits of the objects that are read whole (storage.LoadAll checks
// them before reading). No valid object comes near them; they exist so that
// a hostile or damaged storage (a 200 GB sparse file costs it nothing)
// cannot make the client allocate what it names.
const (
	// maxKeySize bounds keys/<id>: a key record is a few hundred bytes
	// of JSON.
	maxKeySize = 64 << 10
	// maxConfigSize bounds the config: a few hundred bytes of JSON.
	maxConfigSize = 64 << 10
)
