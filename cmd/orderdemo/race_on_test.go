//go:build race

package main

// raceDetector: the race detector slows the in-process broker and every consumer
// many times over, so the end-to-end tests run fewer sagas under it.
const raceDetector = true
