// Package stub puts k8s.io/client-go in the fake's build information.
package stub

// Name is linked into the fake.
var Name = "client-go"
