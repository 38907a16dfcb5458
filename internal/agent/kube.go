package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
)

// Annotation is the per-node override: a Node annotated kptune.io/min-sync-period=5s holds its
// kube-proxies at 5s whatever the policy says.
const Annotation = "kptune.io/min-sync-period"

// kube is the agent's link to the API server: its own Node (watched, for the override) and Events
// on it. It reads one Node and writes Events: its RBAC needs nothing more.
type kube struct {
	node     string
	nodes    listersv1.NodeLister
	recorder record.EventRecorder
	ref      *corev1.ObjectReference
	stop     func()
}

// restConfig returns the API server configuration: the kubeconfig when given, else the in-cluster
// one; nil (and no error) outside a cluster without a kubeconfig.
func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		return clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	cfg, err := rest.InClusterConfig()
	if errors.Is(err, rest.ErrNotInCluster) {
		return nil, nil
	}
	return cfg, err
}

func newKube(ctx context.Context, cfg *rest.Config, node string, log *slog.Logger) (*kube, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = "kptune-agent"
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	factory := informers.NewSharedInformerFactoryWithOptions(client, 10*time.Minute,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", node).String()
		}))
	nodes := factory.Core().V1().Nodes()
	lister := nodes.Lister()
	factory.Start(ctx.Done())
	syncCtx, done := context.WithTimeout(ctx, 30*time.Second)
	defer done()
	if !cache.WaitForCacheSync(syncCtx.Done(), nodes.Informer().HasSynced) {
		cancel()
		return nil, fmt.Errorf("watch Node %s: not synced in 30s (is the API server reachable, and may this agent get, list and watch nodes?)", node)
	}
	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	broadcaster.StartStructuredLogging(0)
	k := &kube{
		node:     node,
		nodes:    lister,
		recorder: broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "kptune", Host: node}),
		// Node events are keyed by the Node's name, as the kubelet does.
		ref: &corev1.ObjectReference{APIVersion: "v1", Kind: "Node", Name: node, UID: types.UID(node)},
		stop: func() {
			broadcaster.Shutdown()
			cancel()
		},
	}
	log.Info("watching the node", "node", node)
	return k, nil
}

// override returns the node's annotation, if it has one.
func (k *kube) override() (string, bool) {
	if k == nil {
		return "", false
	}
	n, err := k.nodes.Get(k.node)
	if err != nil {
		return "", false
	}
	v, ok := n.Annotations[Annotation]
	return v, ok
}

func (k *kube) event(eventType, reason, format string, args ...any) {
	if k != nil {
		k.recorder.Eventf(k.ref, eventType, reason, format, args...)
	}
}

func (k *kube) close() {
	if k != nil {
		k.stop()
	}
}
