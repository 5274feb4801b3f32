package location

// ReadTokenFile reads a floe server token from the first line of a file
// (for front ends that talk to a server's other APIs, such as the fleet
// API); the token never appears in an error.
func ReadTokenFile(path string) (string, error) { return readToken(path) }
