//go:build race

package ca

func init() { raceEnabled = true }
