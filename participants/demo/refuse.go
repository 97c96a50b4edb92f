package demo

import "errors"

// refuse marks a business refusal: the step fails and the saga compensates.
func refuse(reason string) error { return errors.New(reason) }
