package kafkapub

// SetMaxRequestBytes lowers p's bound on one produce request, so a test reaches it
// with small batches.
func SetMaxRequestBytes(p *Publisher, n int) { p.maxRequestBytes = n }
