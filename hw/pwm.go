package hw

import (
	"context"
	"encoding/json"
	"fmt"

	"periph.io/x/conn/v3/gpio"
)

// pwmPin is one pin configured for pwm.set.
type pwmPin struct {
	cfg  PWMConfig
	pin  gpio.PinIO // nil when unavailable
	err  error
	lock busLock
}

func (b *Board) pwmSet(ctx context.Context, raw json.RawMessage) (any, error) {
	p, err := decodeParams(raw, "pin", "duty", "frequency")
	if err != nil {
		return nil, err
	}
	name, err := p.str("pin")
	if err != nil {
		return nil, err
	}
	pp, err := find(b, b.pwms, KindPWM, "pin", name)
	if err != nil {
		return nil, err
	}
	if pp.err != nil {
		return nil, unavailable(KindPWM, name, pp.err)
	}
	duty, err := p.duty("duty")
	if err != nil {
		return nil, err
	}
	freq, err := p.frequency("frequency")
	if err != nil {
		return nil, err
	}
	if err := pp.lock.lock(ctx); err != nil {
		return nil, fmt.Errorf("hw: waiting for pwm %s: %w", name, err)
	}
	defer pp.lock.unlock()
	if err := pp.pin.PWM(duty, freq); err != nil {
		return nil, fmt.Errorf("hw: pwm %s (%s) duty %s at %s: %w", name, pp.cfg.Pin, duty, freq, err)
	}
	return struct{}{}, nil
}
