package main

import (
	"context"
	"errors"
)

type transferRow struct{}

func runTransfers(ctx context.Context, c *config) error {
	return errors.New("--flow transfer: not built yet")
}
