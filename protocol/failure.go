package protocol

import "fmt"

// Failure is the error object of a failed request and the payload of an
// Error frame. It implements error so that handlers can return it and the
// agent can report its code unchanged.
type Failure struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (f *Failure) Error() string {
	if f.Message == "" {
		return f.Code
	}
	return f.Code + ": " + f.Message
}

// Errorf returns a *Failure with the given code and a formatted message.
func Errorf(code, format string, args ...any) *Failure {
	return &Failure{Code: code, Message: fmt.Sprintf(format, args...)}
}
