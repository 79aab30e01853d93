// Command labtool serves and probes TCP ports inside the lab's network
// namespaces and prints the matrix of flows the policy expects against
// the flows observed with real connections over the overlay.
//
//	labtool listen 22 443 8080
//	labtool connect --timeout 1s 100.64.0.2:443 100.64.0.3:22
//	labtool matrix --policy p.yaml --agencies a.json --gateways g.json --ports 22,443,8080
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/policy"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: labtool listen|connect|matrix ...")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "listen":
		err = listen(os.Args[2:])
	case "connect":
		err = connect(os.Args[2:])
	case "matrix":
		err = matrix(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "labtool:", err)
		os.Exit(1)
	}
}

// listen accepts on every given TCP port and closes each connection after
// a greeting.
func listen(ports []string) error {
	if len(ports) == 0 {
		return fmt.Errorf("listen: no ports")
	}
	host, _ := os.Hostname()
	errc := make(chan error, len(ports))
	for _, p := range ports {
		ln, err := net.Listen("tcp", ":"+p)
		if err != nil {
			return err
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					errc <- err
					return
				}
				fmt.Fprintf(c, "govnet lab %s port %s\n", host, p)
				c.Close()
			}
		}()
	}
	return <-errc
}

// connect dials every address at once and prints {"addr": reachable}.
func connect(args []string) error {
	fs := flag.NewFlagSet("connect", flag.ContinueOnError)
	timeout := fs.Duration("timeout", time.Second, "dial timeout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	res := map[string]bool{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, addr := range fs.Args() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", addr, *timeout)
			ok := err == nil
			if ok {
				c.Close()
			}
			mu.Lock()
			res[addr] = ok
			mu.Unlock()
		}()
	}
	wg.Wait()
	return json.NewEncoder(os.Stdout).Encode(res)
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

func matrix(args []string) error {
	fs := flag.NewFlagSet("matrix", flag.ContinueOnError)
	policyFile := fs.String("policy", "", "policy file")
	agenciesFile := fs.String("agencies", "", "`govnetctl agency list -o json` output")
	gatewaysFile := fs.String("gateways", "", "`govnetctl gateway list -o json` output")
	portList := fs.String("ports", "22,443,8080", "TCP ports to probe")
	nsPrefix := fs.String("ns-prefix", "gvlab-", "namespace of gateway X is <prefix>X")
	timeout := fs.Duration("timeout", time.Second, "dial timeout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	src, err := os.ReadFile(*policyFile)
	if err != nil {
		return err
	}
	var reg policy.Registry
	if err := readJSON(*agenciesFile, &reg.Agencies); err != nil {
		return err
	}
	if err := readJSON(*gatewaysFile, &reg.Gateways); err != nil {
		return err
	}
	var ports []uint16
	for _, p := range strings.Split(*portList, ",") {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil {
			return fmt.Errorf("--ports: %w", err)
		}
		ports = append(ports, uint16(n))
	}
	pol, err := policy.Parse(*policyFile, src)
	if err != nil {
		return err
	}
	views, err := pol.Compile(&reg)
	if err != nil {
		return err
	}
	var gws []api.Gateway
	for _, g := range reg.Gateways {
		if g.Status == api.StatusEnrolled {
			gws = append(gws, g)
		}
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}

	// Probe from every gateway's namespace at once.
	observed := make([]map[string]bool, len(gws))
	errs := make([]error, len(gws))
	var wg sync.WaitGroup
	for i, from := range gws {
		cmd := []string{"netns", "exec", *nsPrefix + from.ID, self, "connect", "--timeout", timeout.String()}
		for _, to := range gws {
			if to.ID == from.ID {
				continue
			}
			for _, p := range ports {
				cmd = append(cmd, net.JoinHostPort(to.OverlayIP.String(), strconv.Itoa(int(p))))
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second+*timeout)
			defer cancel()
			out, err := exec.CommandContext(ctx, "ip", cmd...).Output()
			if err != nil {
				errs[i] = fmt.Errorf("probe from %s: %w", from.ID, err)
				return
			}
			errs[i] = json.Unmarshal(out, &observed[i])
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}

	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FROM\tTO\tPORT\tEXPECTED\tOBSERVED\t")
	mismatches, total := 0, 0
	for i, from := range gws {
		for _, to := range gws {
			if to.ID == from.ID {
				continue
			}
			for _, p := range ports {
				want := pol.Allowed(views, &reg, from.ID, to.ID, api.ProtoTCP, p)
				got := observed[i][net.JoinHostPort(to.OverlayIP.String(), strconv.Itoa(int(p)))]
				mark := ""
				if want != got {
					mark = "MISMATCH"
					mismatches++
				}
				total++
				fmt.Fprintf(tw, "%s (%s)\t%s (%s)\ttcp/%d\t%s\t%s\t%s\n", from.ID, from.Agency, to.ID, to.Agency, p, verdict(want), verdict(got), mark)
			}
		}
	}
	tw.Flush()
	if mismatches > 0 {
		return fmt.Errorf("%d of %d flows differ from the policy", mismatches, total)
	}
	fmt.Printf("all %d flows match the policy\n", total)
	return nil
}

func verdict(ok bool) string {
	if ok {
		return "allow"
	}
	return "deny"
}
