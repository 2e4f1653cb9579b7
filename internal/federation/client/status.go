package client

// StatusCode is the HTTP status the remote server answered, for callers
// that map failures without importing this package (keys' failures).
func (e *HTTPError) StatusCode() int { return e.Status }

// RemoteErrcode is the Matrix errcode the remote server answered ("" if
// its body had none).
func (e *HTTPError) RemoteErrcode() string { return e.Errcode }
