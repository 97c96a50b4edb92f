package pguuid

import "github.com/google/uuid"

// Array is ids as a uuid[] argument.
func Array(ids []uuid.UUID) [][16]byte {
	out := make([][16]byte, len(ids))
	for i, id := range ids {
		out[i] = id
	}
	return out
}
