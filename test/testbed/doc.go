// Package testbed runs real upstream Kubernetes parts for kptune's tests, benchmarks and demo: etcd
// and kube-apiserver as a control plane, and kube-proxy processes of any version and build, each in
// a network namespace of its own, fed with Services and EndpointSlices and churned.
//
// The network is made of namespaces only. The control plane lives in namespace "<id>-cp": etcd on its
// loopback, kube-apiserver on 0.0.0.0:6443 and reachable from every kube-proxy namespace at 10.250.0.1
// (an address on the control-plane namespace's loopback). Each kube-proxy namespace
// "<id>-kpN" is joined to the control-plane namespace by a veth pair (10.251.N.2 and fd00:251:N::2 on
// the kube-proxy side). Nothing is routed to or from the host's namespaces; the test process talks to
// the API server and to kube-proxy's metrics by opening its sockets inside those namespaces
// (kptune/internal/netns). Tearing a namespace down removes every rule kube-proxy wrote in it.
//
// Binaries come from the project's build scripts (test/kubeproxy/build.sh, test/cluster/build.sh),
// cached under $KPTUNE_CACHE (default ~/.cache/kptune). Every process started here is recorded in
// a state file under /run/kptune-testbed, so test/cluster/down.sh cleans up after a killed test.
package testbed
