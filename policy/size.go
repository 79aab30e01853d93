package policy

// Bounds on what a policy may compile to. Every controller node compiles
// every view of a policy once it is committed, and keeps them: a rule
// takes about 56 bytes there, and a gateway applies its view's rules to
// its firewall. Check and Test (what a controller runs before it
// publishes a policy or plans one) refuse a policy over these bounds.
// Compiling does not: a committed policy keeps compiling when the
// registry grows past them, rather than leave every view stale.
//
// For scale: at national size (20,435 gateways) the national platform's
// view, every commune reaching NDXP on two ports, holds 78,880 rules; a
// subtree group per province whose members all reach each other on one
// port makes about 1,200 rules per view and 25 million in all (1.4 GB on
// every node). A port range or two large groups can ask for billions.
const (
	MaxViewRules  = 500_000    // in one gateway's view
	MaxTotalRules = 40_000_000 // in all views together: about 2.2 GB per node
)

// sizeErr is checkSize's verdict as an ErrorList, or nil.
func (r *resolver) sizeErr() error {
	e := &errs{file: r.p.File}
	r.checkSize(e)
	return e.errors.Err()
}

// checkSize counts, from the resolved sets and without compiling, the
// firewall rules every view would hold (duplicates included, so at least
// what the compile gives), and refuses the policy when one view or all of
// them would exceed the bounds. The error is at the rule that adds the
// most to the largest view (or to the total).
func (r *resolver) checkSize(e *errs) {
	n := len(r.ix.members)
	perView := make([]int, n)
	ruleTotal := make([]int, len(r.p.Rules))
	total := 0
	type target struct {
		set   bitset
		ports int
	}
	type sized struct {
		from     bitset
		prefixes int
		to       []target
	}
	rules := make([]sized, len(r.p.Rules))
	// srcs is how many source prefixes rule k admits into member d's
	// view, and adds what the rule adds to it.
	srcs := func(k, d int) int {
		c := rules[k].prefixes
		if rules[k].from.has(d) {
			c -= len(r.ix.memberSrc[d]) // a gateway never admits itself
		}
		return c
	}
	adds := func(k, d int) int {
		sum := 0
		for _, t := range rules[k].to {
			if t.set.has(d) {
				sum += srcs(k, d) * t.ports
			}
		}
		return sum
	}
	for k, rule := range r.p.Rules {
		from := newBitset(n)
		for _, ref := range rule.From {
			from.or(r.ref(ref.Name))
		}
		rules[k] = sized{from: from}
		for _, s := range from.members() {
			rules[k].prefixes += len(r.ix.memberSrc[s])
		}
		for _, to := range rule.To {
			rules[k].to = append(rules[k].to, target{set: r.ref(to.Name), ports: len(r.ports(rule, to))})
		}
		for _, t := range rules[k].to {
			for _, d := range t.set.members() {
				add := srcs(k, d) * t.ports
				perView[d] += add
				ruleTotal[k] += add
				total += add
			}
		}
	}
	largest := 0
	for d := range perView {
		if perView[d] > perView[largest] {
			largest = d
		}
	}
	if n > 0 && perView[largest] > MaxViewRules {
		k := 0
		for j := range rules {
			if adds(j, largest) > adds(k, largest) {
				k = j
			}
		}
		rule := r.p.Rules[k]
		e.add(rule.Pos, "narrow its from or to, or the ports it opens",
			"rule %d: gateway %s's view would hold up to %d firewall rules, %d of them from this rule (at most %d in one view)",
			rule.Index, r.ix.members[largest].ID, perView[largest], adds(k, largest), MaxViewRules)
		return
	}
	if total > MaxTotalRules {
		k := 0
		for j := range ruleTotal {
			if ruleTotal[j] > ruleTotal[k] {
				k = j
			}
		}
		rule := r.p.Rules[k]
		e.add(rule.Pos, "narrow the rules that open the most, this one first",
			"rule %d: the views would hold up to %d firewall rules in all, %d of them from this rule (at most %d)",
			rule.Index, total, ruleTotal[k], MaxTotalRules)
	}
}
