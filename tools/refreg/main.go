// Command refreg serves go-containerregistry's registry (pkg/registry) on loopback with the OCI 1.1
// referrers API (GET /v2/<name>/referrers/<digest>) switched on, which `crane registry serve`
// does not offer. It is the test bed's "registry with the referrers API"; docker-registry 2.8 is
// the one without it.
//
// It binds first and then writes the address it got to -addr-file (written whole, then renamed),
// so the caller can ask for port 0 and never race another process for a port.
//
// Built by scripts/install-deps.sh from Debian's golang-github-google-go-containerregistry-dev
// source package in GOPATH mode, offline.
package main

import (
	"flag"
	"log"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

func main() {
	addr := flag.String("address", "127.0.0.1:0", "listen address (port 0: any free port)")
	addrFile := flag.String("addr-file", "", "write the bound host:port to this file once listening")
	blobs := flag.String("blobs", "", "keep blobs in this directory (default: in memory)")
	referrers := flag.Bool("referrers", true, "serve GET /v2/<name>/referrers/<digest>")
	flag.Parse()

	opts := []registry.Option{registry.WithReferrersSupport(*referrers)}
	if *blobs != "" {
		if err := os.MkdirAll(*blobs, 0o755); err != nil {
			log.Fatalf("refreg: %v", err)
		}
		opts = append(opts, registry.WithBlobHandler(registry.NewDiskBlobHandler(*blobs)))
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("refreg: listen %s: %v", *addr, err)
	}
	bound := ln.Addr().String()
	if *addrFile != "" {
		tmp := *addrFile + ".tmp"
		if err := os.WriteFile(tmp, []byte(bound+"\n"), 0o644); err != nil {
			log.Fatalf("refreg: %v", err)
		}
		if err := os.Rename(tmp, *addrFile); err != nil {
			log.Fatalf("refreg: %v", err)
		}
	}
	log.Printf("refreg listening on %s (referrers API: %v)", bound, *referrers)
	srv := &http.Server{
		Handler:           registry.New(opts...),
		ReadHeaderTimeout: 10 * time.Second,
	}
	log.Fatal(srv.Serve(ln))
}
