//go:build clientgo

package main

import "k8s.io/client-go/stub"

var clientGo = stub.Name
