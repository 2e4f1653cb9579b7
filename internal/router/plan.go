package router

import (
	"fmt"
	"hash/fnv"
	"net/url"
	"slices"
	"sort"
	"sync/atomic"

	"ganglion/internal/config"
	"ganglion/internal/routes"
)

// Backend is one upstream: an instance's listener for one resource.
type Backend struct {
	// Name is the instance name, suffixed with the resource when that
	// resource has its own URL ("media1/media").
	Name     string
	Instance string
	URL      *url.URL

	seed uint64
	up   atomic.Bool
}

// Up reports whether the backend is considered healthy.
func (b *Backend) Up() bool { return b.up.Load() }

// Tier is one pool of a class's preference chain.
type Tier struct {
	// Pool is the router pool name, "writer:<stream>" for a stream's
	// writers, or "main" for the last resort.
	Pool     string
	Policy   routes.Policy
	Backends []*Backend

	rr atomic.Uint64
}

// Route is how one class is routed.
type Route struct {
	Class *routes.Class
	// Tiers are tried in order: the first tier with a healthy member takes
	// the request; the next healthy member (in this tier or a later one)
	// gets the one retry.
	Tiers []*Tier
	// InitialTiers replace Tiers for requests without since (initial
	// syncs); nil when the class makes no such split.
	InitialTiers []*Tier
	// Limit is the request body limit in bytes.
	Limit int64
}

// Plan is the routing table resolved against a fleet: every class with its
// backends. The router and the nginx generator both work from it.
type Plan struct {
	Routes   []*Route
	Backends []*Backend
	// Notes explain choices an operator may not expect (a stream writer
	// without a client URL, so its endpoints go to a pool).
	Notes []string

	byClass map[string]*Route
}

// Route returns the route of a class.
func (p *Plan) Route(class string) *Route { return p.byClass[class] }

// NewPlan resolves routes.Classes against the shared config and the router
// section.
func NewPlan(cfg *config.Config, rc *Config) (*Plan, error) {
	b := &planBuilder{cfg: cfg, rc: rc, byURL: map[string]*Backend{}}
	p := &Plan{byClass: map[string]*Route{}}
	for _, c := range routes.Classes() {
		r := &Route{Class: c, Limit: rc.Limits.For(c.Body)}
		var err error
		if r.Tiers, err = b.tiers(c, c.Pools); err != nil {
			return nil, err
		}
		if c.InitialPools != nil {
			if r.InitialTiers, err = b.tiers(c, c.InitialPools); err != nil {
				return nil, err
			}
		}
		if len(r.Tiers) == 0 {
			return nil, fmt.Errorf("router: class %s has no backend: configure one of the pools %v or give main a %s URL",
				c.Name, c.Pools, c.Resource)
		}
		p.Routes = append(p.Routes, r)
		p.byClass[c.Name] = r
	}
	for _, be := range b.byURL {
		p.Backends = append(p.Backends, be)
	}
	sort.Slice(p.Backends, func(i, j int) bool { return p.Backends[i].Name < p.Backends[j].Name })
	p.Notes = b.notes
	for _, name := range rc.unforwarded {
		p.Notes = append(p.Notes, fmt.Sprintf("the client listener of %s has no x_forwarded: true, so it will see every "+
			"client behind this proxy as one address (rate limits such as rc_login.address then apply to all of them together)", name))
	}
	return p, nil
}

type planBuilder struct {
	cfg   *config.Config
	rc    *Config
	byURL map[string]*Backend
	notes []string
}

// backend returns the shared Backend of an instance's listener for a
// resource: one per URL, so health is tracked once per listener.
func (b *planBuilder) backend(instance, resource string) (*Backend, error) {
	urls := b.rc.Instances[instance]
	raw := urls.URLFor(resource)
	if be, ok := b.byURL[raw]; ok {
		return be, nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("router.instances.%s: %w", instance, err)
	}
	name := instance
	if raw != urls.ClientURL {
		name = instance + "/" + resource
	}
	h := fnv.New64a()
	h.Write([]byte(name))
	be := &Backend{Name: name, Instance: instance, URL: u, seed: h.Sum64()}
	be.up.Store(true) // optimistic until the first check or failed dial
	b.byURL[raw] = be
	return be, nil
}

func (b *planBuilder) tiers(c *routes.Class, chain []string) ([]*Tier, error) {
	var out []*Tier
	seen := func(be *Backend) bool {
		for _, t := range out {
			if slices.Contains(t.Backends, be) {
				return true
			}
		}
		return false
	}
	if c.Policy == routes.ToStreamWriter {
		writers := b.cfg.StreamWriters(c.Stream)
		// Unset stream_writers means main writes; main is the last resort
		// anyway, and sending every such request to it would undo the
		// pools an operator set up to keep load off main.
		if !slices.Equal(writers, []string{config.MainInstance}) {
			t := &Tier{Pool: "writer:" + c.Stream, Policy: routes.RoundRobin}
			for _, w := range writers {
				if _, ok := b.rc.Instances[w]; !ok {
					b.addNote(fmt.Sprintf("stream writer %s of %s has no URL in router.instances; %s requests go to pool %v instead",
						w, c.Stream, c.Name, c.Pools))
					continue
				}
				be, err := b.backend(w, c.Resource)
				if err != nil {
					return nil, err
				}
				t.Backends = append(t.Backends, be)
			}
			if len(t.Backends) > 0 {
				out = append(out, t)
			}
		}
	}
	for _, pool := range chain {
		members := b.rc.Pools[pool]
		if len(members) == 0 {
			continue
		}
		policy := c.Policy
		if policy == routes.ToStreamWriter {
			policy = routes.RoundRobin
		}
		t := &Tier{Pool: pool, Policy: policy}
		for _, m := range members {
			be, err := b.backend(m, c.Resource)
			if err != nil {
				return nil, err
			}
			if !seen(be) {
				t.Backends = append(t.Backends, be)
			}
		}
		if len(t.Backends) > 0 {
			out = append(out, t)
		}
	}
	if b.mainServes(c) {
		be, err := b.backend(config.MainInstance, c.Resource)
		if err != nil {
			return nil, err
		}
		if !seen(be) {
			out = append(out, &Tier{Pool: "main", Policy: routes.Single, Backends: []*Backend{be}})
		}
	}
	return out, nil
}

// mainServes reports whether main is a backend of last resort for c: it
// serves everything, except media when enable_media_repo is false.
func (b *planBuilder) mainServes(c *routes.Class) bool {
	if _, ok := b.rc.Instances[config.MainInstance]; !ok {
		return false
	}
	if c.Duty == routes.DutyMedia && b.cfg.EnableMediaRepo != nil && !*b.cfg.EnableMediaRepo {
		return false
	}
	return true
}

func (b *planBuilder) addNote(n string) {
	if !slices.Contains(b.notes, n) {
		b.notes = append(b.notes, n)
	}
}

// candidates returns up to max healthy backends for a request whose
// balancing key is key, best first, walking the tiers in order.
func candidates(tiers []*Tier, key string, max int) []*Backend {
	var out []*Backend
	for _, t := range tiers {
		for _, be := range t.order(key) {
			if !slices.Contains(out, be) {
				out = append(out, be)
			}
			if len(out) == max {
				return out
			}
		}
	}
	return out
}

// order lists the tier's healthy backends in the order the policy prefers
// them for key.
func (t *Tier) order(key string) []*Backend {
	up := make([]*Backend, 0, len(t.Backends))
	switch t.Policy {
	case routes.RoundRobin:
		n := len(t.Backends)
		start := int((t.rr.Add(1) - 1) % uint64(n))
		for i := range n {
			if be := t.Backends[(start+i)%n]; be.Up() {
				up = append(up, be)
			}
		}
	case routes.StickyUser, routes.StickyOrigin, routes.ByRoom:
		for _, be := range t.Backends {
			if be.Up() {
				up = append(up, be)
			}
		}
		// Rendezvous hashing: each backend scores the key; the highest
		// wins. Removing a backend moves only its own keys, and every
		// router replica agrees because scores depend only on names.
		k := hashKey(key)
		sort.SliceStable(up, func(i, j int) bool { return score(k, up[i]) > score(k, up[j]) })
	default: // Single and anything else: configured order
		for _, be := range t.Backends {
			if be.Up() {
				up = append(up, be)
			}
		}
	}
	return up
}

func hashKey(key string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(key))
	return h.Sum64()
}

// score mixes key and backend with splitmix64's finaliser, which spreads
// FNV's weak low bits.
func score(k uint64, be *Backend) uint64 {
	z := k ^ be.seed
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}
