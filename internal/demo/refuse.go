package demo

import "github.com/sagabox/sagabox/participants"

// refuse marks a business refusal: the participant rolls the step back and replies
// failure, so the saga compensates instead of retrying.
func refuse(reason string) error { return participants.Fail(reason) }
