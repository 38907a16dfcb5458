//go:build !clientgo

package main

var clientGo = ""
