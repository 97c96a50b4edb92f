package cpuprio

import "errors"

// Nice is the nice value Background sets (or keeps, if the process runs nicer).
const Nice = 10

// ErrUnsupported is Background's error where it cannot change the priority.
var ErrUnsupported = errors.New("cpuprio: lowering the CPU priority is supported on Linux only")
