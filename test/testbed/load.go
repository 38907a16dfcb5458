package testbed

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/util/retry"
)

// LoadNamespace holds the Services and EndpointSlices the test bed creates.
const LoadNamespace = "kptune-load"

// TriggerTimeAnnotation is what kube-proxy reads to measure network programming latency.
const TriggerTimeAnnotation = "endpoints.kubernetes.io/last-change-trigger-time"

// ServiceName is the name of the i-th loaded Service.
func ServiceName(i int) string { return fmt.Sprintf("svc-%05d", i) }

// Load creates services Services with endpoints ready endpoints each (one EndpointSlice a
// Service), concurrently. It is idempotent for names that already exist.
func (c *Cluster) Load(ctx context.Context, services, endpoints int) error {
	if endpoints > 250 {
		return fmt.Errorf("at most 250 endpoints a Service, got %d", endpoints)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: LoadNamespace}}
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", LoadNamespace, err)
	}
	work := make(chan int)
	errc := make(chan error, 1)
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				if err := c.createService(ctx, i, endpoints); err != nil {
					select {
					case errc <- err:
					default:
					}
				}
			}
		}()
	}
	for i := 0; i < services; i++ {
		select {
		case work <- i:
		case err := <-errc:
			close(work)
			wg.Wait()
			return err
		}
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}

func (c *Cluster) createService(ctx context.Context, i, endpoints int) error {
	name := ServiceName(i)
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: LoadNamespace},
		Spec: corev1.ServiceSpec{
			Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}
	if _, err := c.Client.CoreV1().Services(LoadNamespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create Service %s: %w", name, err)
	}
	_, err := c.Client.DiscoveryV1().EndpointSlices(LoadNamespace).Create(ctx, endpointSlice(i, endpoints, 0), metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create EndpointSlice of %s: %w", name, err)
	}
	return nil
}

// endpointSlice is Service i's slice with n endpoints; generation shifts the addresses, so every
// generation is a real change of the rules.
func endpointSlice(i, n, generation int) *discoveryv1.EndpointSlice {
	port, proto, name := int32(8080), corev1.ProtocolTCP, "http"
	ready := true
	eps := make([]discoveryv1.Endpoint, n)
	for j, a := range EndpointAddresses(i, n, generation) {
		eps[j] = discoveryv1.Endpoint{Addresses: []string{a}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}
	}
	return &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:      ServiceName(i) + "-slice",
			Namespace: LoadNamespace,
			Labels: map[string]string{
				discoveryv1.LabelServiceName: ServiceName(i),
				discoveryv1.LabelManagedBy:   "kptune-testbed",
			},
			Annotations: map[string]string{TriggerTimeAnnotation: time.Now().UTC().Format(time.RFC3339Nano)},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   eps,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Protocol: &proto, Port: &port}},
	}
}

// SetEndpoints replaces Service i's endpoints with generation gen of its addresses (as one churn
// change does) and returns the first new address (none when endpoints is 0), which appears in the
// rules once kube-proxy has programmed the change.
func (c *Cluster) SetEndpoints(ctx context.Context, i, endpoints, gen int) (string, error) {
	slice := endpointSlice(i, endpoints, gen)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := c.Client.DiscoveryV1().EndpointSlices(LoadNamespace).Get(ctx, slice.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		cur.Endpoints, cur.Annotations = slice.Endpoints, slice.Annotations
		_, err = c.Client.DiscoveryV1().EndpointSlices(LoadNamespace).Update(ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if len(slice.Endpoints) == 0 {
		return "", err
	}
	return slice.Endpoints[0].Addresses[0], err
}

// ChurnOptions configure Churn.
type ChurnOptions struct {
	Rate      float64 // EndpointSlice changes a second
	Services  int     // changes go to Services 0..Services-1, chosen at random
	Endpoints int     // endpoints a slice keeps
	Seed      uint64  // non-zero: the same choice of Services, change after change, in every churn
}

// Churner makes changes until stopped.
type Churner struct {
	changes atomic.Int64
	failed  atomic.Int64
	stop    context.CancelFunc
	done    chan struct{}
	lastErr atomic.Value
}

// Step is one step of a churn: the change to make (nil for none) and how long after this step's
// start the next one starts.
type Step struct {
	Change func(context.Context) error
	Next   time.Duration
}

// Drive calls next for step after step, on schedule, until stopped, making each step's change with
// up to workers changes in flight (1 keeps them in order; more hold the rate when a change takes
// longer than the gap between steps). The schedule is absolute: a late step does not delay the
// ones after it.
func Drive(ctx context.Context, workers int, next func(n int) Step) *Churner {
	ctx, cancel := context.WithCancel(ctx)
	ch := &Churner{stop: cancel, done: make(chan struct{})}
	sem := make(chan struct{}, max(workers, 1))
	var inflight sync.WaitGroup
	go func() {
		defer close(ch.done)
		defer inflight.Wait()
		at := time.Now()
		for n := 0; ; n++ {
			s := next(n)
			if s.Change != nil {
				select {
				case <-ctx.Done():
					return
				case sem <- struct{}{}:
				}
				inflight.Add(1)
				go func() {
					defer inflight.Done()
					defer func() { <-sem }()
					switch err := s.Change(ctx); {
					case err == nil:
						ch.changes.Add(1)
					case ctx.Err() == nil:
						ch.failed.Add(1)
						ch.lastErr.Store(err)
					}
				}()
			}
			at = at.Add(s.Next)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Until(at)):
			}
		}
	}()
	return ch
}

// Churn starts changing EndpointSlices at a steady rate, each change to a Service chosen at random:
// it shifts the Service's endpoint addresses and stamps the trigger-time annotation, as the
// EndpointSlice controller does when pods come and go.
func (c *Cluster) Churn(ctx context.Context, o ChurnOptions) (*Churner, error) {
	if o.Rate <= 0 || o.Services <= 0 || o.Endpoints <= 0 {
		return nil, fmt.Errorf("churn needs a positive rate, service count and endpoint count")
	}
	var mu sync.Mutex
	gens := make([]int, o.Services)
	gap := time.Duration(float64(time.Second) / o.Rate)
	pick := rand.IntN
	if o.Seed != 0 {
		pick = rand.New(rand.NewPCG(o.Seed, o.Seed)).IntN // called by Drive's one goroutine
	}
	return Drive(ctx, 8, func(int) Step {
		i := pick(o.Services)
		mu.Lock()
		gens[i]++
		gen := gens[i]
		mu.Unlock()
		return Step{Next: gap, Change: func(ctx context.Context) error {
			_, err := c.SetEndpoints(ctx, i, o.Endpoints, gen)
			return err
		}}
	}), nil
}

// Stop ends the churn, waits for the changes in flight, and returns how many changes were applied,
// or the last error if any failed.
func (ch *Churner) Stop() (int64, error) {
	ch.stop()
	<-ch.done
	if n := ch.failed.Load(); n > 0 {
		return ch.changes.Load(), fmt.Errorf("%d churn changes failed, the last: %v", n, ch.lastErr.Load())
	}
	return ch.changes.Load(), nil
}

// Changes is the number of changes applied so far.
func (ch *Churner) Changes() int64 { return ch.changes.Load() }

// MissingServices returns the loaded Services (0..services-1) that do not appear in the rules.
// iptables rules name a Service in their comments ("NS/NAME:PORT"), nftables in their chain names
// ("NS/NAME/tcp/PORT"); the zero-padded names keep one from being a prefix of another.
func MissingServices(rules string, services int) []string {
	var missing []string
	for i := 0; i < services; i++ {
		key := LoadNamespace + "/" + ServiceName(i)
		if !strings.Contains(rules, key+":") && !strings.Contains(rules, key+"/") {
			missing = append(missing, ServiceName(i))
		}
	}
	return missing
}
