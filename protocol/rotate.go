package protocol

// Credential rotation (tether.v1 §11 of SPEC.md). The relay hands a
// connected agent its next device token over the live session; the agent
// stores it durably and confirms, and from then on presents the new token
// when it reconnects. The session itself is not interrupted.

// Message types for in-band credential rotation.
const (
	TypeRotate  = "rotate"  // relay → agent
	TypeRotated = "rotated" // agent → relay
)

// MaxTokenLen bounds a device token carried in a rotate frame. Tokens the
// Go relay issues are 47 bytes; the bound leaves room for other relays.
const MaxTokenLen = 512

// MaxGraceMs bounds rotate.grace_ms: 30 days.
const MaxGraceMs = 30 * 24 * 3600 * 1000

// Rotate gives the agent its next device token. GraceMs is how long the
// relay keeps accepting the old token after the agent confirms with
// Rotated; it is informational for the agent, which switches at once.
type Rotate struct {
	Token   string `json:"token"`
	GraceMs int64  `json:"grace_ms"`
}

// Rotated confirms that the agent stored the token of the last Rotate
// durably in its token file and uses it from now on.
type Rotated struct{}

func (*Rotate) MsgType() string  { return TypeRotate }
func (*Rotated) MsgType() string { return TypeRotated }

func (m *Rotate) validate() error {
	if len(m.Token) == 0 || len(m.Token) > MaxTokenLen {
		return invalid("rotate: token must be 1..%d bytes", MaxTokenLen)
	}
	for i := 0; i < len(m.Token); i++ {
		if c := m.Token[i]; c <= ' ' || c > '~' {
			return invalid("rotate: token must be printable ASCII without spaces")
		}
	}
	if m.GraceMs < 0 || m.GraceMs > MaxGraceMs {
		return invalid("rotate: grace_ms must be 0..%d, got %d", int64(MaxGraceMs), m.GraceMs)
	}
	return nil
}

func (*Rotated) validate() error { return nil }

// newRotateMessage is newMessage's hook for the rotation frames.
func newRotateMessage(typ string) Message {
	switch typ {
	case TypeRotate:
		return new(Rotate)
	case TypeRotated:
		return new(Rotated)
	}
	return nil
}
