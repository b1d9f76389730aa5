package agent

import (
	"math/rand/v2"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// fullJitter turns the exponential schedule of cenkalti/backoff into "full
// jitter": each wait is uniform in [0, ceiling), where the ceiling doubles
// from the initial interval up to the cap. Compared with the library's
// ±50 % randomisation this spreads a fleet that lost its relay at the same
// instant over the whole window, which is what keeps a reconnect storm
// flat.
type fullJitter struct {
	exp *backoff.ExponentialBackOff
}

func newBackoff(initial, max time.Duration) *fullJitter {
	exp := backoff.NewExponentialBackOff()
	exp.InitialInterval = initial
	exp.MaxInterval = max
	exp.Multiplier = 2
	exp.RandomizationFactor = 0 // the jitter is ours
	exp.MaxElapsedTime = 0      // never give up
	exp.Reset()
	return &fullJitter{exp: exp}
}

// NextBackOff returns the next wait; it never returns backoff.Stop.
func (f *fullJitter) NextBackOff() time.Duration {
	ceiling := f.exp.NextBackOff()
	if ceiling <= 0 {
		ceiling = f.exp.MaxInterval
	}
	return rand.N(ceiling) + 1
}

// Reset starts the schedule again from the initial interval.
func (f *fullJitter) Reset() { f.exp.Reset() }

var _ backoff.BackOff = (*fullJitter)(nil)
