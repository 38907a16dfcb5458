// A fake kube-proxy, as any tenant of a node could build one: its module path and main package are
// kube-proxy's. kptune's tests run it beside the agent, which must refuse it without harm.
module k8s.io/kubernetes

go 1.22

require k8s.io/client-go v0.0.0

replace k8s.io/client-go => ./client-go
